"""The Map tab's projection (retrieval/queries/projection.py) and its HTML (app/web/map_tab.py), without a browser:
PCA against NumPy's SVD, the bounded sample, colours and legends per key. tests/test_ui_map.py drives the tab in
Chromium."""

from __future__ import annotations

import re
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest

from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries import projection as pj


class ArrayStore:
    """The part of a VectorStore the projection uses: ``dim`` and ``scan`` over rows held in memory."""

    def __init__(self, vectors: np.ndarray, rows: list[dict]) -> None:
        self.dim = vectors.shape[1]
        self.vectors, self.rows, self.scanned = vectors.astype(np.float32), rows, 0

    def count(self) -> int:
        return len(self.rows)

    def scan(self, columns=None, filters=None, batch_size=8192):
        for i in range(0, len(self.rows), batch_size):
            part = self.rows[i:i + batch_size]
            vec = pa.FixedSizeListArray.from_arrays(pa.array(self.vectors[i:i + batch_size].ravel()), self.dim)
            cols = {c: pa.array([r.get(c) for r in part]) for c in columns if c != "vector"}
            self.scanned += len(part)
            yield pa.RecordBatch.from_pydict({**cols, "vector": vec})


def _rows(n: int) -> list[dict]:
    return [{"id": f"id{i:05d}", "path": f"/photos/{['beach', 'city', 'forest'][i % 3]}/img{i}.jpg", "page": None,
             "taken_at": datetime(2018 + i % 4, 1, 1) if i % 5 else None, "width": 10, "height": 10,
             "label": ["cat", "dog"][i % 2] if i % 7 else None} for i in range(n)]


def _clustered(n: int, d: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, d)) * 3
    x = centres[np.arange(n) % 4] + rng.normal(size=(n, d)) * np.linspace(2, 0.1, d)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_pca_matches_numpy_svd_up_to_sign():
    x = _clustered(700)
    got = pj.pca(x, 2, batch=97)  # batches that do not divide n: the streamed sums must add up
    xc = x.astype(np.float64) - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    want = xc @ vt[:2].T
    for j in range(2):
        sign = np.sign(float(got[:, j] @ want[:, j]))
        assert sign != 0
        np.testing.assert_allclose(got[:, j] * sign, want[:, j], rtol=1e-3, atol=1e-4)
    assert abs(np.corrcoef(got[:, 0], got[:, 1])[0, 1]) < 1e-3  # orthogonal axes


def test_pca_needs_two_items():
    with pytest.raises(BadQueryError, match="at least two"):
        pj.pca(np.ones((1, 4), np.float32))


def test_sample_is_bounded_and_pca_uses_every_vector():
    n, cap = 3000, 250
    x = _clustered(n, seed=1)
    store = ArrayStore(x, _rows(n))
    data = pj.project_store(store, max_points=cap, seed=3, batch_size=512)
    assert store.scanned == n and data.items == n  # one scan over everything
    assert len(data.rows) == cap and data.xy.shape == (cap, 2) and data.vectors.shape == (cap, 32)
    assert len({r["id"] for r in data.rows}) == cap
    assert data.xy.min() >= 0.0 and data.xy.max() <= 1.0 and np.isclose(data.xy.min(axis=0), 0).all()
    # the points are placed by the axes of the whole collection, not of the sample
    whole = pj.pca(x, 2)
    idx = [int(r["id"][2:]) for r in data.rows]
    for j in range(2):
        assert abs(np.corrcoef(data.xy[:, j], whole[idx, j])[0, 1]) > 0.9999
    # each sampled row keeps its own vector
    np.testing.assert_array_equal(data.vectors, x[idx])
    # seeded: the same points again; another seed, another sample
    again = pj.project_store(ArrayStore(x, _rows(n)), max_points=cap, seed=3, batch_size=700)
    assert [r["id"] for r in again.rows] == [r["id"] for r in data.rows]
    other = pj.project_store(ArrayStore(x, _rows(n)), max_points=cap, seed=4)
    assert [r["id"] for r in other.rows] != [r["id"] for r in data.rows]
    assert data.method == "pca" and 0 < data.explained[1] <= data.explained[0] < 1


def test_small_collection_shows_every_item():
    x = _clustered(40)
    data = pj.project_store(ArrayStore(x, _rows(40)), max_points=2000)
    assert len(data.rows) == 40 == data.items


