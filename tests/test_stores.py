"""Vector stores (LanceDB and FAISS) against brute-force numpy on synthetic, seeded vectors.

No models: vectors are clustered Gaussian blobs, L2-normalised. Every check asserts numbers
(ids, scores, counts, recall), so a wrong store fails here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imgrag.retrieval.errors import CorruptIndexError, ImgragError, IndexMismatchError
from imgrag.retrieval.stores import Filters, make_rows, open_store
from imgrag.retrieval.stores.base import _glob_to_like

DIM = 32

# store variants: (kind, options). Exact ones must match brute force exactly.
EXACT = [
    pytest.param("lancedb", {}, id="lancedb"),
    pytest.param("faiss", {}, id="faiss-flat"),
]
# filters/exclusion must be exact even with an approximate index (narrow filters go exact)
FILTERED = [*EXACT, pytest.param("faiss", {"factory": "HNSW32"}, id="faiss-hnsw")]

FOLDERS = ["trip_2019", "100%_fun", "a_b", "axb", "plain", "x[1]", "it's", "back\\slash", "Ünïcode"]


# ------------------------------------------------------------------------------------------------
# data
# ------------------------------------------------------------------------------------------------
def clustered(n: int, dim: int = DIM, seed: int = 0, clusters: int = 24, spread: float = 0.6) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    v = centers[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def metas(n: int, seed: int = 0, prefix: str = "/photos") -> list[dict]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for i in range(n):
        folder = FOLDERS[i % len(FOLDERS)]
        year = 2015 + (i // len(FOLDERS)) % 8
        ext = (".jpg", ".png", ".PNG")[i % 3]
        path = f"{prefix}/{year}/{folder}/img_{i}{ext}"
        taken = None if i % 5 == 0 else datetime(2015, 1, 1) + timedelta(hours=int(rng.integers(0, 8 * 365 * 24)),
                                                                         microseconds=int(rng.integers(0, 10**6)))
        out.append({"id": path, "path": path, "size": int(rng.integers(1_000, 5_000_000)),
                    "width": int(rng.integers(100, 5000)), "height": int(rng.integers(100, 5000)),
                    "taken_at": taken, "mtime_ns": i, "hash": f"{i:032x}",
                    "label": ("cat", "dog", None)[i % 3]})
    return out


def ref_match(m: dict, f: Filters) -> bool:
    """Independent reference semantics of Filters (plain python, not arrow/SQL)."""
    if f.path_glob:
        rx = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in f.path_glob)
        if not re.fullmatch(rx, m["path"], flags=re.S):
            return False
    t = m.get("taken_at")
    if f.taken_after is not None and (t is None or t < f.taken_after):
        return False
    if f.taken_before is not None and (t is None or t > f.taken_before):
        return False
    for key, lo, hi in (("width", f.min_width, None), ("height", f.min_height, None), ("size", f.min_bytes, f.max_bytes)):
        v = m.get(key)
        if lo is not None and (v is None or v < lo):
            return False
        if hi is not None and (v is None or v > hi):
            return False
    if f.label is not None and m.get("label") != f.label:
        return False
    return True


def brute(vectors: np.ndarray, ids: list[str], q: np.ndarray, k: int, allowed: np.ndarray | None = None):
    s = q @ vectors.T
    if allowed is not None:
        s = np.where(allowed[None, :], s, -np.inf)
    out = []
    for row in s:
        order = np.argsort(-row, kind="stable")[:k]
        out.append([(ids[j], float(row[j])) for j in order if np.isfinite(row[j])])
    return out


def assert_same(hits, expected, atol=1e-5):
    assert len(hits) == len(expected)
    for h, e in zip(hits, expected):
        assert [x.id for x in h] == [i for i, _ in e]
        np.testing.assert_allclose([x.score for x in h], [s for _, s in e], atol=atol)
        for x in h:
            assert x.path == x.row["path"] and x.id == x.row["id"] and "vector" not in x.row


def mk(kind: str, root: Path, opts: dict | None = None, dim: int = DIM):
    opts = dict(opts or {})
    if kind == "lancedb":
        opts.setdefault("consistency_s", 0)
    return open_store(kind, root / kind, dim, **opts)


@pytest.fixture(scope="module")
def data():
    n = 600
    return metas(n), clustered(n, seed=3)


def filled(kind, opts, tmp_path, data):
    meta, vec = data
    st = mk(kind, tmp_path, opts)
    st.upsert(make_rows(meta[:350], vec[:350]))
    st.upsert(make_rows(meta[350:], vec[350:]))
    return st


# ------------------------------------------------------------------------------------------------
# search correctness
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,opts", EXACT)
def test_topk_equals_brute_force(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    assert st.count() == len(meta)
    ids = [m["id"] for m in meta]
    q = clustered(7, seed=99)
    for k in (1, 10, 37):
        assert_same(st.search(q, k), brute(vec, ids, q, k))
    assert_same(st.search(q[0], 5), brute(vec, ids, q[:1], 5))  # 1-d query
    big = st.search(q[:1], 10_000)[0]
    assert len(big) == len(meta)
    assert st.search(q, 0) == [[] for _ in range(7)]
    st.optimize()  # below any ANN threshold: still exact
    assert_same(st.search(q, 10), brute(vec, ids, q, 10))


FILTER_CASES = [
    Filters(path_glob="*/trip_2019/*"),
    Filters(path_glob="/photos/2016/*"),  # * crosses folders
    Filters(path_glob="*.png"),  # case-sensitive: .PNG excluded
    Filters(path_glob="*100%_fun*"),  # literal % and _
    Filters(path_glob="*/a_b/*"),  # must not match axb
    Filters(path_glob="*/a?b/*"),  # ? matches one char: a_b and axb
    Filters(path_glob="*x[1]*"),  # [ is literal
    Filters(path_glob="*it's*"),
    Filters(path_glob="*back\\slash*"),
    Filters(path_glob="*Ünïcode/img_1*"),
    Filters(path_glob="*"),
    Filters(path_glob="*/img_1"),  # the whole path must match: nothing ends like this
    Filters(path_glob="/photos/2015/plain/img_?.png"),
    Filters(path_glob="/nothing/*"),
    Filters(taken_after=datetime(2018, 1, 1)),
    Filters(taken_before=datetime(2017, 6, 30, 12, 0, 0, 500_000)),
    Filters(taken_after=datetime(2016, 3, 1), taken_before=datetime(2019, 3, 1)),
    Filters(min_bytes=2_000_000, max_bytes=3_000_000),
    Filters(max_bytes=200_000),
    Filters(min_width=4000, min_height=1000),
    Filters(min_bytes=2**40),  # beyond int32 and beyond every row
    Filters(label="cat"),
    Filters(path_glob="*/20??/plain/*", taken_after=datetime(2016, 1, 1), label="dog"),
]


@pytest.mark.parametrize("kind,opts", FILTERED)
def test_filters_equal_brute_force_on_subset(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    ids = [m["id"] for m in meta]
    q = clustered(4, seed=7)
    nonempty = 0
    for f in FILTER_CASES:
        allowed = np.array([ref_match(m, f) for m in meta])
        nonempty += allowed.any()
        expected = brute(vec, ids, q, 8, allowed)
        assert_same(st.search(q, 8, filters=f), expected)
        scanned = sorted(i for b in st.scan(columns=["id"], filters=f) for i in b.column(0).to_pylist())
        assert scanned == sorted(np.asarray(ids)[allowed].tolist()), f
    assert nonempty >= len(FILTER_CASES) - 3  # the cases really select something


def test_to_sql_and_mask_agree(tmp_path, data):
    """The SQL LanceDB runs and the arrow mask FAISS uses select the same rows (and the reference)."""
    meta, vec = data
    st = filled("lancedb", {}, tmp_path, data)
    table = make_rows(meta, vec)
    extra = [Filters(path_glob=g) for g in ("*%*", "*_*", "*\\*", "*'*", "*[*", "?*", "*/img_1?.png", "**", "*?")]
    extra.append(Filters(taken_after=datetime(2018, 5, 5).date()))  # a date means its midnight
    for f in FILTER_CASES + extra:
        via_mask = set(np.asarray(table["id"].to_pylist())[f.mask(table)].tolist())
        via_sql = {i for b in st.scan(columns=["id"], filters=f) for i in b.column(0).to_pylist()}
        via_ref = {m["id"] for m in meta if ref_match(m, Filters(**{**f.__dict__, "taken_after": _dt(f.taken_after)}))}
        assert via_sql == via_mask == via_ref, (f, f.to_sql())
    assert Filters().to_sql() is None and Filters().mask(table).all()
    assert _glob_to_like("a%b_c\\d*e?'") == "a\\%b\\_c\\\\d%e_''"


def _dt(v):
    if v is not None and not isinstance(v, datetime):
        return datetime(v.year, v.month, v.day)
    return v


@pytest.mark.parametrize("kind,opts", FILTERED)
def test_exclude_ids(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    ids = [m["id"] for m in meta]
    q = vec[[5, 77]]
    excl = [ids[5], ids[77], "/not/there.jpg"]
    allowed = np.array([i not in excl for i in ids])
    hits = st.search(q, 6, exclude_ids=excl)
    assert_same(hits, brute(vec, ids, q, 6, allowed))
    assert all(h.id not in excl for hh in hits for h in hh)
    f = Filters(path_glob="*/plain/*")
    allowed &= np.array([ref_match(m, f) for m in meta])
    assert_same(st.search(q, 6, filters=f, exclude_ids=excl), brute(vec, ids, q, 6, allowed))


# ------------------------------------------------------------------------------------------------
# writes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind,opts", EXACT)
def test_upsert_replaces(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    new_vec = clustered(50, seed=123)
    new_meta = [{**m, "size": 7, "label": "new"} for m in meta[100:150]]
    dup = make_rows(new_meta + new_meta[:5], np.concatenate([new_vec, new_vec[:5]]))  # repeats: last wins
    st.upsert(dup)
    assert st.count() == len(meta)
    all_ids = [i for b in st.scan(columns=["id"]) for i in b.column(0).to_pylist()]
    assert len(all_ids) == len(set(all_ids)) == len(meta)
    hits = st.search(new_vec[:3], 1)
    assert [h[0].id for h in hits] == [m["id"] for m in new_meta[:3]]
    np.testing.assert_allclose([h[0].score for h in hits], 1.0, atol=1e-5)
    got = st.get([m["id"] for m in new_meta])
    by = {r["id"]: r for r in got.to_pylist()}
    assert len(by) == 50
    for m, v in zip(new_meta, new_vec):
        np.testing.assert_allclose(by[m["id"]]["vector"], v, atol=1e-6)
        assert by[m["id"]]["size"] == 7 and by[m["id"]]["label"] == "new"
    # search equals brute force over the current vectors
    cur = vec.copy()
    cur[100:150] = new_vec
    ids = [m["id"] for m in meta]
    q = clustered(5, seed=5)
    assert_same(st.search(q, 10), brute(cur, ids, q, 10))
    with pytest.raises(ImgragError):
        st.upsert(make_rows(meta[:2], clustered(2, dim=DIM + 1)))
    with pytest.raises(ImgragError):
        st.upsert(make_rows(meta[:1], np.full((1, DIM), np.nan, np.float32)))
    assert st.count() == len(meta)


@pytest.mark.parametrize("kind,opts", EXACT)
def test_delete(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    ids = [m["id"] for m in meta]
    gone = ids[:40] + ids[300:310]
    st.delete(gone + ["/missing.jpg"])
    st.delete([])
    assert st.count() == len(meta) - 50
    assert st.get(gone).num_rows == 0
    allowed = np.array([i not in gone for i in ids])
    q = vec[:5]
    assert_same(st.search(q, 10), brute(vec, ids, q, 10, allowed))
    assert len(st.get(ids[40:45], columns=["id"])) == 5
    # re-insert one deleted id
    st.upsert(make_rows(meta[:1], vec[:1]))
    assert st.count() == len(meta) - 49
    assert st.search(vec[:1], 1)[0][0].id == ids[0]


@pytest.mark.parametrize("kind,opts", EXACT)
def test_update_columns(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    ids = [m["id"] for m in meta]
    target = ids[10:20]
    st.update_columns(target + ["/missing.jpg"], {"label": ["bird"] * 11, "label_score": [0.25] * 11})
    assert st.count() == len(meta)
    got = {r["id"]: r for r in st.get(target).to_pylist()}
    for i, m in zip(target, meta[10:20]):
        assert got[i]["label"] == "bird" and got[i]["label_score"] == pytest.approx(0.25)
        assert got[i]["size"] == m["size"] and got[i]["taken_at"] == m["taken_at"]
        np.testing.assert_allclose(got[i]["vector"], vec[ids.index(i)], atol=1e-6)
    hits = st.search(vec[:3], 20, filters=Filters(label="bird"))
    assert all(len(h) == 10 and {x.id for x in h} == set(target) for h in hits)
    assert st.search(vec[12:13], 1)[0][0].row["label"] == "bird"
    with pytest.raises(ImgragError):
        st.update_columns(target, {"vector": [[0.0] * DIM] * 10})
    with pytest.raises(ImgragError):
        st.update_columns(target, {"label": ["x"]})  # wrong length
    with pytest.raises(ImgragError):
        st.update_columns(target, {"nonsense": [1] * 10})


@pytest.mark.parametrize("kind,opts", FILTERED)
def test_reopen_gives_same_results(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    st.delete([m["id"] for m in meta[:30]])
    st.update_columns([m["id"] for m in meta[30:40]], {"label": ["z"] * 10})
    q = clustered(6, seed=11)
    f = Filters(path_glob="*/20??/*", taken_after=datetime(2016, 1, 1))

    def snapshot(s):
        return ([[(h.id, round(h.score, 5)) for h in hh] for hh in s.search(q, 10)],
                [[h.id for h in hh] for hh in s.search(q, 10, filters=f)], s.count(),
                sorted(s.get([m["id"] for m in meta[25:45]], ["id", "label"]).to_pylist(), key=lambda r: r["id"]))

    before = snapshot(st)
    st.close()
    again = mk(kind, tmp_path, opts)
    assert snapshot(again) == before
    again.optimize()
    assert snapshot(again) == before
    third = mk(kind, tmp_path, opts)
    assert snapshot(third) == before
    assert third.disk_size() > 0 and third.describe()["kind"] == kind


@pytest.mark.parametrize("kind,opts", EXACT)
def test_scan_and_get(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    batches = list(st.scan(batch_size=128))
    assert batches and all(0 < b.num_rows <= 128 for b in batches)
    t = pa.Table.from_batches(batches)
    assert t.num_rows == len(meta) and "vector" in t.column_names
    by = {r["id"]: np.asarray(r["vector"]) for r in t.select(["id", "vector"]).to_pylist()}
    ids = [m["id"] for m in meta]
    np.testing.assert_allclose(np.stack([by[i] for i in ids]), vec, atol=1e-6)
    only = list(st.scan(columns=["id", "size"], batch_size=1000))
    assert only[0].schema.names == ["id", "size"]
    assert sum(b.num_rows for b in only) == len(meta)
    g = st.get(ids[:3] + ["nope"], columns=["id", "taken_at", "vector"])
    assert g.column_names == ["id", "taken_at", "vector"] and g.num_rows == 3
    assert {r["id"]: r["taken_at"] for r in g.to_pylist()} == {m["id"]: m["taken_at"] for m in meta[:3]}
    assert st.get([]).num_rows == 0
    odd = [m["id"] for m in meta[6:8]]  # quotes and backslashes in ids
    assert "'" in odd[0] and "\\" in odd[1]
    assert sorted(st.get(odd, columns=["id"])["id"].to_pylist()) == sorted(odd)
    fs = st.file_states()
    assert fs.num_rows == len(meta) and set(fs.column_names) == {"id", "path", "size", "mtime_ns", "hash"}
    with pytest.raises(ImgragError):
        list(st.scan(columns=["bogus"]))


@pytest.mark.parametrize("kind,opts", EXACT)
def test_empty_store(kind, opts, tmp_path):
    st = mk(kind, tmp_path, opts)
    assert st.count() == 0
    assert st.search(clustered(2), 5) == [[], []]
    assert list(st.scan()) == [] and st.get(["a"]).num_rows == 0
    st.optimize()
    assert st.count() == 0
    with pytest.raises(ImgragError):
        st.search(np.zeros((1, DIM + 3), np.float32), 3)


@pytest.mark.parametrize("kind", ["lancedb", "faiss"])
def test_options_and_dimension_errors(kind, tmp_path, data):
    meta, vec = data
    with pytest.raises(ImgragError, match="unknown"):
        mk(kind, tmp_path, {"no_such_option": 1})
    st = mk(kind, tmp_path)
    st.upsert(make_rows(meta[:5], vec[:5]))
    with pytest.raises(IndexMismatchError):
        mk(kind, tmp_path, dim=DIM * 2)


def test_faiss_bad_factory(tmp_path):
    with pytest.raises(ImgragError, match="factory|faiss"):
        mk("faiss", tmp_path, {"factory": "NoSuchIndex12"})
    with pytest.raises(ImgragError):
        mk("faiss", tmp_path, {"factory": "IDMap,Flat"})


@pytest.mark.parametrize("kind,opts", FILTERED)
def test_concurrent_search_while_upserting(kind, opts, tmp_path, data):
    meta, vec = data
    st = filled(kind, opts, tmp_path, data)
    errors: list[BaseException] = []
    counts: list[int] = []
    stop = threading.Event()

    def reader(seed):
        q = clustered(2, seed=seed)
        try:
            while not stop.is_set():
                hits = st.search(q, 5, filters=Filters(path_glob="*/20*") if seed % 2 else None)
                assert all(len(h) == 5 for h in hits)
                counts.append(st.count())
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        rng = np.random.default_rng(0)
        for r in range(8):  # replace rows (count constant) and add a few new ones
            idx = rng.choice(len(meta), 40, replace=False)
            st.upsert(make_rows([meta[i] for i in idx], clustered(40, seed=100 + r)))
        st.upsert(make_rows(metas(20, prefix="/new"), clustered(20, seed=500)))
        st.delete([m["id"] for m in metas(20, prefix="/new")])
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert not errors, errors[:1]
    assert counts and set(counts) <= {len(meta), len(meta) + 20}
    assert st.count() == len(meta)


# ------------------------------------------------------------------------------------------------
# ANN
# ------------------------------------------------------------------------------------------------
def recall_at(st, vec, ids, q, k=10, **kw) -> float:
    truth = brute(vec, ids, q, k)
    got = st.search(q, k, **kw)
    return float(np.mean([len({h.id for h in g} & {i for i, _ in t}) / k for g, t in zip(got, truth)]))


@pytest.fixture(scope="module")
def big():
    n = 3000
    return metas(n, seed=4), clustered(n, seed=4, clusters=40, spread=0.5)


def test_faiss_hnsw_default_search_breadth(tmp_path, big):
    """HNSW searches with ef_search 256 unless told otherwise: bench/search_scale.py measured recall@10
    0.94 with 128 and 0.95 with 256 on 1M clustered vectors (HNSW32,SQ8)."""
    meta, vec = big
    ids = [m["id"] for m in meta]
    st = mk("faiss", tmp_path, {"factory": "HNSW32,SQ8"})
    st.upsert(make_rows(meta, vec))
    st.optimize()
    assert st.describe()["ef_search"] == 256
    q = clustered(40, seed=78, clusters=40, spread=0.5)
    assert recall_at(st, vec, ids, q) >= 0.95
    assert mk("faiss", tmp_path / "b", {"factory": "HNSW32,SQ8", "ef_search": 64}).ef_search == 64


@pytest.mark.parametrize("factory", ["HNSW32", "IVF32,Flat", "IVF16,SQ8"])
def test_faiss_ann_recall(factory, tmp_path, big):
    meta, vec = big
    ids = [m["id"] for m in meta]
    st = mk("faiss", tmp_path, {"factory": factory})
    for off in range(0, len(meta), 1000):
        st.upsert(make_rows(meta[off:off + 1000], vec[off:off + 1000]))
    st.optimize()
    d = st.describe()
    assert d["index"] == factory and not d["exact"], d
    q = clustered(40, seed=77, clusters=40, spread=0.5)
    assert recall_at(st, vec, ids, q) >= 0.9
    # a large filter goes through the index with a selector; results only from the subset
    f = Filters(path_glob="*/20*")
    hits = st.search(q[:5], 10, filters=f)
    assert all(len(h) == 10 and all(ref_match(x.row, f) for x in h) for h in hits)
    # a narrow filter is answered by brute force over the matching rows (exact for Flat storage,
    # over the index's decoded vectors for SQ/PQ codes)
    f2 = Filters(path_glob="*/plain/*", label="dog", taken_after=datetime(2015, 6, 1))
    allowed = np.array([ref_match(m, f2) for m in meta])
    exp = brute(vec, ids, q[:5], 5, allowed)
    assert 5 < allowed.sum() < 0.2 * len(meta) and all(len(e) == 5 for e in exp)
    got = st.search(q[:5], 5, filters=f2)
    assert all(len(g) == 5 and all(ref_match(x.row, f2) for x in g) for g in got)
    if "SQ" in factory:
        assert np.mean([len({h.id for h in g} & {i for i, _ in e}) for g, e in zip(got, exp)]) >= 4
    else:
        assert [[h.id for h in g] for g in got] == [[i for i, _ in e] for e in exp]
    # reopen: saved index is used and still good
    again = mk("faiss", tmp_path, {"factory": factory})
    assert again.describe()["index"] == factory
    assert recall_at(again, vec, ids, q) >= 0.9


def test_faiss_ivf_too_few_rows_falls_back(tmp_path, data):
    meta, vec = data
    ids = [m["id"] for m in meta]
    st = mk("faiss", tmp_path, {"factory": "IVF256,Flat"})
    st.upsert(make_rows(meta, vec))
    st.optimize()
    d = st.describe()
    assert d["exact"] and d["index"].startswith("Flat") and str(256 * 39) in d["index"], d
    q = clustered(5, seed=8)
    assert_same(st.search(q, 10), brute(vec, ids, q, 10))
    # with a low training threshold the same store trains its IVF index on optimize
    st2 = mk("faiss", tmp_path, {"factory": "IVF8,Flat", "nprobe": 8})
    st2.optimize()
    assert st2.describe()["index"] == "IVF8,Flat" and st2.describe()["trained_rows"] == len(meta)
    assert_same(st2.search(q, 10), brute(vec, ids, q, 10))  # nprobe = nlist: exhaustive



@pytest.mark.parametrize("factory,nprobe", [("IVF8,Flat", 8), ("IVF256,SQ8", 16), ("IVF1024,SQ8", 16),
                                            ("IVF4096,SQ8", 64), ("HNSW32", 0)])
def test_faiss_default_nprobe_follows_the_benchmark(tmp_path, factory, nprobe):
    """max(16, nlist/64), at most nlist: the setting that met recall@10 >= 0.95 at p50 <= 2 ms (BENCHMARKS.md)."""
    assert mk("faiss", tmp_path, {"factory": factory}, dim=64).nprobe == nprobe


@pytest.mark.parametrize("ann", ["ivf_pq", "ivf_hnsw_sq"])
def test_lancedb_optimize_builds_ann_index(ann, tmp_path, big):
    meta, vec = big
    meta, vec = meta[:1200], vec[:1200]
    ids = [m["id"] for m in meta]
    st = mk("lancedb", tmp_path, {"ann": ann, "ann_min_rows": 300, "keep_versions_s": 0})
    st.upsert(make_rows(meta, vec))
    assert st.describe()["index"] == "flat (exact)"
    st.optimize()
    d = st.describe()
    assert d["index"] != "flat (exact)" and d.get("indexed_rows") == 1200, d
    q = clustered(40, seed=78, clusters=40, spread=0.5)
    assert recall_at(st, vec, ids, q) >= 0.9
    # scores are inner products (candidates are re-ranked with the stored vectors)
    exact_scores = q[:3] @ vec.T
    for qi, h in enumerate(st.search(q[:3], 5)):
        np.testing.assert_allclose([x.score for x in h], [exact_scores[qi, ids.index(x.id)] for x in h], atol=1e-4)
    # a narrow filter is exact even with the index
    f = Filters(path_glob="*/plain/*", label="dog", taken_after=datetime(2015, 6, 1))
    allowed = np.array([ref_match(m, f) for m in meta])
    assert 5 < allowed.sum() < 0.2 * len(meta)
    assert_same(st.search(q[:4], 5, filters=f), brute(vec, ids, q[:4], 5, allowed))
    # rows added after the index are found too
    new_meta, new_vec = metas(5, prefix="/late"), clustered(5, seed=999)
    st.upsert(make_rows(new_meta, new_vec))
    assert [h[0].id for h in st.search(new_vec, 1)] == [m["id"] for m in new_meta]


def test_lancedb_default_ann_is_hnsw_sq(tmp_path, big):
    """Large LanceDB tables get IVF_HNSW_SQ unless told otherwise: bench/search_scale.py measured recall@10
    0.989 (ef 64) at 1M vectors where the IVF_PQ defaults reached 0.66."""
    meta, vec = big
    meta, vec = meta[:1200], vec[:1200]
    ids = [m["id"] for m in meta]
    st = mk("lancedb", tmp_path, {"ann_min_rows": 300, "keep_versions_s": 0})
    st.upsert(make_rows(meta, vec))
    st.optimize()
    d = st.describe()
    assert d["ann"] == "ivf_hnsw_sq" and "hnsw" in d["index"].lower() and d.get("indexed_rows") == 1200, d
    q = clustered(40, seed=79, clusters=40, spread=0.5)
    assert recall_at(st, vec, ids, q) >= 0.95


def test_lancedb_optimize_bounds_disk(tmp_path, data):
    meta, vec = data
    st = mk("lancedb", tmp_path, {"keep_versions_s": 0, "ann": "none"})
    for r in range(8):
        st.upsert(make_rows(meta, clustered(len(meta), seed=r)))
    grown = st.disk_size()
    st.optimize()
    assert st.count() == len(meta)
    assert st.disk_size() < 0.5 * grown


def test_faiss_compaction_bounds_disk(tmp_path, data):
    meta, vec = data
    st = mk("faiss", tmp_path)
    for r in range(8):
        st.upsert(make_rows(meta, clustered(len(meta), seed=r)))
    grown = st.disk_size()
    st.optimize()
    assert st.describe()["files"] == 1
    assert st.disk_size() < 0.5 * grown
    last = clustered(len(meta), seed=7)
    ids = [m["id"] for m in meta]
    q = clustered(3, seed=1)
    assert_same(st.search(q, 10), brute(last, ids, q, 10))
    assert_same(mk("faiss", tmp_path).search(q, 10), brute(last, ids, q, 10))


def test_second_handle_sees_commits(tmp_path, data):
    """A reader opened before another writer's commits picks them up (FAISS reloads on change)."""
    meta, vec = data
    for kind in ("faiss", "lancedb"):
        w = mk(kind, tmp_path)
        r = mk(kind, tmp_path)
        w.upsert(make_rows(meta[:100], vec[:100]))
        assert r.count() == 100
        w.delete([meta[0]["id"]])
        w.upsert(make_rows(meta[100:150], vec[100:150]))
        assert r.count() == 149
        assert r.search(vec[120:121], 1)[0][0].id == meta[120]["id"]
        w.optimize()
        assert r.count() == 149 and r.search(vec[5:6], 1)[0][0].id == meta[5]["id"]


