"""``imgrag watch``: the index follows the folders (indexer/watch.py through the real pipeline).

- events (watchdog/inotify), both stores: an add, a change, a rename (vector reused: nothing embedded) and a
  delete are in the index within a bounded wait;
- a burst of 500 files coalesces into its folder (bounded dirty set) and ends with exactly those rows;
- a burst of 600 files with max_pending=10, max_dirs=3 never holds more than that (instrumented), ends exact,
  and so does deleting them all;
- a half-written file (open, not closed) is not indexed, nor recorded as corrupt, until it is complete;
- polling without watchdog (the import made to fail) does the same four changes;
- another writer holding the lock: the watcher waits, then indexes;
- Ctrl-C (SIGINT) to an ``imgrag watch`` subprocess in the middle of a batch: exit 130 with one line, an
  index that opens with only whole rows, and a later ``imgrag index`` completes it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.indexer.pipeline import IndexOptions
from imgrag.indexer.watch import Watcher, WatchOptions
from imgrag.retrieval.index import Index

from fakes import FakeEmbedder
from reliability import all_rows, record_dirty_peaks, tiny_collection
from waiting import wait_until

STORES = ["lancedb", "faiss"]
WAIT = 120.0  # generous: only reached when something is broken


def _image(path: Path, seed: int, size: int = 10) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _rows(index) -> dict[str, dict]:
    return {r["path"]: r for r in all_rows(index).values()}


@contextlib.contextmanager
def watching(index, roots, **kw):
    opts = WatchOptions(index=IndexOptions(batch_size=8, workers=0, commit_every=16), settle=0.2, tick=0.05,
                        rescan_every=kw.pop("rescan_every", 3600.0), **kw)
    w = Watcher(index, [str(r) for r in roots], opts)
    w.start_thread()
    try:
        yield w
    finally:
        w.stop(wait=60)
        assert w.thread is not None and not w.thread.is_alive(), "the watcher did not stop"


def _add_change_rename_delete(index, emb: FakeEmbedder, coll: Path) -> None:
    """The four changes, each awaited; the index ends with exactly the files on disk."""
    add = _image(coll / "d1" / "new.png", 100)
    wait_until(lambda: str(add) in _rows(index), WAIT, "the added file to be indexed")

    changed = coll / "d0" / "im00000.jpg"
    old_hash = _rows(index)[str(changed)]["hash"]
    _image(changed, 101)  # new content in place
    wait_until(lambda: _rows(index).get(str(changed), {}).get("hash") not in (None, old_hash), WAIT,
               "the changed file's row to be updated")

    embedded = emb.images_embedded
    src, dest = coll / "d2" / "im00002.png", coll / "d2" / "renamed.png"
    vec = np.asarray(_rows(index)[str(src)]["vector"])
    os.rename(src, dest)
    wait_until(lambda: str(dest) in (r := _rows(index)) and str(src) not in r, WAIT, "the rename")
    assert emb.images_embedded == embedded, "a renamed file was embedded again instead of reusing its vector"
    np.testing.assert_allclose(np.asarray(_rows(index)[str(dest)]["vector"]), vec)

    gone = coll / "d4" / "im00004.png"
    gone.unlink()
    wait_until(lambda: str(gone) not in _rows(index), WAIT, "the deleted file's row to go")
    on_disk = {str(p) for p in coll.rglob("*") if p.suffix in (".png", ".jpg")}
    wait_until(lambda: set(_rows(index)) == on_disk, WAIT, "the index to hold exactly the files on disk")
    assert index.skipped() == []


@pytest.mark.parametrize("store", STORES)
def test_events_add_change_rename_delete(store, tmp_path):
    pytest.importorskip("watchdog")
    coll = tmp_path / "coll"
    tiny_collection(coll, 8)
    emb = FakeEmbedder()
    index = Index.create_or_open(tmp_path / "idx", emb, store=store)
    with watching(index, [coll]) as w:
        wait_until(lambda: len(_rows(index)) == 8, WAIT, "the first rescan to index the collection")
        assert not w.polling
        _add_change_rename_delete(index, emb, coll)


@pytest.mark.parametrize("store", STORES)
def test_burst_of_500_files_coalesces_and_ends_exact(store, tmp_path):
    pytest.importorskip("watchdog")
    coll = tmp_path / "coll"
    (coll / "burst").mkdir(parents=True)
    index = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    with watching(index, [coll], max_pending=50, max_dirs=4) as w:
        wait_until(lambda: w.rescans >= 1, WAIT, "the first rescan")
        files = {str(_image(coll / "burst" / f"b{i:04d}.png", i, size=6)) for i in range(500)}
        wait_until(lambda: set(_rows(index)) == files, WAIT, "exactly the 500 burst files in the index")
        assert w.dirty.coalesced > 0, "500 events never coalesced past max_pending=50 files"
        assert len(w.dirty.files) <= 50 and len(w.dirty.dirs) <= 4
    assert index.store.count() == 500 and index.skipped() == []


def test_burst_never_holds_more_than_the_cap(tmp_path):
    """Bounded memory, structurally: a burst of 60x max_pending files into existing folders (one event each,
    no folder event to absorb them) never leaves more than max_pending files or max_dirs folders pending,
    and ends with exactly the burst's rows. Deleting them all keeps the deletion set within the cap too."""
    pytest.importorskip("watchdog")
    coll = tmp_path / "coll"
    folders = [coll / f"in{i}" for i in range(6)]  # more folders than max_dirs: they coalesce into the root
    for f in folders:
        f.mkdir(parents=True)
    index = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    opts = WatchOptions(index=IndexOptions(batch_size=64, workers=0), settle=0.2, tick=0.05, rescan_every=3600.0,
                        max_pending=10, max_dirs=3, batch_files=16)
    w = Watcher(index, [str(coll)], opts)
    peak = record_dirty_peaks(w.dirty)
    w.start_thread()
    try:
        wait_until(lambda: w.rescans >= 1, WAIT, "the first rescan")
        files = {str(_image(folders[i % 6] / f"b{i:04d}.png", i, size=6)) for i in range(600)}
        wait_until(lambda: set(_rows(index)) == files, WAIT, "exactly the 600 burst files in the index")
        assert peak["calls"] >= 600, f"only {peak['calls']} events reached the dirty set for 600 new files"
        assert w.dirty.coalesced > 0
        for p in files:
            os.unlink(p)
        wait_until(lambda: index.store.count() == 0, WAIT, "the rows of the 600 deleted files to go")
    finally:
        w.stop(wait=60)
    assert peak["files"] <= 10 and peak["dirs"] <= 3 and peak["gone"] <= 10, peak
    assert peak["files"] > 0 and peak["gone"] > 0, peak  # the set was in use, not bypassed
    assert index.skipped() == []


