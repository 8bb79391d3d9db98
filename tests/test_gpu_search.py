"""Search on the GPU behind the FAISS store (retrieval/stores/faiss/gpu.py), tested on the CPU: the torch
exact path (``search_device: torch:cpu``) must give FAISS Flat's top-k ids and scores (tie-aware), with
deleted/replaced rows, filters, exclusions, rows added after the first search, any factory."""

from __future__ import annotations

import numpy as np
import pytest

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.stores import Filters, make_rows, open_store
from imgrag.retrieval.stores.faiss import gpu as gpu_search

DIM = 32


def data(n: int, seed: int = 0, ties: int = 0) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    if ties:  # exact duplicates: equal scores that any order may list
        v[n - ties:] = v[:ties]
    meta = [{"id": f"/p/{'a' if i % 3 else 'b'}/{seed}_{i}.jpg", "path": f"/p/{'a' if i % 3 else 'b'}/{seed}_{i}.jpg",
             "size": 1000 + i, "mtime_ns": i, "label": ("cat", "dog")[i % 2]} for i in range(n)]
    return meta, v


def pair(tmp_path, factory: str = "Flat", **opts):
    ref = open_store("faiss", tmp_path / "ref", DIM, factory="Flat", search_device="cpu")
    tor = open_store("faiss", tmp_path / "tor", DIM, factory=factory, search_device="torch:cpu", **opts)
    return ref, tor


def upsert(stores, meta, vec):
    for s in stores:
        s.upsert(make_rows(meta, vec))


def same_hits(a, b, tol: float = 1e-5) -> None:
    """Equal scores place by place; equal ids above the k-th score (rows tying with it may differ)."""
    assert len(a) == len(b)
    for ha, hb in zip(a, b):
        assert len(ha) == len(hb)
        sa, sb = np.array([h.score for h in ha]), np.array([h.score for h in hb])
        np.testing.assert_allclose(sa, sb, atol=tol)
        if not len(sa):
            continue
        kth = sa[-1]
        clear = lambda hs: {h.id for h in hs if h.score > kth + tol}  # noqa: E731 - above the tie at the cut
        assert clear(ha) == clear(hb)  # rows tied at the cut may differ: either is a right answer
        assert len({h.id for h in hb}) == len(hb)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    monkeypatch.delenv(gpu_search.ENV, raising=False)


def test_torch_exact_equals_flat(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_search, "CHUNK_ROWS", 700)  # several chunks, and a part-filled last one
    monkeypatch.setattr(gpu_search, "MAX_SCORES", 700 * 7)  # query blocks of 7
    ref, tor = pair(tmp_path)
    meta, vec = data(3000, ties=40)
    upsert((ref, tor), meta[:2000], vec[:2000])
    upsert((ref, tor), meta[2000:], vec[2000:])
    q = data(25, seed=9)[1]
    q[:3] = vec[[5, 2990, 17]]  # queries that hit exact duplicates (ties at the top)
    for k in (1, 10, 100):
        same_hits(ref.search(q, k), tor.search(q, k))
    assert "torch exact on cpu" in tor.describe()["search"] and tor.describe()["search_device"] == "torch:cpu"
    assert "search" not in ref.describe()

    # deleted and replaced rows, filters, exclusions
    upsert((ref, tor), [dict(m) for m in meta[100:150]], data(50, seed=3)[1])  # new vectors for old ids
    for s in (ref, tor):
        s.delete([m["id"] for m in meta[:60]])
    for f in (None, Filters(path_glob="/p/b/*"), Filters(label="cat"), Filters(path_glob="/p/b/0_3*")):
        same_hits(ref.search(q, 20, filters=f), tor.search(q, 20, filters=f))
    ex = [m["id"] for m in meta[60:400]]
    same_hits(ref.search(q, 10, exclude_ids=ex), tor.search(q, 10, exclude_ids=ex))
    hits = tor.search(q, 5000)  # k beyond the live rows: every live row once
    assert len(hits[0]) == tor.count() == ref.count() == 2940
    assert len({h.id for h in hits[0]}) == 2940

    # rows added after the first search are appended to the resident copy
    before = tor.describe()["search"]
    m2, v2 = data(500, seed=5)
    upsert((ref, tor), m2, v2)
    same_hits(ref.search(v2[:10], 10), tor.search(v2[:10], 10))
    assert tor.search(v2[:1], 1)[0][0].id == m2[0]["id"]
    assert tor.describe()["search"] != before  # the same copy, grown (3540 rows resident)
    tor.optimize()  # rebuilds/saves the index; the next search rebuilds the torch copy from it
    ref.optimize()
    same_hits(ref.search(q, 10, filters=Filters(label="dog")), tor.search(q, 10, filters=Filters(label="dog")))


