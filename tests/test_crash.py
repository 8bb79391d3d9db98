"""Crash safety: SIGKILL the indexer at random moments, locks, atomic and validated store files.

The kill test runs the real pipeline (scan, decode, embed with the fake embedder, chunked commits,
prune, optimize) in child processes forked from a server that imported everything once
(``tests/reliability.py serve``), kills them with SIGKILL after a seeded random delay spread over a
whole clean run, reruns to completion, and compares the result with a clean run row by row.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgrag.indexer.lock import IndexLock, read_holder
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.errors import CorruptIndexError, IndexLockedError
from imgrag.retrieval.index import Index

from fakes import FakeEmbedder
from reliability import all_rows, tiny_collection

TESTS = Path(__file__).resolve().parent
KILLS = 50  # kill moments per store
COMMIT_EVERY, BATCH = 3, 3


class ForkServer:
    """Drives ``reliability.py serve``: each :meth:`start` forks one indexer run."""

    def __init__(self, env: dict | None = None) -> None:
        self.p = subprocess.Popen([sys.executable, str(TESTS / "reliability.py"), "serve"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
                                  env={**os.environ, **(env or {})})
        assert self._line() == "ready"

    def _line(self) -> str:
        line = self.p.stdout.readline()
        if not line:
            raise AssertionError("fork server died")
        return line.strip()

    def start(self, index: Path, store: str, coll: Path, workers: int = 0) -> int:
        self.p.stdin.write(f"{index} {store} {coll} {COMMIT_EVERY} {BATCH} {workers}\n")
        self.p.stdin.flush()
        m = re.fullmatch(r"pid (\d+)", self._line())
        assert m
        return int(m.group(1))

    def wait(self, pid: int) -> int:
        m = re.fullmatch(rf"exit {pid} (-?\d+)", self._line())
        assert m
        return int(m.group(1))

    def run(self, index: Path, store: str, coll: Path, workers: int = 0) -> int:
        return self.wait(self.start(index, store, coll, workers))

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(30)
        self.p.stdout.close()


def make_corpus(root: Path) -> Path:
    coll = root / "coll"
    paths = tiny_collection(coll, 30, seed=5)
    # content duplicates (vector reuse by hash) and a bad file (skip record), so kills hit those paths too
    (coll / "d0" / "dup_a.png").write_bytes(paths[1].read_bytes())
    (coll / "d6" / "dup_b.png").write_bytes(paths[1].read_bytes())
    (coll / "d3" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return coll


def snapshot(index_dir: Path) -> tuple[dict[str, dict], list[dict]]:
    idx = Index.open(index_dir, embedder=FakeEmbedder())
    rows = all_rows(idx)  # asserts no duplicate ids
    skipped = sorted(idx.skipped(), key=lambda s: s["path"])
    idx.store.close() if hasattr(idx.store, "close") else None
    return rows, skipped


def assert_same_index(got: tuple, want: tuple, what: str) -> None:
    rows, skipped = got
    exp_rows, exp_skipped = want
    assert set(rows) == set(exp_rows), f"{what}: missing {set(exp_rows) - set(rows)}, extra {set(rows) - set(exp_rows)}"
    for k, e in exp_rows.items():
        r = rows[k]
        np.testing.assert_array_equal(np.asarray(r["vector"], np.float32), np.asarray(e["vector"], np.float32),
                                      err_msg=f"{what}: vector of {k}")
        for c in ("path", "size", "mtime_ns", "hash", "width", "height"):
            assert r[c] == e[c], f"{what}: {c} of {k}: {r[c]} != {e[c]}"
    assert [(s["path"], s["reason"]) for s in skipped] == [(s["path"], s["reason"]) for s in exp_skipped], what


@pytest.fixture(scope="module")
def server():
    s = ForkServer()
    yield s
    s.close()


@pytest.mark.slow
@pytest.mark.parametrize("store", ["lancedb", "faiss"])
def test_sigkill_at_random_moments_then_rerun_equals_clean(store, tmp_path, server):
    coll = make_corpus(tmp_path)
    durations = []
    for c in range(3):  # the shortest of three clean runs spans the kill moments (a loaded machine varies)
        t0 = time.perf_counter()
        assert server.run(tmp_path / f"clean{c}", store, coll) == 0
        durations.append(time.perf_counter() - t0)
    clean_s = min(durations)
    clean = snapshot(tmp_path / "clean0")
    assert len(clean[0]) == 32 and len(clean[1]) == 1
    for c in (1, 2):  # clean runs are deterministic
        assert_same_index(snapshot(tmp_path / f"clean{c}"), clean, f"clean run {c}")

    rng = np.random.default_rng(1234 if store == "lancedb" else 4321)
    landed, trials, moments = 0, 0, []
    while landed < KILLS:
        trials += 1
        assert trials <= 3 * KILLS, f"only {landed} of {trials} kills landed before the run finished"
        d = tmp_path / f"t{trials:03d}"
        # a third of the trials kill twice (the second kill lands in a resumed run);
        # every fifth uses a decode worker process (orphaned by the kill; must not keep the lock)
        for k in range(2 if trials % 3 == 0 else 1):
            workers = 1 if trials % 5 == 0 else 0
            delay = float(rng.uniform(0.0, clean_s))
            pid = server.start(d, store, coll, workers)
            time.sleep(delay)  # the kill moment: the input under test, not a wait for something
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            code = server.wait(pid)
            if code == -signal.SIGKILL:
                landed += 1
                moments.append(delay / clean_s)
            else:
                assert code == 0, f"indexer failed (exit {code}) after an earlier kill"
        assert server.run(d, store, coll) == 0, f"trial {trials}: rerun after kill failed"
        assert_same_index(snapshot(d), clean, f"trial {trials}")
    # the kill moments covered the whole run, start to end
    assert min(moments) < 0.15 and max(moments) > 0.85
    print(f"\n{store}: {landed} SIGKILLs landed in {trials} trials; clean run {clean_s:.2f}s")


@pytest.mark.slow
def test_kill_harness_catches_a_non_atomic_writer(tmp_path, server):
    """The same harness against a deliberately broken writer (FAISS manifest written in place, not
    temp + rename): some kill must leave an index the rerun cannot open or that differs from clean."""
    coll = make_corpus(tmp_path)
    assert server.run(tmp_path / "clean", "faiss", coll) == 0
    clean = snapshot(tmp_path / "clean")
    bad = ForkServer(env={"IMGRAG_TEST_SABOTAGE": "torn_manifest"})
    rng = np.random.default_rng(7)
    caught = None
    try:
        for trial in range(40):
            d = tmp_path / f"t{trial}"
            pid = bad.start(d, "faiss", coll)
            time.sleep(float(rng.uniform(0.05, 0.6)))  # the kill moment (input, not a wait)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            bad.wait(pid)
            if bad.run(d, "faiss", coll) != 0:
                caught = f"trial {trial}: rerun failed"
                break
            try:
                assert_same_index(snapshot(d), clean, f"trial {trial}")
            except (AssertionError, CorruptIndexError) as e:
                caught = f"trial {trial}: {str(e)[:200]}"
                break
    finally:
        bad.close()
    assert caught is not None, "40 kills of a non-atomic writer all went unnoticed: the harness is blind"
    print(f"\nnon-atomic writer caught: {caught}")


# ------------------------------------------------------------------------------------------------
# one writer per index
# ------------------------------------------------------------------------------------------------
HOLDER = r"""
import os, sys, time
sys.path.insert(0, {tests!r})
from imgrag.indexer.lock import IndexLock
lock = IndexLock({root!r}).acquire()
if {fork_worker}:
    if os.fork() == 0:  # like a DataLoader decode worker: a forked child of the lock holder
        sys.stdin.read(); os._exit(0)
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test kills us (or, if the test dies, until its end of the pipe closes)
"""


def _holder(root: Path, fork_worker: bool = False) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER.format(tests=str(TESTS), root=str(root), fork_worker=fork_worker)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_second_indexer_refused_with_clear_message(tmp_path):
    coll = tmp_path / "c"
    tiny_collection(coll, 3)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    p = _holder(idx.root)
    try:
        with pytest.raises(IndexLockedError) as ei:
            build_index(idx, [coll], IndexOptions(workers=0))
        msg = str(ei.value)
        assert msg == (f"index {idx.root} is being updated by another imgrag process (pid {p.pid} on "
                       f"{os.uname().nodename}); wait for it to finish or stop it")
        assert idx.store.count() == 0  # refused before writing anything
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    # the holder is gone: the lock is free again
    rep = build_index(idx, [coll], IndexOptions(workers=0))
    assert rep.total_items == 3


def test_lock_in_same_process_other_thread_refused_same_thread_reentrant(tmp_path):
    import threading

    with IndexLock(tmp_path):  # a plain lock is not re-entrant
        with pytest.raises(IndexLockedError, match="this process"):
            IndexLock(tmp_path).acquire()
    with IndexLock(tmp_path, outer=True):
        caught = []
        t = threading.Thread(target=lambda: caught.append(pytest.raises(IndexLockedError, IndexLock(tmp_path).acquire)))
        t.start()
        t.join()
        assert caught and "this process" in str(caught[0].value)
        with IndexLock(tmp_path):  # the holding thread again (the CLI holds it around build_index)
            pass
        assert read_holder(tmp_path / "index.lock") == f"pid {os.getpid()} on {os.uname().nodename}"  # still held
        t = threading.Thread(target=lambda: caught.append(pytest.raises(IndexLockedError, IndexLock(tmp_path).acquire)))
        t.start()
        t.join()
        assert len(caught) == 2
    with IndexLock(tmp_path):  # released properly
        pass
    assert read_holder(tmp_path / "index.lock") == ""


@pytest.mark.parametrize("fork_worker", [False, True])
def test_stale_lock_from_dead_process_is_cleared(tmp_path, fork_worker):
    """SIGKILL the holder: its pid stays written in index.lock, but the next writer gets the lock at
    once and reports the stale holder, even while a forked child of the dead holder (a decode
    worker) is still alive."""
    p = _holder(tmp_path, fork_worker)
    dead = p.pid
    p.kill()
    p.wait()
    p.stdout.close()
    try:
        assert read_holder(tmp_path / "index.lock") == f"pid {dead} on {os.uname().nodename}"
        lock = IndexLock(tmp_path).acquire()
        try:
            assert lock.cleared_stale == dead
            assert read_holder(tmp_path / "index.lock") == f"pid {os.getpid()} on {os.uname().nodename}"
        finally:
            lock.release()
    finally:
        try:
            os.killpg(dead, signal.SIGKILL)  # the orphaned "worker" (same session as its dead parent)
        except ProcessLookupError:
            pass
    assert read_holder(tmp_path / "index.lock") == ""  # a clean release leaves no holder behind


def test_cli_second_indexer_exit_code_and_one_line(tmp_path):
    coll = tmp_path / "c"
    tiny_collection(coll, 2)
    idx_dir = tmp_path / "idx"
    idx_dir.mkdir()
    p = _holder(idx_dir)
    try:
        out = subprocess.run([sys.executable, "-m", "imgrag.app.cli", "index", str(coll), "--index", str(idx_dir),
                              "--model", "imgrag-tiny-clip", "--workers", "0"],
                             capture_output=True, text=True, timeout=300)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    assert out.returncode == 3, out.stderr[-2000:]
    err = [ln for ln in out.stderr.strip().splitlines() if not ln.startswith("WARNING root: No pretrained weights")]
    assert len(err) == 1 and err[0].startswith("imgrag: error: index ") and "another imgrag process" in err[0]
    assert f"pid {p.pid}" in err[0], out.stderr
    assert "Traceback" not in out.stderr


def test_cli_rebuild_refused_while_another_indexer_runs(tmp_path):
    """``--rebuild`` must not wipe an index another process is writing: the lock comes first."""
    coll = tmp_path / "c"
    tiny_collection(coll, 3)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="lancedb")
    build_index(idx, [coll], IndexOptions(workers=0))
    before = sorted(p.relative_to(idx.root) for p in idx.root.rglob("*"))
    p = _holder(idx.root)
    try:
        out = subprocess.run([sys.executable, "-m", "imgrag.app.cli", "index", str(coll), "--index", str(idx.root),
                              "--model", "imgrag-tiny-clip", "--rebuild", "--workers", "0"],
                             capture_output=True, text=True, timeout=300)
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    assert out.returncode == 3 and "another imgrag process" in out.stderr, out.stderr[-2000:]
    assert "No pretrained weights" not in out.stderr  # refused before loading a model
    assert sorted(p.relative_to(idx.root) for p in idx.root.rglob("*")) == before
    assert Index.open(idx.root, embedder=FakeEmbedder()).store.count() == 3


# ------------------------------------------------------------------------------------------------
# FAISS files: atomic writes; damaged files give CorruptIndexError, never a crash
# ------------------------------------------------------------------------------------------------
def test_faiss_files_only_appear_by_rename(tmp_path, monkeypatch):
    """Every file the FAISS store writes is written under a temp name and renamed into place."""
    coll = tmp_path / "c"
    tiny_collection(coll, 12)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder(), store="faiss")
    root = str(tmp_path / "idx")
    writes: list[str] = []
    renames: list[tuple[str, str]] = []
    real_open, real_replace, real_rename = builtins.open, os.replace, os.rename

    def spy_open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file).startswith(root) and any(c in mode for c in "wax+"):
            writes.append(os.fspath(file))
        return real_open(file, mode, *a, **kw)

    def spy_replace(src, dst, *a, **kw):
        renames.append((os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "rename", lambda s, d, *a, **kw: (renames.append((os.fspath(s), os.fspath(d))),
                                                               real_rename(s, d, *a, **kw))[1])
    build_index(idx, [coll], IndexOptions(batch_size=4, workers=0, commit_every=4))
    (coll / "d0" / "im00000.jpg").unlink()
    build_index(idx, [coll], IndexOptions(batch_size=4, workers=0, commit_every=4))  # a delete commit
    idx.store.optimize()
    monkeypatch.undo()
    assert writes, "spy saw no writes"
    for w in writes:
        assert re.match(r"^\..+\.tmp-\d+", os.path.basename(w)), f"{w} written in place"
    renamed = {s for s, _ in renames}
    assert set(writes) <= renamed
    final = set(os.listdir(tmp_path / "idx" / "faiss"))
    assert {os.path.basename(d) for s, d in renames if d.startswith(root + "/faiss")} & final >= {"manifest.json"}
    assert not [n for n in final if ".tmp-" in n]


DAMAGED_CHILD = r"""
import sys
sys.path.insert(0, {tests!r})
import numpy as np
from fakes import FakeEmbedder
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index
try:
    idx = Index.open({root!r}, embedder=FakeEmbedder())
    idx.store.search(np.ones((1, 8), np.float32) / 8 ** 0.5, 3)
    print("OPENED", idx.store.count())