def test_half_written_file_waits_until_complete(tmp_path):
    pytest.importorskip("watchdog")
    coll = tmp_path / "coll"
    coll.mkdir()
    src = _image(tmp_path / "whole.png", 7, size=64)
    data = src.read_bytes()
    index = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    with watching(index, [coll], open_grace=3600.0) as w:
        wait_until(lambda: w.rescans >= 1, WAIT, "the first rescan")
        half = coll / "copying.png"
        with open(half, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            os.fsync(f.fileno())
            # a file written after the half one is indexed: the watcher has looked at both by then
            later = _image(coll / "later.png", 8)
            wait_until(lambda: str(later) in _rows(index), WAIT, "the complete file written later")
            assert str(half) not in _rows(index), "a half-written file was indexed"
            assert index.skipped() == [], "a half-written file was recorded as corrupt"
            f.write(data[len(data) // 2:])
        wait_until(lambda: str(half) in _rows(index), WAIT, "the file once complete")
    assert index.skipped() == []
    assert _rows(index)[str(half)]["size"] == len(data)


@pytest.mark.parametrize("store", STORES)
def test_polling_without_watchdog(store, tmp_path, monkeypatch, caplog):
    for mod in ("watchdog", "watchdog.observers", "watchdog.events"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import watchdog...` raises ImportError
    coll = tmp_path / "coll"
    tiny_collection(coll, 8)
    emb = FakeEmbedder()
    index = Index.create_or_open(tmp_path / "idx", emb, store=store)
    with caplog.at_level(logging.WARNING, logger="imgrag.watch"):
        with watching(index, [coll], rescan_every=0.3) as w:
            wait_until(lambda: len(_rows(index)) == 8, WAIT, "the first rescan to index the collection")
            assert w.polling
            _add_change_rename_delete(index, emb, coll)
    assert "pip install 'imgrag[watch]'" in caplog.text


def test_waits_for_another_writer_then_indexes(tmp_path, caplog):
    coll = tmp_path / "coll"
    tiny_collection(coll, 3)
    index = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path / "idx")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with caplog.at_level(logging.WARNING, logger="imgrag.watch"):
            with watching(index, [coll], poll=True, rescan_every=0.3) as w:
                wait_until(lambda: "waiting for the writer lock" in caplog.text, WAIT, "the lock-wait message")
                assert index.store.count() == 0 and w.batches == 0
                holder.stdin.write("\n")
                holder.stdin.flush()
                wait_until(lambda: index.store.count() == 3, WAIT, "the batch once the lock is free")
        assert caplog.text.count("waiting for the writer lock") == 1, "the wait was logged more than once"
    finally:
        holder.kill()
        holder.wait()


HOLD_LOCK = r"""
import sys
from imgrag.retrieval.locking import writer_lock
with writer_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.readline()
"""

# `imgrag watch` whose first commit pauses (a condition the test waits for, not a sleep): SIGINT arrives there
PAUSED_WATCH = r"""
import sys
import imgrag.indexer.commit as commit
from imgrag.app.cli import main

real_commit = commit.LocalCommitter.commit
state = {"paused": False}

def commit_then_pause(self):
    real_commit(self)
    if not state["paused"] and self.store.count() > 0:
        state["paused"] = True
        print("committed", flush=True)
        sys.stdin.readline()

commit.LocalCommitter.commit = commit_then_pause
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("store", STORES)
def test_ctrl_c_leaves_a_consistent_index(store, tmp_path):
    coll, idx = tmp_path / "coll", tmp_path / "idx"
    n = 12
    tiny_collection(coll, n)
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WATCH, "watch", str(coll), "--index", str(idx), "--store", store,
         "--model", "imgrag-tiny-clip", "--poll", "--settle", "0.1", "--workers", "0", "--batch-size", "2",
         "--commit-every", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "committed", f"no first commit: {line!r} {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("imgrag:")]
    assert lines[-1].startswith("imgrag: watch stopped;") and "Traceback" not in err, err[-2000:]

    index = Index.open(idx)
    rows = all_rows(index)  # no duplicate ids
    assert 0 < len(rows) <= n and index.store.count() == len(rows)
    for r in rows.values():  # whole rows only: a file on disk, its hash, a unit vector
        assert Path(r["path"]).is_file() and r["hash"]
        assert abs(float(np.linalg.norm(np.asarray(r["vector"], np.float32))) - 1.0) < 1e-3
    from imgrag.retrieval.locking import writer_lock

    with writer_lock(idx):  # the lock was given back
        pass
    out = subprocess.run([sys.executable, "-m", "imgrag.app.cli", "index", str(coll), "--index", str(idx),
                          "--workers", "0"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert len(all_rows(Index.open(idx))) == n


def test_serve_watch_runs_in_a_background_thread(tmp_path):
    pytest.importorskip("watchdog")
    from imgrag.app.web.backend import Backend, UIConfig
    from imgrag.app.web.server import _start_watch

    coll = tmp_path / "coll"
    tiny_collection(coll, 4)
    index = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    backend = Backend(UIConfig(index_root=tmp_path / "idx", index_workers=0, thumb_dir=tmp_path / "thumbs"),
                      index=index)
    w = _start_watch(backend, [str(coll)])
    try:
        assert w.thread is not None and w.thread.daemon
        wait_until(lambda: index.store.count() == 4, WAIT, "the server's watcher to index the folder")
        added = _image(coll / "added.png", 5)
        wait_until(lambda: str(added) in _rows(index), WAIT, "a file added while serving")
    finally:
        w.stop(wait=60)
    assert not w.thread.is_alive()