def test_torch_path_is_exact_for_any_factory(tmp_path):
    """An IVF store searched with torch: exact results (Flat's), from the stored vectors."""
    ref, tor = pair(tmp_path, factory="IVF8,SQ8", train_min_rows=300)
    meta, vec = data(1200, seed=2)
    upsert((ref, tor), meta, vec)
    tor.optimize()
    assert tor.describe()["index"] == "IVF8,SQ8"
    q = data(10, seed=11)[1]
    same_hits(ref.search(q, 15), tor.search(q, 15))
    same_hits(ref.search(q, 15, filters=Filters(path_glob="/p/a/*")),
              tor.search(q, 15, filters=Filters(path_glob="/p/a/*")))


def test_fp16_copy_is_close(tmp_path):
    ref, tor = pair(tmp_path, search_precision="fp16")
    meta, vec = data(2000, seed=4)
    upsert((ref, tor), meta, vec)
    q = data(20, seed=12)[1]
    a, b = ref.search(q, 10), tor.search(q, 10)
    for ha, hb in zip(a, b):
        np.testing.assert_allclose([h.score for h in ha], [h.score for h in hb], atol=5e-3)
        assert len({h.id for h in ha} & {h.id for h in hb}) >= 8
    assert "fp16" in tor.describe()["search"]


def test_modes_env_and_options(tmp_path, monkeypatch):
    meta, vec = data(300, seed=6)
    s = open_store("faiss", tmp_path / "s", DIM)
    s.upsert(make_rows(meta, vec))
    s.search(vec[:2], 3)
    d = s.describe()
    assert d["search_device"] == "auto" and "search" not in d  # no GPU here: faiss on the CPU
    monkeypatch.setenv(gpu_search.ENV, "torch:cpu")
    assert s.search(vec[:1], 1)[0][0].id == meta[0]["id"]
    assert s.describe()["search_device"] == "torch:cpu" and "torch exact" in s.describe()["search"]
    monkeypatch.setenv(gpu_search.ENV, "gpu please")
    with pytest.raises(ImgragError, match="unknown search_device 'gpu please'"):
        open_store("faiss", tmp_path / "t", DIM)
    monkeypatch.delenv(gpu_search.ENV)
    with pytest.raises(ImgragError, match="unknown search_device"):
        open_store("faiss", tmp_path / "u", DIM, search_device="cpu:1")
    with pytest.raises(ImgragError, match="search_precision must be fp32 or fp16"):
        open_store("faiss", tmp_path / "v", DIM, search_precision="int8")
    assert gpu_search.resolve_mode("torch", False) == "cpu"  # gpu: false keeps everything on the CPU
    assert gpu_search.resolve_mode(None, None) == "auto"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_search.cuda_present() is False


def test_explicit_torch_device_that_fails_says_so(tmp_path):
    meta, vec = data(50, seed=7)
    s = open_store("faiss", tmp_path / "s", DIM, search_device="torch:cuda:7")
    s.upsert(make_rows(meta, vec))
    with pytest.raises(ImgragError, match="search_device torch:cuda:7: the vectors could not be put on cuda:7"):
        s.search(vec[:1], 1)


def test_auto_falls_back_when_cuda_copy_fails(tmp_path, monkeypatch):
    """auto on a machine where torch's CUDA copy cannot be made (here: no CUDA at all, told there is):
    faiss on the CPU answers, and `imgrag info` says why the GPU was not used."""
    monkeypatch.setattr(gpu_search, "cuda_present", lambda: True)
    meta, vec = data(100, seed=8)
    s = open_store("faiss", tmp_path / "s", DIM)
    s.upsert(make_rows(meta, vec))
    assert s.search(vec[3:4], 1)[0][0].id == meta[3]["id"]
    d = s.describe()
    assert "search" not in d and d["gpu"] is False and d["gpu_note"].startswith("torch search on CUDA not used")
