"""Named groups: planted clusters recovered, k chosen automatically, names from the vocabulary, stable, CLI shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgrag.retrieval.embedders.base import Embedder, l2_normalize
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries.groups import (GroupOptions, cluster_store, load_labels, name_groups,
                                             silhouette, spherical_kmeans)
from imgrag.retrieval.stores import make_rows, open_store

DIM = 32
K = 6
NAMES = ["apple", "boat", "cat", "daisy", "engine", "forest"]
DISTRACTORS = ["zebra", "yacht", "xylophone", "violin"]


def planted(n_per=(60, 50, 45, 40, 35, 30), noise=0.25, seed=1):
    """Clusters of unit vectors around K random unit centres (unequal sizes), shuffled; (centres, vecs, truth)."""
    rng = np.random.default_rng(seed)
    centres = l2_normalize(rng.standard_normal((len(n_per), DIM)).astype(np.float32))
    truth = np.concatenate([np.full(n, j) for j, n in enumerate(n_per)])
    vecs = centres[truth] + noise * rng.standard_normal((len(truth), DIM)).astype(np.float32) / np.sqrt(DIM)
    perm = rng.permutation(len(truth))
    return centres, l2_normalize(vecs[perm]), truth[perm]


class CentreEmbedder(Embedder):
    """Texts: the planted names map to the cluster centres (a bit of noise); anything else to a random vector."""

    model_id = "fake-centres"

    def __init__(self, centres: np.ndarray) -> None:
        self.centres = centres

    @property
    def dim(self) -> int:
        return DIM

    @property
    def image_size(self) -> int:
        return 16

    def fingerprint(self) -> dict:
        return {"model": self.model_id}

    def image_transform(self):  # pragma: no cover - never embeds images
        raise NotImplementedError

    def embed_pixels(self, pixels):  # pragma: no cover
        raise NotImplementedError

    def embed_texts(self, texts) -> np.ndarray:
        out = []
        for t in texts:
            word = t.removeprefix("a photo of a ").rstrip(".")
            rng = np.random.default_rng(sum(map(ord, word)))
            if word in NAMES:
                v = self.centres[NAMES.index(word)] + 0.3 * rng.standard_normal(DIM) / np.sqrt(DIM)
            else:
                v = rng.standard_normal(DIM)
            out.append(v.astype(np.float32))
        return l2_normalize(np.stack(out))


def make_store(tmp_path, vecs, kind="lancedb"):
    store = open_store(kind, tmp_path / kind, DIM)
    rows = [{"id": f"/p/{i:04d}.jpg", "path": f"/p/{i:04d}.jpg"} for i in range(len(vecs))]
    store.upsert(make_rows(rows, vecs))
    return store


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings."""
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    s_ij, s_a, s_b = comb(table).sum(), comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
    expected = s_a * s_b / comb(len(a))
    return float((s_ij - expected) / ((s_a + s_b) / 2 - expected))


def labels_of(store, rep) -> np.ndarray:
    t = store.scan(columns=["id", "vector"])
    from imgrag.retrieval.stores.base import vectors_of

    ids, out = [], []
    for b in t:
        ids += b.column("id").to_pylist()
        out.append((vectors_of(b.column("vector"), DIM) @ rep.centroids.T).argmax(axis=1))
    order = np.argsort(ids)
    return np.concatenate(out)[order]


@pytest.mark.parametrize("kind", ["lancedb", "faiss"])
def test_planted_clusters_recovered_and_k_chosen(tmp_path, kind):
    centres, vecs, truth = planted()
    store = make_store(tmp_path, vecs, kind)
    rep = cluster_store(store, GroupOptions(seed=0))
    assert rep.k_auto and rep.k == K, rep.k_scores
    assert rep.items == len(vecs) and sum(g.size for g in rep.groups) == len(vecs)
    assert ari(labels_of(store, rep), truth) >= 0.95
    assert [g.size for g in rep.groups] == sorted((g.size for g in rep.groups), reverse=True)
    assert [g.size for g in rep.groups] == [60, 50, 45, 40, 35, 30]
    # examples: 3 per group, best first, each is a member closest to its centroid
    for g, c in zip(rep.groups, rep.centroids):
        assert len(g.examples) == 3
        cos = [e[2] for e in g.examples]
        assert cos == sorted(cos, reverse=True) and cos[0] > 0.9


def test_fixed_k_and_small_collections(tmp_path):
    _, vecs, truth = planted()
    store = make_store(tmp_path, vecs)
    rep = cluster_store(store, GroupOptions(k=3, seed=0))
    assert not rep.k_auto and rep.k == 3 and len(rep.groups) == 3 and not rep.k_scores
    # k above the number of items is capped; an empty store gives no groups
    tiny = open_store("lancedb", tmp_path / "tiny", DIM)
    tiny.upsert(make_rows([{"id": "/a", "path": "/a"}, {"id": "/b", "path": "/b"}], vecs[:2]))
    assert cluster_store(tiny, GroupOptions(k=10)).k == 2
    empty = open_store("lancedb", tmp_path / "empty", DIM)
    assert cluster_store(empty).groups == []
    with pytest.raises(BadQueryError, match="k must be at least 1"):
        cluster_store(store, GroupOptions(k=0))


