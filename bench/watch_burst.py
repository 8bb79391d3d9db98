#!/usr/bin/env python3
"""``imgrag watch`` under a burst: N small distinct images copied into a watched folder.

    python bench/watch_burst.py [--files 10000] [--store lancedb|faiss] [--max-pending 5000]

N tiny distinct PNGs (8x8 random pixels, made in a staging folder first) are copied file by file into an
existing watched folder (``inbox``: the worst case for the dirty set, since a folder copied as a whole is
marked dirty as one folder and its files' events are absorbed by it). The watcher is the library API
(:class:`imgrag.indexer.watch.Watcher`, default :class:`WatchOptions` unless given, decoding in the process
itself: ``IndexOptions(workers=0)``, so one RSS covers all the work) with the test suite's fake
embedder (tests/fakes.py: no model weights, so the figures are the watcher's and the pipeline's, not a
model's), in a child process that samples its own RSS every 0.2 s.

One warm-up image is indexed first (the pipeline's imports and threads are then in place). Reported (one
JSON line): seconds from the copy's start until the index holds all N rows, the copy's own time, the rows
exact (N + 1 distinct ids, exactly the copied paths and the warm-up), RSS before the burst, peak RSS during it
and its highest value in each 10 % of the wait, and the dirty set at work: the most files / folders it
ever held after an event (wrapped methods), times it coalesced, and the batches run. The load average is
printed with the figures (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_images(folder: Path, n: int) -> None:
    """``n`` distinct 8x8 PNGs (seeded random pixels): a few hundred bytes each, ~3 s for 10,000."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(index_dir: str, watched: str, n: int, store: str, max_pending: int | None) -> None:
    """Runs the watcher; waits for 'go' on stdin (the parent then copies), reports when all n rows are in."""
    import threading

    sys.path.insert(0, str(ROOT / "tests"))
    from fakes import FakeEmbedder
    from reliability import record_dirty_peaks

    from imgrag.indexer.pipeline import IndexOptions
    from imgrag.indexer.watch import Watcher, WatchOptions
    from imgrag.retrieval.index import Index

    index = Index.create_or_open(Path(index_dir), FakeEmbedder(), store=store)
    # workers=0: decoding in the watching process itself, so its RSS covers all the work (no worker processes)
    base = WatchOptions(index=IndexOptions(workers=0))
    opts = base if max_pending is None else WatchOptions(index=base.index, max_pending=max_pending)
    w = Watcher(index, [watched], opts)
    peak = record_dirty_peaks(w.dirty)  # the same instrument as tests/test_watch.py
    samples: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), _rss_mib()))
            stop.wait(0.2)

    w.start_thread()
    while index.store.count() < 1:  # the warm-up file: the pipeline's imports and threads are in place
        time.sleep(0.1)
    time.sleep(1.0)
    rss_before = _rss_mib()
    threading.Thread(target=sample, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.readline()  # "go": the parent starts copying now
    t0 = time.monotonic()
    while index.store.count() < n + 1:
        time.sleep(0.25)
    secs = time.monotonic() - t0
    time.sleep(1.0)  # a late duplicate would show here
    w.stop(wait=120)
    stop.set()
    ids, paths = [], set()
    for b in index.store.scan(columns=["id", "path"]):
        ids += b.column("id").to_pylist()
        paths.update(b.column("path").to_pylist())
    expected = {os.path.join(watched, "inbox", f"img{i:05d}.png") for i in range(n)}
    expected.add(os.path.join(watched, "inbox", "warmup.png"))
    during = [(t, r) for t, r in samples if t >= t0]
    tenth = max(secs / 10, 1e-9)
    timeline = [round(max((r for t, r in during if k * tenth <= t - t0 < (k + 1) * tenth), default=0.0))
                for k in range(10)]
    import resource

    print(json.dumps({
        "files": n, "store": store, "max_pending": opts.max_pending, "max_dirs": opts.max_dirs,
        "batch_files": opts.batch_files, "seconds_until_all_indexed": round(secs, 1),
        "rows": len(ids), "distinct_ids": len(set(ids)), "exact": len(ids) == len(set(ids)) == n + 1 and paths == expected,
        "rss_mib_before_burst": round(rss_before), "peak_rss_mib_during": round(max((r for _, r in during),
                                                                                     default=rss_before)),
        "peak_rss_mib_process": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_mib_peak_per_tenth_of_wait": timeline,
        "dirty_peak": {k: peak[k] for k in ("files", "dirs", "gone")}, "dirty_calls": peak["calls"],
        "coalesced": w.dirty.coalesced, "batches": w.batches, "rescans": w.rescans,
        "load_avg_1min_end": round(os.getloadavg()[0], 1)}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=10_000)
    p.add_argument("--store", choices=["lancedb", "faiss"], default="lancedb")
    p.add_argument("--max-pending", type=int, help="WatchOptions.max_pending (default: the library's)")
    p.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        idx, watched, n, store, mp = a.child
        child(idx, watched, int(n), store, None if mp == "-" else int(mp))
        return
    work = Path(tempfile.mkdtemp(prefix="imgrag-watchburst-"))
    t = time.perf_counter()
    make_images(work / "staging", a.files)
    print(f"{a.files} images made in {time.perf_counter() - t:.1f} s; load average {os.getloadavg()[0]:.1f}",
          flush=True)
    watched = work / "watched"
    (watched / "inbox").mkdir(parents=True)
    make_images(work / "warm", 1)  # indexed before the burst, so RSS "before" includes the pipeline's imports
    shutil.copy2(work / "warm" / "img00000.png", watched / "inbox" / "warmup.png")
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(work / "index"), str(watched), str(a.files),
                             a.store, str(a.max_pending) if a.max_pending else "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", "the watcher did not start"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        t = time.perf_counter()
        for f in sorted((work / "staging").iterdir()):  # a file-by-file copy, as cp or a file manager does
            shutil.copy2(f, watched / "inbox" / f.name)
        print(f"copied in {time.perf_counter() - t:.1f} s", flush=True)
        print(proc.stdout.readline().strip(), flush=True)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