# ------------------------------------------------------------------------------------------------
# FAISS files: corruption and crashes
# ------------------------------------------------------------------------------------------------
def _faiss_store_with_index(tmp_path, data):
    meta, vec = data
    st = mk("faiss", tmp_path)
    st.upsert(make_rows(meta[:300], vec[:300]))
    st.optimize()
    st.upsert(make_rows(meta[300:], vec[300:]))  # a segment not covered by the saved index
    st.close()
    root = tmp_path / "faiss"
    man = json.loads((root / "manifest.json").read_text())
    return root, man


def test_faiss_stale_index_brought_up_to_date(tmp_path, data):
    meta, vec = data
    root, man = _faiss_store_with_index(tmp_path, data)
    assert man["index"]["next_label"] == 300 and man["next_label"] == len(meta)
    st = mk("faiss", tmp_path)
    ids = [m["id"] for m in meta]
    assert st.count() == len(meta)
    q = vec[[10, 400, 599]]
    assert_same(st.search(q, 5), brute(vec, ids, q, 5))


@pytest.mark.parametrize("damage", ["truncate_segment", "foreign_parquet", "random_segment", "truncate_index",
                                    "random_index", "raw_faiss_index", "wrong_magic", "manifest_garbage",
                                    "manifest_foreign", "missing_segment"])