except ImgragError as e:
    print(type(e).__name__ + ": " + str(e))
"""


def _damage(root: Path, how: str) -> None:
    fdir = root / "faiss"
    man = json.loads((fdir / "manifest.json").read_text())
    seg = fdir / man["entries"][0]["file"]
    index_file = fdir / man["index"]["file"]
    if how == "empty_manifest":
        (fdir / "manifest.json").write_bytes(b"")
    elif how == "half_manifest":
        raw = (fdir / "manifest.json").read_bytes()
        (fdir / "manifest.json").write_bytes(raw[: len(raw) // 2])
    elif how == "empty_index":
        index_file.write_bytes(b"")
    elif how == "index_header_only":
        index_file.write_bytes(index_file.read_bytes()[:36])
    elif how == "index_payload_flipped":
        b = bytearray(index_file.read_bytes())
        b[len(b) // 2] ^= 0xFF
        index_file.write_bytes(bytes(b))
    elif how == "foreign_payload_with_our_magic":  # our magic, then a faiss index that is not ours
        import faiss
        payload = faiss.serialize_index(faiss.IndexFlatL2(3))
        index_file.write_bytes(b"IMGRAGFX" + payload.tobytes())
    elif how == "empty_segment":
        seg.write_bytes(b"")
    elif how == "png_as_segment":
        Image.new("RGB", (8, 8)).save(seg, "PNG")
    elif how == "segment_is_directory":
        seg.unlink()
        seg.mkdir()
    elif how == "imgrag_manifest_unreadable":
        (root / "imgrag.json").write_bytes(b"\x00" * 10)
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["empty_manifest", "half_manifest", "empty_index", "index_header_only",
                                 "index_payload_flipped", "foreign_payload_with_our_magic", "empty_segment",
                                 "png_as_segment", "segment_is_directory", "imgrag_manifest_unreadable"])
def test_damaged_faiss_index_gives_clear_error_in_a_fresh_process(tmp_path, how):
    """Opened by a fresh process (so a native crash would show as a signal, not take pytest down)."""
    coll = tmp_path / "c"
    tiny_collection(coll, 9)
    root = tmp_path / "idx"
    idx = Index.create_or_open(root, FakeEmbedder(), store="faiss")
    build_index(idx, [coll], IndexOptions(batch_size=3, workers=0, commit_every=3))
    idx.store.close()
    _damage(root, how)
    out = subprocess.run([sys.executable, "-c", DAMAGED_CHILD.format(tests=str(TESTS), root=str(root))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"exit {out.returncode} (signal?): {out.stderr[-2000:]}"
    line = out.stdout.strip()
    assert line.startswith("CorruptIndexError: "), line + out.stderr[-2000:]
    assert "\n" not in line and "rebuild" in line


def _damage_lance(root: Path, how: str) -> None:
    t = root / "lancedb" / "images.lance"
    data = sorted((t / "data").glob("*.lance"))
    newest = sorted((t / "_versions").glob("*.manifest"))[0]  # names count down from u64::MAX
    if how == "truncated_data":
        for f in data:
            with open(f, "r+b") as fh:
                fh.truncate(f.stat().st_size // 2)
    elif how == "random_data":
        rng = np.random.default_rng(0)
        for f in data:
            f.write_bytes(rng.bytes(f.stat().st_size))
    elif how == "missing_data":
        for f in data:
            f.unlink()
    elif how == "truncated_manifest":
        with open(newest, "r+b") as fh:
            fh.truncate(newest.stat().st_size // 2)
    elif how == "empty_manifest":
        newest.write_bytes(b"")
    elif how == "versions_gone":
        import shutil

        shutil.rmtree(t / "_versions")
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["truncated_data", "random_data", "missing_data", "truncated_manifest",
                                 "empty_manifest", "versions_gone"])
def test_damaged_lancedb_index_gives_clear_error_in_a_fresh_process(tmp_path, how):
    """LanceDB files damaged behind its back: a one-line CorruptIndexError, never a crash, and never a
    silently empty index (a table whose versions are gone is not recreated over its data)."""
    coll = tmp_path / "c"
    tiny_collection(coll, 9)
    root = tmp_path / "idx"
    idx = Index.create_or_open(root, FakeEmbedder(), store="lancedb")
    build_index(idx, [coll], IndexOptions(batch_size=3, workers=0, commit_every=3))
    _damage_lance(root, how)
    out = subprocess.run([sys.executable, "-c", DAMAGED_CHILD.format(tests=str(TESTS), root=str(root))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"exit {out.returncode} (signal?): {out.stderr[-2000:]}"
    line = out.stdout.strip()
    assert line.startswith("CorruptIndexError: "), line + out.stderr[-2000:]
    assert "\n" not in line and "--rebuild" in line


# --rebuild (built beside the old index, switched atomically): tests/test_rebuild.py