def test_names_from_vocabulary_distinct_and_stable(tmp_path):
    centres, vecs, truth = planted()
    store = make_store(tmp_path, vecs)
    emb = CentreEmbedder(centres)
    vocab = DISTRACTORS[:2] + NAMES + DISTRACTORS[2:]
    rep = cluster_store(store, GroupOptions(seed=3), emb, vocab)
    names = [g.name for g in rep.groups]
    assert set(names) == set(NAMES)  # every planted cluster gets its own centre's name, none a distractor
    # the largest planted cluster (60, centre 0 'apple') is group 1, and so on down the sizes
    assert names == NAMES
    again = cluster_store(store, GroupOptions(seed=3), emb, vocab)
    assert [g.to_dict() for g in again.groups] == [g.to_dict() for g in rep.groups]


def test_hub_label_does_not_name_every_group():
    rng = np.random.default_rng(0)
    cents = l2_normalize(rng.standard_normal((4, DIM)).astype(np.float32))
    hub = l2_normalize(cents.sum(axis=0, keepdims=True))  # close to every centroid
    own = l2_normalize(cents + 3.0 * rng.standard_normal((4, DIM)).astype(np.float32) / np.sqrt(DIM))
    labels = ["thing", "a", "b", "c", "d"]
    vecs = np.concatenate([hub, own])
    assert ((cents @ vecs.T).argmax(axis=1) == 0).all()  # raw, the hub label fits every group best
    ref = l2_normalize(np.repeat(cents, 20, axis=0) + 0.5 * rng.standard_normal((80, DIM)).astype(np.float32) / np.sqrt(DIM))
    means = ref.reshape(4, 20, DIM).mean(axis=1)
    assert ((means @ vecs.T).argmax(axis=1) == 0).all()  # the member means too
    names = [n for n, _, _ in name_groups(means, vecs, labels, ref)]
    assert names == ["a", "b", "c", "d"]
    # fewer labels than groups: the best label repeats, numbered
    names2 = [n for n, _, _ in name_groups(means, vecs[:2], labels[:2], ref)]
    assert len(set(names2)) == 4


def test_kmeans_and_silhouette_basics():
    centres, vecs, truth = planted()
    c, lab, fit = spherical_kmeans(vecs, K, seed=0)
    assert np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5) and fit > 0.9
    assert ari(lab, truth) >= 0.95
    dist = np.maximum(1 - vecs @ vecs.T, 0)
    assert silhouette(dist, truth) > 0.5 > silhouette(dist, np.random.default_rng(0).integers(0, K, len(truth)))


def test_labels_file(tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("# my labels\ncat\n\ndog\n", encoding="utf-8")
    assert load_labels(f) == ["cat", "dog"]
    f.write_text("cat\n", encoding="utf-8")
    with pytest.raises(BadQueryError, match="fewer than two"):
        load_labels(f)
    f.write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(BadQueryError, match="repeats"):
        load_labels(f)
    with pytest.raises(BadQueryError, match="not found"):
        load_labels(tmp_path / "none.txt")


def test_groups_cli_json_and_text(tmp_path, capsys, monkeypatch):
    from imgrag.app.cli import main
    from imgrag.retrieval.index import Index

    centres, vecs, truth = planted()
    emb = CentreEmbedder(centres)
    idx = Index.create_or_open(tmp_path / "idx", emb, store="lancedb")
    with idx.writing():
        idx.store.upsert(make_rows([{"id": f"/p/{i:04d}.jpg", "path": f"/p/{i:04d}.jpg"} for i in range(len(vecs))],
                                   vecs))
    import imgrag.retrieval.embedders as embedders

    monkeypatch.setattr(embedders, "load_embedder", lambda *a, **k: emb)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(NAMES + DISTRACTORS), encoding="utf-8")
    root = str(tmp_path / "idx")
    assert main(["groups", "--index", root, "--labels", str(labels), "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)
    assert [g["group"] for g in groups] == list(range(1, K + 1))
    assert [g["name"] for g in groups] == NAMES and [g["size"] for g in groups] == [60, 50, 45, 40, 35, 30]
    for g in groups:
        assert {"group", "name", "size", "examples", "score"} <= set(g)
        assert len(g["examples"]) == 3 and all({"path", "id"} <= set(e) for e in g["examples"])
        assert isinstance(g["score"], float)
    assert main(["groups", "--index", root, "--labels", str(labels), "--k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 2
    assert main(["groups", "--index", root, "--labels", str(labels)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == K and "apple" in lines[0] and "60" in lines[0] and "/p/" in lines[0]
    assert main(["groups", "--index", root, "--labels", str(tmp_path / "none.txt")]) != 0
    assert "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse refuses it before anything is opened
        main(["groups", "--index", root, "--k", "0"])
    assert "must be at least 1" in capsys.readouterr().err