@pytest.mark.parametrize("key", pj.COLOUR_KEYS)
def test_colouring_by_each_key_gives_a_consistent_legend(key):
    n = 400
    data = pj.project_store(ArrayStore(_clustered(n), _rows(n)), max_points=300)
    groups = pj.group_values(data.vectors, seed=0)
    values = pj.point_values(data.rows, key, groups)
    assert len(values) == len(data.rows)
    colour, legend = pj.legend(values)
    assert sum(c for _, _, c in legend) == len(values)  # every point counted once
    assert set(values) <= set(colour)
    for v, c, cnt in legend:  # each named entry's colour and count are its points'
        if not v.startswith("other ("):
            assert colour[v] == c and values.count(v) == cnt
    named = [v for v, _, _ in legend if not v.startswith("other (")]
    assert len({colour[v] for v in named}) == len(named)  # distinct colours for distinct named values
    expected = {"group": {f"group {i}" for i in range(1, len(set(groups)) + 1)},
                "label": {"cat", "dog", "(no label)"}, "folder": {"beach", "city", "forest"},
                "date": {"2018", "2019", "2020", "2021", "(no date)"}}[key]
    assert set(values) == expected


def test_groups_recover_planted_clusters_and_are_numbered_by_size():
    x = _clustered(400)
    g = pj.group_values(x, k=4, seed=0)
    planted = np.arange(400) % 4
    for c in range(4):  # each planted cluster lands in one group
        assert len({g[i] for i in np.flatnonzero(planted == c)}) == 1
    sizes = [g.count(f"group {i}") for i in range(1, 5)]
    assert sizes == sorted(sizes, reverse=True)


def test_legend_folds_rare_values_into_other():
    values = [f"v{i}" for i in range(20) for _ in range(20 - i)]
    colour, legend = pj.legend(values, max_colours=5)
    assert len(legend) == 5 and legend[-1][0] == "other (16 values)"
    assert legend[0][0] == "v0" and colour["v19"] == pj.OTHER_COLOUR
    assert sum(c for _, _, c in legend) == len(values)


def test_bad_keys_and_methods_are_refused():
    with pytest.raises(BadQueryError, match="colour key"):
        pj.point_values(_rows(3), "size")
    with pytest.raises(BadQueryError, match="unknown projection"):
        pj.available_method("mds")
    assert pj.available_method("pca") == "pca"


def test_map_html_has_thumbnails_dots_and_an_escaped_data_block(monkeypatch):
    from imgrag.app.web import map_tab

    monkeypatch.setattr(map_tab, "THUMB_POINTS", 10)
    rows = _rows(30)
    rows[0]["path"] = "/photos/<b>x<i>/<img src=x onerror=alert(1)>.jpg"
    x = _clustered(30)
    data = pj.project_store(ArrayStore(x, rows), max_points=30)
    html = map_tab.map_html(data, pj.group_values(data.vectors, k=3), "folder")
    assert html.count("<image ") == 10 and html.count("<circle ") == 20
    assert "<img src=x" not in html and "<b>x<i>" not in html  # names are escaped text
    assert "data-for='map'" in html and "data-imgrag-source='map'" in html
    assert re.search(r"30 items · PCA", html)
    assert "beach (9)" in html and "city (10)" in html and "&lt;b&gt;x&lt;i&gt; (1)" in html


def test_tsne_where_installed_places_the_same_sample():
    pytest.importorskip("sklearn", reason="scikit-learn (t-SNE) is not installed")
    x = _clustered(120)
    pca_map = pj.project_store(ArrayStore(x, _rows(120)), max_points=100, seed=2)
    tsne_map = pj.project_store(ArrayStore(x, _rows(120)), max_points=100, seed=2, method="tsne")
    assert tsne_map.method == "tsne" and [r["id"] for r in tsne_map.rows] == [r["id"] for r in pca_map.rows]
    assert tsne_map.xy.shape == (100, 2) and tsne_map.xy.min() >= 0 and tsne_map.xy.max() <= 1
    assert pj.available_method("auto") in ("umap", "tsne")


class _Backend:
    """What map_tab.render reads of a Backend: an index folder and a store."""

    def __init__(self, root, store) -> None:
        self.root, self.store = root, store

    def has_index(self) -> bool:
        return self.store is not None

    def index(self):
        return self


def test_render_recomputes_when_the_index_changes_and_says_when_there_is_none(tmp_path):
    from imgrag.app.web import map_tab

    store = ArrayStore(_clustered(30), _rows(30))
    backend = _Backend(tmp_path, store)
    assert "30 items · PCA" in map_tab.render(backend, "date")
    scans = store.scanned
    assert "30 items · PCA" in map_tab.render(backend, "label") and store.scanned == scans  # cached
    store.vectors, store.rows = _clustered(40), _rows(40)  # more items indexed
    assert "40 items · PCA" in map_tab.render(backend, "label")
    assert "No index yet" in map_tab.render(_Backend(tmp_path, None))
    assert "unknown colour key" in map_tab.render(backend, "size")  # an error is shown, not raised
