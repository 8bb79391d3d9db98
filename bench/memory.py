"""Peak memory of `imgrag index` at 2k, 10k and 20k images: it should stay flat with collection size.

Each size runs in a fresh process (``--child``) that indexes the first N of a cached set of small
JPEGs (640×480, real photos with varied crop/flip/exposure, q90) into a new index, and reports:

- ``peak RSS``: the kernel's high-water mark (VmHWM) of the indexing process itself;
- ``peak tree PSS``: the largest sum of proportional set sizes over the process and its decode
  workers, sampled every 0.1 s (PSS splits shared pages between processes, so the sum is honest);
- the largest decode worker's peak RSS (``getrusage(RUSAGE_CHILDREN)``).

The default model is a tiny random-init open_clip config (tests/model_configs) so that decoding and
the store, not the model, dominate; ``--model lite`` uses the offline model (much slower).

    python bench/memory.py                          # 2000,10000,20000 images, tiny model, LanceDB
    python bench/memory.py --sizes 2000,20000,50000 --store faiss
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

TINY = "imgrag-tiny-clip"
PER_DIR = 1000


def child(a) -> int:
    os.environ.setdefault("IMGRAG_MODEL_CONFIGS", str(C.ROOT / "tests" / "model_configs"))
    C.ensure_imgrag_importable()
    base_rss = C.rss_mib()
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.index import Index

    dirs = [Path(a.images) / f"d{i:03d}" for i in range((a.n + PER_DIR - 1) // PER_DIR)]
    emb = load_embedder(a.model, device="cpu", precision="fp32", batch_size=a.batch_size)
    emb.warmup()
    loaded_rss = C.rss_mib()
    idx = Index.create_or_open(a.index, emb, store=a.store)
    t = time.perf_counter()
    with C.MemorySampler(interval=0.1) as ms:
        rep = build_index(idx, [str(d) for d in dirs], IndexOptions(batch_size=a.batch_size, workers=a.workers))
    wall = time.perf_counter() - t
    out = {"n": a.n, "embedded": rep.embedded, "items": rep.total_items, "wall_s": wall,
           "img_s": rep.embedded / wall if wall else 0.0, "seconds": {k: round(v, 3) for k, v in rep.seconds.items()},
           "rss_after_imports_mib": base_rss, "rss_model_loaded_mib": loaded_rss,
           "peak_rss_mib": C.peak_rss_mib(), "rss_end_mib": C.rss_mib(), "peak_tree_pss_mib": ms.peak_tree_pss,
           "sampled_peak_rss_mib": ms.peak_rss, "workers_seen": ms.peak_children,
           "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
           "disk_mb": idx.store.disk_size() / 1e6}
    print("RESULT " + json.dumps(out), flush=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="2000,10000,20000", help="collection sizes (default 2000,10000,20000)")
    ap.add_argument("--model", default=TINY, help=f"model spec (default {TINY}; 'lite' for the offline model)")
    ap.add_argument("--store", default="lancedb", choices=["lancedb", "faiss"])
    ap.add_argument("--size", default="640x480", help="JPEG size (default 640x480)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--images", help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)

    sizes = [int(s) for s in a.sizes.split(",")]
    w, h = map(int, a.size.lower().split("x"))
    images = C.CACHE / f"photos-{w}x{h}"
    C.make_jpegs(images, max(sizes), w, h, per_dir=PER_DIR)
    work = Path(tempfile.mkdtemp(prefix="imgrag-bench-mem-"))
    res = []
    for n in sizes:
        if n % PER_DIR:
            raise SystemExit(f"sizes must be multiples of {PER_DIR}")
        idx = work / f"idx-{n}"
        cmd = [sys.executable, __file__, "--child", "--n", str(n), "--images", str(images), "--index", str(idx),
               "--model", a.model, "--store", a.store, "--batch-size", str(a.batch_size)]
        if a.workers is not None:
            cmd += ["--workers", str(a.workers)]
        C.log(f"indexing {n} images ({a.model}, {a.store}) in a fresh process ...")
        p = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not line:
            print(p.stdout[-3000:], p.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"child for n={n} failed ({p.returncode})")
        r = json.loads(line[-1][len("RESULT "):])
        res.append(r)
        C.log(f"n={n}: peak RSS {r['peak_rss_mib']:.0f} MiB, tree PSS {r['peak_tree_pss_mib']:.0f} MiB, "
              f"{r['img_s']:.0f} img/s")
        shutil.rmtree(idx, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    base = res[0]
    rows = [[r["n"], r["peak_rss_mib"], r["peak_rss_mib"] - base["peak_rss_mib"], r["peak_tree_pss_mib"],
             r["worker_peak_rss_mib"], r["rss_model_loaded_mib"], r["wall_s"], r["img_s"], r["seconds"].get("write", 0),
             r["disk_mb"]] for r in res]
    C.table(["images", "peak RSS MiB (indexing process)", "Δ vs smallest", "peak PSS MiB (process + workers)",
             "worker peak RSS MiB", "RSS after model load MiB", "wall s", "img/s", "write s", "index MB on disk"],
            rows, title=f"Peak memory while indexing ({a.model}, {a.store}, {w}×{h} JPEGs, batch {a.batch_size})")
    growth = (res[-1]["peak_rss_mib"] - base["peak_rss_mib"]) / max(1, (res[-1]["n"] - base["n"])) * 1024 * 1000
    print(f"\nRSS growth: {growth:.1f} KiB per 1000 images between {base['n']} and {res[-1]['n']} images")
    C.record("memory", res, {"sizes": sizes, "model": a.model, "store": a.store, "size": a.size,
                             "batch": a.batch_size, "growth_kib_per_1000": growth})
    return 0


if __name__ == "__main__":
    sys.exit(main())
