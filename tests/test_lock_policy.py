"""One lock policy below the app layer: every write takes the index's writer lock (retrieval/locking.py).

- A real ``imgrag index`` run (the CLI, paused after its first commit while it holds the lock: it prints
  ``locked`` and waits for a line on stdin — a condition, not a sleep) refuses ``classify --write``,
  ``tune``, ``tune --reset`` and a second ``index`` (which prunes) with the lock message naming it; the
  rows are exactly what they were, and once the indexer finishes every file is in and labels can be written.
- A table of every writer entry point of the library and the UI backend, each called while another
  process holds the lock: each raises :class:`IndexLockedError` naming that process and leaves every file
  of the index byte for byte as it was. Both stores.
- Re-entrancy: the thread holding ``Index.writing()`` may call any writer; another thread may not.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import IndexLockedError
from imgrag.retrieval.index import Index
from imgrag.retrieval.locking import IndexLock, held_here, read_holder, writer_lock

from fakes import FakeEmbedder
from reliability import all_rows, tiny_collection

TESTS = Path(__file__).resolve().parent
STORES = ["lancedb", "faiss"]
HOST = os.uname().nodename


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
HOLDER = r"""
import sys
from imgrag.retrieval.locking import writer_lock
lock = writer_lock({root!r}).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes our stdin or kills us
"""


class Holder:
    """Another process holding the writer lock of ``root`` until :meth:`stop`."""

    def __init__(self, root: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(root=str(root))], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()
        assert line == "locked", f"the lock holder did not start: {line!r}"
        self.pid = self.proc.pid

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stdin.close()


def refused_by(pid: int) -> str:
    """The lock message (a regex) naming the process ``pid`` as the writer."""
    return rf"is being updated by another imgrag process \(pid {pid} on {HOST}\); wait for it to finish or stop it"


def files_of(root: Path) -> dict[str, bytes]:
    """Every file of the index, byte for byte (the lock file's text names its holder: left out)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "index.lock"}


def rows_of(root: Path) -> dict[str, tuple]:
    idx = Index.open(root)
    try:
        return {k: (tuple(np.round(np.asarray(r["vector"], np.float32), 6)), r.get("label"), r.get("label_score"))
                for k, r in all_rows(idx).items()}
    finally:
        if hasattr(idx.store, "close"):
            idx.store.close()


# ------------------------------------------------------------------------------------------------
# a real `imgrag index` holds the lock: classify --write, tune, prune are refused, no row is lost
# ------------------------------------------------------------------------------------------------
PAUSED_INDEXER = r"""
import sys
import imgrag.indexer.commit as commit
from imgrag.app.cli import main

real_commit = commit.LocalCommitter.commit
state = {"paused": False}

def commit_then_pause(self):
    real_commit(self)
    if not state["paused"] and self.store.count() > 0:
        state["paused"] = True
        print("locked", flush=True)  # some rows committed, more to come, the writer lock held
        sys.stdin.readline()

commit.LocalCommitter.commit = commit_then_pause
sys.exit(main(sys.argv[1:]))
"""


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imgrag.app.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("store", STORES)
def test_writers_refused_during_a_real_index_run(store, tmp_path):
    coll, idx = tmp_path / "coll", tmp_path / "idx"
    n = 10
    tiny_collection(coll, n)
    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_INDEXER, "index", str(coll), "--index", str(idx), "--store", store,
         "--model", "imgrag-tiny-clip", "--workers", "0", "--batch-size", "2", "--commit-every", "2"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = writer.stdout.readline().strip()
        assert line == "locked", f"the indexer did not reach its first commit: {line!r} {writer.stderr.read()[-2000:]}"
        assert read_holder(idx / "index.lock") == f"pid {writer.pid} on {HOST}"
        before = rows_of(idx)
        assert 0 < len(before) < n  # mid-run: some rows committed, not all
        attempts = {
            "classify --write": ["classify", "--labels", "red,green,blue", "--write", "--index", str(idx)],
            "tune": ["tune", "--index", str(idx), "--folders", str(coll)],
            "tune --reset": ["tune", "--index", str(idx), "--reset"],
            "index (prune)": ["index", str(coll), "--index", str(idx), "--model", "imgrag-tiny-clip",
                              "--workers", "0"],
        }
        for what, argv in attempts.items():
            out = _cli(*argv)
            assert out.returncode == 3, f"{what}: exit {out.returncode}\n{out.stderr[-2000:]}"
            err = [ln for ln in out.stderr.splitlines() if ln.startswith("imgrag:")]
            assert len(err) == 1, f"{what}: {out.stderr[-2000:]}"
            assert f"pid {writer.pid} on {HOST}" in err[0] and "is being updated by another imgrag process" in err[0], \
                f"{what}: {err[0]}"
            assert rows_of(idx) == before, f"{what} changed the rows while refused"
        assert not (idx / "adapter.npz").exists()
    finally:
        writer.stdin.write("\n")
        writer.stdin.flush()
        _, err = writer.communicate(timeout=600)
    assert writer.returncode == 0, err[-3000:]
    after = rows_of(idx)
    assert len(after) == n and {k: v for k, v in after.items() if k in before} == before  # no row lost or changed
    assert all(label is None for _, label, _ in after.values())  # the refused classify wrote nothing
    # the indexer is done: the same classify --write now takes the lock and labels every row
    out = _cli("classify", "--labels", "red,green,blue", "--write", "--index", str(idx), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    labelled = rows_of(idx)
    assert len(labelled) == n and all(label in ("red", "green", "blue") for _, label, _ in labelled.values())
    assert read_holder(idx / "index.lock") == ""  # released


# ------------------------------------------------------------------------------------------------
# every writer entry point takes the lock (table-driven, both stores)
# ------------------------------------------------------------------------------------------------
def _classifier(idx):
    from imgrag.retrieval.queries.classify import ZeroShotClassifier

    return ZeroShotClassifier(idx.embedder, "red,green,blue", calibration="none")


def _adapter(idx):
    from imgrag.retrieval.tune import Adapter

    m = idx.manifest
    return Adapter(np.zeros((m.dim, m.dim), np.float32), meta={"model": m.model, "model_fingerprint": m.fingerprint,
                                                              "dim": m.dim})


def _backend(idx, tmp_path):
    from imgrag.app.web.backend import Backend, UIConfig

    return Backend(UIConfig(index_root=idx.root, thumb_dir=tmp_path / "thumbs", index_workers=0), index=idx)


def _ui_job(b, start) -> None:
    """Run a UI background job to its end; a failed job's message (what the UI shows) is raised."""
    start()
    st = b.jobs.wait(300)
    assert st.state != "running", "the UI job did not end"
    if st.state == "failed":
        raise IndexLockedError(st.message) if "is being updated" in st.message else AssertionError(st.message)


def _w_index(idx, coll, tmp_path, ctx):
    build_index(idx, [coll], IndexOptions(workers=0))


def _w_prune(idx, coll, tmp_path, ctx):
    build_index(idx, [coll], IndexOptions(workers=0, prune=True))


def _w_rebuild(idx, coll, tmp_path, ctx):
    Index.create_or_open(idx.root, FakeEmbedder(), store=idx.manifest.store, rebuild=True)


def _w_publish(idx, coll, tmp_path, ctx):
    ctx["draft"].publish()


def _w_collect(idx, coll, tmp_path, ctx):
    idx.collect_garbage()


def _w_skipped(idx, coll, tmp_path, ctx):
    idx.write_skipped([{"path": "/x.png", "reason": "test"}])


def _w_classify(idx, coll, tmp_path, ctx):
    from imgrag.retrieval.queries.classify import classify_index

    list(classify_index(idx, _classifier(idx), write=True))


def _w_tune(idx, coll, tmp_path, ctx):
    from imgrag.retrieval.tune.train import tune_index

    tune_index(idx, None)  # no supervision: only a lock taken before training can make this IndexLockedError


def _w_save_adapter(idx, coll, tmp_path, ctx):
    from imgrag.retrieval.tune import save_adapter

    save_adapter(idx, _adapter(idx))


def _w_reset_adapter(idx, coll, tmp_path, ctx):
    from imgrag.retrieval.tune import reset_adapter

    reset_adapter(idx)


def _w_store(idx, coll, tmp_path, ctx):
    with idx.writing():  # the documented guard around a series of direct store writes
        idx.store.delete([next(iter(all_rows(idx)))])


def _w_store_delete(idx, coll, tmp_path, ctx):
    idx.store.delete([next(iter(all_rows(idx)))])  # no writing(): the store takes the lock itself


def _w_store_upsert(idx, coll, tmp_path, ctx):
    idx.store.upsert(idx.store.get([next(iter(all_rows(idx)))]))


def _w_store_labels(idx, coll, tmp_path, ctx):
    idx.store.update_columns([next(iter(all_rows(idx)))], {"label": ["red"]})


def _w_store_optimize(idx, coll, tmp_path, ctx):
    idx.store.optimize()


def _w_ui_classify(idx, coll, tmp_path, ctx):
    b = _backend(idx, tmp_path)
    _ui_job(b, lambda: b.start_classify_index("red\ngreen\nblue", "a photo of {}", write=True))


def _w_ui_index(idx, coll, tmp_path, ctx):
    b = _backend(idx, tmp_path)
    _ui_job(b, lambda: b.start_indexing(str(coll)))


WRITERS = {"index": _w_index, "prune": _w_prune, "rebuild draft": _w_rebuild, "publish": _w_publish,
           "collect_garbage": _w_collect, "write_skipped": _w_skipped, "classify_index write": _w_classify,
           "tune_index": _w_tune, "save_adapter": _w_save_adapter, "reset_adapter": _w_reset_adapter,
           "Index.writing + store": _w_store, "store.delete": _w_store_delete, "store.upsert": _w_store_upsert,
           "store.update_columns": _w_store_labels, "store.optimize": _w_store_optimize, "UI classify job": _w_ui_classify, "UI index job": _w_ui_index}


@pytest.mark.parametrize("store", STORES)
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_takes_the_lock(writer, store, tmp_path):
    coll = tmp_path / "coll"
    files = tiny_collection(coll, 6)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    build_index(idx, [coll], IndexOptions(workers=0))
    from imgrag.retrieval.tune import save_adapter

    save_adapter(idx, _adapter(idx))  # something for reset_adapter to remove
    ctx = {}
    if writer == "publish":  # a rebuild's draft waiting for its switch
        ctx["draft"] = Index.create_or_open(idx.root, FakeEmbedder(), store=store, rebuild=True)
    tiny_collection(coll / "new", 2, seed=5)  # work for the indexers: two new files…
    files[0].unlink()  # …and one to prune
    idx.store.count()  # opened before the snapshot
    before, rows = files_of(idx.root), all_rows(idx)
    h = Holder(idx.root)
    try:
        with pytest.raises(IndexLockedError, match=refused_by(h.pid)):
            WRITERS[writer](idx, coll, tmp_path, ctx)
        assert files_of(idx.root) == before, f"{writer} wrote while refused"
        assert set(all_rows(idx)) == set(rows)
    finally:
        h.stop()
    assert not held_here(idx.root)  # the refused call left nothing held in this process


def test_creating_an_index_takes_the_lock(tmp_path):
    root = tmp_path / "new"
    h = Holder(root)
    try:
        with pytest.raises(IndexLockedError, match=refused_by(h.pid)):
            Index.create_or_open(root, FakeEmbedder())
        assert sorted(p.name for p in root.iterdir()) == ["index.lock"]  # no manifest, no store
    finally:
        h.stop()
    assert Index.create_or_open(root, FakeEmbedder()).store.count() == 0


# ------------------------------------------------------------------------------------------------
# re-entrancy: the holding thread may write, others may not
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("store", STORES)
def test_writing_is_reentrant_for_its_thread_only(store, tmp_path):
    from imgrag.retrieval.queries.classify import classify_index

    coll = tmp_path / "coll"
    tiny_collection(coll, 4)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    with idx.writing():
        assert held_here(idx.root) and read_holder(idx.root / "index.lock") == f"pid {os.getpid()} on {HOST}"
        rep = build_index(idx, [coll], IndexOptions(workers=0))  # nested: build_index, write_skipped, …
        assert rep.total_items == 4
        labels = [p.label for _, _, p in classify_index(idx, _classifier(idx), write=True)]
        caught: list[BaseException] = []

        def other_thread() -> None:
            try:
                list(classify_index(idx, _classifier(idx), write=True))
            except BaseException as e:  # noqa: BLE001
                caught.append(e)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(caught) == 1 and isinstance(caught[0], IndexLockedError) and "this process" in str(caught[0])
        assert held_here(idx.root)  # the nested calls gave back only their own hold
    assert not held_here(idx.root) and read_holder(idx.root / "index.lock") == ""
    assert sorted(r["label"] for r in all_rows(idx).values()) == sorted(labels)
    # a plain (non-outer) lock is not re-entrant: a library writer under it is refused
    with IndexLock(idx.root):
        with pytest.raises(IndexLockedError, match="this process"):
            build_index(idx, [coll], IndexOptions(workers=0))
    with writer_lock(idx.root, outer=True):
        build_index(idx, [coll], IndexOptions(workers=0))


@pytest.mark.parametrize("store", STORES)
def test_a_direct_store_write_takes_the_lock_for_its_call_only(store, tmp_path):
    coll = tmp_path / "coll"
    tiny_collection(coll, 3)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store=store)
    build_index(idx, [coll], IndexOptions(workers=0))
    victim = sorted(all_rows(idx))[0]
    idx.store.delete([victim])  # nobody holds the lock: taken for this call, then given back
    assert victim not in all_rows(idx) and len(all_rows(idx)) == 2
    assert not held_here(idx.root) and read_holder(idx.root / "index.lock") == ""
    h = Holder(idx.root)  # another process can take it at once
    h.stop()