def test_faiss_corrupt_files_raise(damage, tmp_path, data):
    import faiss

    root, man = _faiss_store_with_index(tmp_path, data)
    seg = root / man["entries"][-1]["file"]
    idx = root / man["index"]["file"]
    rng = np.random.default_rng(0)
    if damage == "truncate_segment":
        seg.write_bytes(seg.read_bytes()[: seg.stat().st_size // 2])
    elif damage == "foreign_parquet":  # a valid parquet file from elsewhere, manifest updated to match
        pq.write_table(pa.table({"a": list(range(250)), "id": ["x"] * 250}), seg)
        man["entries"][-1]["bytes"] = seg.stat().st_size
        (root / "manifest.json").write_text(json.dumps(man))
    elif damage == "random_segment":
        seg.write_bytes(rng.bytes(seg.stat().st_size))
    elif damage == "truncate_index":
        idx.write_bytes(idx.read_bytes()[:40])
    elif damage == "random_index":  # same size, so only the checksum can tell
        idx.write_bytes(rng.bytes(idx.stat().st_size))
    elif damage == "raw_faiss_index":  # a faiss index without our header, manifest updated to match
        faiss.write_index(faiss.IndexFlatIP(DIM), str(idx))
        man["index"]["bytes"] = idx.stat().st_size
        (root / "manifest.json").write_text(json.dumps(man))
    elif damage == "wrong_magic":
        b = bytearray(idx.read_bytes())
        b[:8] = b"NOTMAGIC"
        idx.write_bytes(bytes(b))
    elif damage == "manifest_garbage":
        (root / "manifest.json").write_bytes(b"\x00\xff{not json")
    elif damage == "manifest_foreign":
        (root / "manifest.json").write_text(json.dumps({"hello": "world"}))
    elif damage == "missing_segment":
        seg.unlink()
    with pytest.raises(CorruptIndexError) as ei:
        mk("faiss", tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and ("rebuild" in msg or "--rebuild" in msg)


def test_faiss_stray_files_are_ignored_and_cleaned(tmp_path, data):
    meta, vec = data
    root, man = _faiss_store_with_index(tmp_path, data)
    gen = man["generation"]
    (root / f".seg-{gen + 1:08d}.parquet.tmp-999999-1").write_bytes(b"half a file")
    (root / f"seg-{gen + 1:08d}.parquet").write_bytes(b"PAR1 uncommitted garbage PAR1")
    (root / f".manifest.json.tmp-999999").write_bytes(b"{half")
    st = mk("faiss", tmp_path)
    assert st.count() == len(meta)
    st.upsert(make_rows(metas(3, prefix="/after"), clustered(3, seed=42)))  # reuses the stray's name
    assert mk("faiss", tmp_path).count() == len(meta) + 3
    st.optimize()
    names = set(os.listdir(root))
    referenced = {e["file"] for e in json.loads((root / "manifest.json").read_text())["entries"]}
    assert {n for n in names if re.match(r"^(seg|meta|del)-", n)} == referenced


def test_faiss_old_temp_files_of_both_naming_rules_are_cleaned(tmp_path, data):
    """Temp files of crashed writers go once they are old: today's names (``.x.tmp-PID-TID``) and the
    older manifest rule (``.x.tmp-PID``) that existing indexes may still hold; fresh ones and files
    that are not temp files stay."""
    root, _man = _faiss_store_with_index(tmp_path, data)
    old = time.time() - 3600
    stale = [".seg-00000999.parquet.tmp-999999-140000", ".manifest.json.tmp-999999"]
    fresh = [".manifest.json.tmp-999998-1", ".manifest.json.tmp-999997"]
    other = [".notes.tmp-x", "notes.tmp-123"]
    for name in stale + fresh + other:
        (root / name).write_bytes(b"x")
    for name in stale + other:
        os.utime(root / name, (old, old))
    st = mk("faiss", tmp_path)
    st.optimize()
    names = set(os.listdir(root))
    assert not names & set(stale)
    assert set(fresh + other) <= names
    assert st.count() == len(data[0])


CRASH_WRITER = textwrap.dedent("""
    import sys, numpy as np
    from imgrag.retrieval.stores import open_store, make_rows
    kind, root, dim, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    st = open_store(kind, root, dim, **({"consistency_s": 0} if kind == "lancedb" else {}))
    r = 0
    while True:
        ids = [f"/c/{r}/{i}.jpg" for i in range(batch)]
        v = np.random.default_rng(r).standard_normal((batch, dim)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        st.upsert(make_rows([{"id": i, "path": i, "size": r} for i in ids], v))
        if r % 3 == 2:
            st.update_columns(ids[:5], {"label": ["x"] * 5})
        if r % 4 == 3:
            st.delete([f"/c/{r - 1}/{i}.jpg" for i in range(batch)])
        print(r, flush=True)
        r += 1
""")


@pytest.mark.parametrize("kind", ["faiss", "lancedb"])
def test_crash_mid_commit_leaves_whole_commits(kind, tmp_path):
    """SIGKILL a writer at random moments: the store reopens holding only whole commits."""
    batch = 40
    root = tmp_path / kind
    rng = np.random.default_rng(1)
    for attempt in range(3):
        p = subprocess.Popen([sys.executable, "-c", CRASH_WRITER, kind, str(root), str(DIM), str(batch)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 60
        seen = 0
        try:
            while seen < 4 + attempt * 3 and time.time() < deadline:
                line = p.stdout.readline()
                if not line:
                    break
                seen += 1
            time.sleep(float(rng.uniform(0, 0.03)))
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait(10)
            p.stdout.close()
        assert seen >= 1, "the writer never committed"
        st = mk(kind, tmp_path)
        n = st.count()
        rows = pa.Table.from_batches(list(st.scan(columns=["id", "size", "label", "vector"])))
        assert rows.num_rows == n
        by_round: dict[int, list] = {}
        for r in rows.to_pylist():
            by_round.setdefault(int(r["id"].split("/")[2]), []).append(r)
        for rd, rs in by_round.items():
            assert len(rs) == batch, f"round {rd} is partial: {len(rs)} rows"  # upserts are all-or-nothing
            v = np.random.default_rng(rd).standard_normal((batch, DIM)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            for r in rs:
                i = int(r["id"].rsplit("/", 1)[1].split(".")[0])
                np.testing.assert_allclose(r["vector"], v[i], atol=1e-6)
                assert r["size"] == rd
        labelled = sum(1 for r in rows.to_pylist() if r["label"] == "x")
        assert labelled % 5 == 0
        # still writable and searchable after the crash
        q = np.asarray(rows["vector"][0].as_py(), np.float32)[None]
        assert st.search(q, 1)[0][0].id == rows["id"][0].as_py()
        st.optimize()
        assert mk(kind, tmp_path).count() == n
        st.close()
