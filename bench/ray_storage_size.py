"""Bytes per row of an imgrag LanceDB index and of the Ray driver's plan, for the 100M-image plan.

    python bench/ray_storage_size.py --n 20000 --dim 512 --out bench/figures/ray_storage_size.json

1. Writes ``--n`` rows (random unit vectors of ``--dim``, realistic metadata: ~50-character photo paths,
   BLAKE2b hashes, sizes, EXIF dates) into a LanceStore, compacts, and measures the table's bytes per row;
   then builds each ANN index type with imgrag's parameters and measures the index files' bytes per row.
2. Measures the driver memory per file of the Ray engine's plan (file list + the index's
   id/size/mtime column + the work list) as the RSS growth while holding them for ``--plan-n`` files.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def dir_size(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def path_of(i: int) -> str:
    return f"/data/photos/{2010 + i % 15}/{1 + i % 12:02d}/IMG_{i:08d}.jpg"


def table_and_indexes(n: int, dim: int, work: Path) -> dict:
    import numpy as np

    from imgrag.retrieval.stores.base import make_rows
    from imgrag.retrieval.stores.lance import LanceStore

    rng = np.random.default_rng(0)
    out: dict = {"n": n, "dim": dim}
    for ann in ("ivf_pq", "ivf_hnsw_sq"):
        root = work / ann
        store = LanceStore(root, dim, ann=ann, ann_min_rows=256, keep_versions_s=0)
        for off in range(0, n, 5000):
            m = min(5000, n - off)
            v = rng.standard_normal((m, dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            metas = [{"id": path_of(i), "path": path_of(i), "size": 2_000_000 + i, "mtime_ns": 1_600_000_000 * 10**9 + i,
                      "hash": f"{i:032x}", "width": 4000, "height": 3000, "taken_at": datetime(2019, 7, 1, 12, 0, i % 60),
                      "indexed_at": datetime(2026, 11, 24)} for i in range(off, off + m)]
            store.upsert(make_rows(metas, v))
        t = time.perf_counter()
        store.optimize()  # compaction + the ANN index with imgrag's parameters
        build_s = time.perf_counter() - t
        tbl = root / "images.lance"
        idx_bytes = dir_size(tbl / "_indices") if (tbl / "_indices").exists() else 0
        data_bytes = dir_size(tbl / "data")
        out[ann] = {"index_bytes_per_row": round(idx_bytes / n, 1), "table_data_bytes_per_row": round(data_bytes / n, 1),
                    "index": store.describe().get("index"), "build_s": round(build_s, 2)}
        print(ann, out[ann], flush=True)
        store.close()
    out["vector_bytes_per_row"] = 4 * dim
    return out


def plan_memory(n: int) -> dict:
    """RSS growth while the Ray engine's real plan (``plan_work``) holds its inputs and result for ``n`` files:
    an index of ``n`` rows, ``n`` listed files of which 1% changed, 1% new."""
    import pyarrow as pa

    from imgrag.indexer.ray_engine import plan_work
    from imgrag.indexer.scan import FileEntry

    gc.collect()
    r0 = rss()
    states = pa.table({"id": [path_of(i) for i in range(n)], "path": [path_of(i) for i in range(n)],
                       "size": pa.array(range(n), pa.int64()), "mtime_ns": pa.array(range(n), pa.int64())})
    r1 = rss()

    def listing():  # a generator, as the engine's listing is
        for i in range(n):
            yield FileEntry(path_of(i if i % 100 else n + i), i, i + (1 if i % 100 == 1 else 0))
    import tracemalloc

    pool = pa.default_memory_pool()
    a0 = pa.total_allocated_bytes()
    tracemalloc.start()
    t = time.perf_counter()
    plan = plan_work(states, listing(), ["/data/photos"], {})
    dt = time.perf_counter() - t
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    r2 = rss()
    return {"files": n, "index_states_arrow_bytes_per_file": round(states.nbytes / n, 1),
            "plan_arrow_retained_bytes_per_file": round((pa.total_allocated_bytes() - a0) / n, 1),
            "arrow_pool_peak_bytes_per_file": round(pool.max_memory() / n, 1) if pool.max_memory() else None,
            "plan_python_peak_bytes_per_file": round(py_peak / n, 1),
            "rss_growth_bytes_per_file": round((r2 - r0) / n, 1),
            "plan_seconds": round(dt, 2),
            "work_rows": plan.images.num_rows, "gone": len(plan.gone), "_": plan.scanned}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--plan-n", type=int, default=200000)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--plan-only", action="store_true", help="only the plan memory (keeps the other figures in --out)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imgrag-size-"))
    try:
        res = {"plan": plan_memory(args.plan_n)}
        print("plan", res["plan"], flush=True)
        if args.plan_only and args.out and args.out.exists():
            res["lancedb"] = json.loads(args.out.read_text()).get("lancedb")
        else:
            res["lancedb"] = table_and_indexes(args.n, args.dim, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    res["plan"].pop("_", None)
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
