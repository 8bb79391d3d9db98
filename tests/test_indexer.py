"""Indexer pipeline: incremental runs, reuse by content hash, skips, resume, locking, model pinning."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.indexer.lock import IndexLock
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import IndexLockedError, IndexMismatchError
from imgrag.retrieval.index import Index
from imgrag.retrieval.queries.search import search

from fakes import FakeEmbedder
from reliability import all_rows

STORES = ["lancedb", "faiss"]


def make_collection(root: Path, n: int = 12, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = root / f"album{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        color = rng.integers(0, 256, size=3)
        arr = np.clip(color + rng.integers(-20, 20, size=(40 + i, 50, 3)), 0, 255).astype(np.uint8)
        p = sub / f"img{i:03d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture(params=STORES)
def store_kind(request):
    return request.param


def open_index(tmp_path, kind, emb=None):
    return Index.create_or_open(tmp_path / "idx", emb or FakeEmbedder(), store=kind)


OPTS = IndexOptions(batch_size=4, workers=0, commit_every=5)


def test_index_and_incremental(tmp_path, store_kind):
    coll = tmp_path / "photos"
    paths = make_collection(coll)
    emb = FakeEmbedder()
    idx = open_index(tmp_path, store_kind, emb)
    rep = build_index(idx, [coll], OPTS)
    assert rep.embedded == 12 and rep.skipped == [] and rep.total_items == 12
    assert emb.calls == 3  # 12 images in batches of 4: batched, never one pass per image
    rows = all_rows(idx)
    assert set(rows) == {str(p) for p in paths}
    r = rows[str(paths[5])]
    assert r["size"] == paths[5].stat().st_size and r["mtime_ns"] == paths[5].stat().st_mtime_ns
    assert (r["width"], r["height"]) == (50, 45) and len(r["hash"]) == 32

    # unchanged rerun: nothing embedded
    rep2 = build_index(idx, [coll], OPTS)
    assert (rep2.embedded, rep2.reused, rep2.unchanged, rep2.deleted) == (0, 0, 12, 0)

    # change one, delete one, rename one, duplicate one
    Image.fromarray(np.full((30, 30, 3), 255, np.uint8)).save(paths[0])
    os.utime(paths[0], ns=(time.time_ns(), time.time_ns() + 10**9))
    paths[1].unlink()
    renamed = paths[2].with_name("renamed.png")
    paths[2].rename(renamed)
    dup = coll / "album0" / "copy.png"
    shutil.copy(paths[3], dup)
    before = emb.images_embedded
    rep3 = build_index(idx, [coll], OPTS)
    assert rep3.embedded == 1 and emb.images_embedded - before == 1  # only the changed file
    assert rep3.reused == 2  # rename + duplicate reuse vectors by content hash
    assert rep3.deleted == 2  # deleted file + old name of the renamed one
    rows3 = all_rows(idx)
    assert str(paths[1]) not in rows3 and str(paths[2]) not in rows3
    assert np.allclose(rows3[str(renamed)]["vector"], rows[str(paths[2])]["vector"])
    assert np.allclose(rows3[str(dup)]["vector"], rows[str(paths[3])]["vector"])
    assert not np.allclose(rows3[str(paths[0])]["vector"], rows[str(paths[0])]["vector"])
    assert len(rows3) == 12 == idx.store.count()


def test_search_finds_colour_and_excludes_query(tmp_path, store_kind):
    coll = tmp_path / "c"
    coll.mkdir()
    for name, rgb in [("red", (230, 10, 10)), ("green", (10, 230, 10)), ("blue", (10, 10, 230))]:
        Image.fromarray(np.full((20, 20, 3), rgb, np.uint8)).save(coll / f"{name}.png")
    idx = open_index(tmp_path, store_kind)
    build_index(idx, [coll], OPTS)
    for name in ("red", "green", "blue"):
        hits = search(idx, name, k=3)
        assert Path(hits[0].path).name == f"{name}.png"
    hits = search(idx, f"image:{coll / 'red.png'}", k=3)
    assert str(coll / "red.png") not in [h.path for h in hits] and len(hits) == 2
    # weighted combination: red - blue keeps red first; filters restrict
    hits = search(idx, "red - 0.5*blue", k=1)
    assert Path(hits[0].path).name == "red.png"
    from imgrag.retrieval.stores.base import Filters

    hits = search(idx, "red", k=3, filters=Filters(path_glob="*/g*.png"))
    assert [Path(h.path).name for h in hits] == ["green.png"]


def test_bad_files_recorded_and_good_files_kept(tmp_path, store_kind):
    coll = tmp_path / "mixed"
    make_collection(coll, n=4)
    (coll / "empty.jpg").write_bytes(b"")
    (coll / "notes.jpg").write_text("this is text, not a jpeg")
    (coll / "page.png").write_text("<html><body>hi</body></html>")
    good = coll / "good.jpg"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    (coll / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    (coll / "dir.jpg").mkdir()
    os.symlink(coll / "missing.png", coll / "broken.png")
    idx = open_index(tmp_path, store_kind)
    rep = build_index(idx, [coll], OPTS)
    reasons = {Path(s["path"]).name: s["reason"] for s in idx.skipped()}
    assert set(reasons) == {"empty.jpg", "notes.jpg", "page.png", "trunc.jpg", "broken.png"}, reasons
    assert "symlink" in reasons["broken.png"]
    assert rep.total_items == 5  # 4 generated + good.jpg
    # a rerun does not retry unchanged bad files and keeps them listed
    rep2 = build_index(idx, [coll], OPTS)
    assert rep2.new_or_changed == 0 and len(idx.skipped()) == 5


def test_resume_after_interrupt_equals_clean_run(tmp_path, store_kind):
    coll = tmp_path / "p"
    make_collection(coll, n=20)
    clean = Index.create_or_open(tmp_path / "clean", FakeEmbedder(), store=store_kind)
    build_index(clean, [coll], OPTS)
    expected = all_rows(clean)

    idx = open_index(tmp_path, store_kind)
    calls = {"n": 0}

    def stop_after_two(p):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    rep = build_index(idx, [coll], OPTS, progress=stop_after_two)
    assert rep.interrupted and 0 < idx.store.count() < 20
    rep2 = build_index(idx, [coll], OPTS)
    assert not rep2.interrupted and rep2.embedded == 20 - rep.total_items
    got = all_rows(idx)
    assert set(got) == set(expected)
    for k in expected:
        assert np.allclose(got[k]["vector"], expected[k]["vector"], atol=1e-6)


def test_second_writer_refused(tmp_path):
    idx = open_index(tmp_path, "lancedb")
    with IndexLock(idx.root):
        with pytest.raises(IndexLockedError, match="another imgrag process"):
            build_index(idx, [tmp_path], OPTS)
    # released: a new writer gets it
    with IndexLock(idx.root):
        pass


def test_model_mismatch_refused(tmp_path, store_kind):
    open_index(tmp_path, store_kind, FakeEmbedder("fake-a"))
    with pytest.raises(IndexMismatchError, match="fake-a"):
        open_index(tmp_path, store_kind, FakeEmbedder("fake-b"))
    with pytest.raises(IndexMismatchError, match="store"):
        open_index(tmp_path, "faiss" if store_kind == "lancedb" else "lancedb", FakeEmbedder("fake-a"))


class _OtherWeights(FakeEmbedder):
    def fingerprint(self) -> dict:
        return {**super().fingerprint(), "weights": "other"}


def test_existing_index_builds_and_checks_the_model_only_when_something_needs_embedding(tmp_path, store_kind):
    coll = tmp_path / "photos"
    make_collection(coll, n=6)
    build_index(open_index(tmp_path, store_kind), [coll], OPTS)
    built: list[str] = []

    def factory(cls=FakeEmbedder):
        built.append(cls.__name__)
        return cls()

    # nothing changed: the model is never built
    idx = Index.create_or_open(tmp_path / "idx", factory, store=store_kind)
    rep = build_index(idx, [coll], OPTS)
    assert (rep.unchanged, rep.embedded, built) == (6, 0, [])
    # a new file with a model whose weights differ from the index's: refused before anything is written
    make_collection(coll / "new", n=1, seed=5)
    idx = Index.create_or_open(tmp_path / "idx", lambda: factory(_OtherWeights), store=store_kind)
    with pytest.raises(IndexMismatchError, match="different weights"):
        build_index(idx, [coll], OPTS)
    assert built == ["_OtherWeights"] and Index.open(tmp_path / "idx").store.count() == 6
    # the matching model is built once, on first use
    idx = Index.create_or_open(tmp_path / "idx", factory, store=store_kind)
    rep = build_index(idx, [coll], OPTS)
    assert (rep.embedded, built[1:]) == (1, ["FakeEmbedder"]) and idx.store.count() == 7
    # a new index built from a factory builds the model at once (the manifest needs its fingerprint)
    Index.create_or_open(tmp_path / "fresh", factory, store=store_kind)
    assert built[2:] == ["FakeEmbedder"]


def test_workers_decode_in_parallel_same_result(tmp_path):
    coll = tmp_path / "p"
    make_collection(coll, n=10)
    a = Index.create_or_open(tmp_path / "a", FakeEmbedder(), store="lancedb")
    b = Index.create_or_open(tmp_path / "b", FakeEmbedder(), store="lancedb")
    build_index(a, [coll], IndexOptions(batch_size=3, workers=0))
    build_index(b, [coll], IndexOptions(batch_size=3, workers=2))
    ra, rb = all_rows(a), all_rows(b)
    assert set(ra) == set(rb)
    for k in ra:
        assert np.allclose(ra[k]["vector"], rb[k]["vector"])
