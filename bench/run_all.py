"""Run every CPU benchmark in bench/ at CI-friendly scale (see BENCHMARKS.md for run times).

Each benchmark prints its tables and appends its figures (machine, commit, command, parameters)
to bench/results/results.jsonl. Scale flags give the issue's full-size runs (see BENCHMARKS.md):

    python bench/run_all.py                  # CI scale
    python bench/run_all.py --only search_scale,latency
    python bench/run_all.py --full           # issue scale: 1M vectors, 100k-item latency, ... (hours on 2 cores)

bench/gpu_index.py runs too when CUDA is available.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = C.ROOT
PY = sys.executable
IMGRAG = str(Path(PY).with_name("imgrag"))

# name -> (CI-scale command, issue-scale command)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "indexer_throughput": ([PY, "bench/indexer_throughput.py", "--n", "320", "--naive", "24", "--skip-no-draft"],
                           [PY, "bench/indexer_throughput.py", "--n", "512", "--naive", "64"]),
    "memory": ([PY, "bench/memory.py", "--sizes", "2000,10000,20000"],
               [PY, "bench/memory.py", "--sizes", "2000,10000,20000"]),
    # the lite model (a real one) at 2,000 images; the tiny test model's first run is unrealistically fast
    "incremental": ([PY, "bench/incremental.py", "--n", "2000", "--model", "lite"],
                    [PY, "bench/incremental.py", "--n", "10000", "--model", "lite"]),
    "search_scale": ([PY, "bench/search_scale.py", "--n", "100000", "--single", "200"],
                     [PY, "bench/search_scale.py", "--n", "1000000"]),
    "latency": ([PY, "bench/latency.py", "--n", "100000", "--stores", "lancedb", "--cold-runs", "3",
                 "--queries", "100"],
                [PY, "bench/latency.py", "--n", "100000"]),
    "zeroshot-samples": ([IMGRAG, "eval", "zeroshot", "data/samples", "--model", "lite"],) * 2,
    "retrieval-samples": ([IMGRAG, "eval", "retrieval", "--images", "data/samples", "--captions",
                           "data/captions.tsv", "--model", "lite"],) * 2,
    # documents: quick = the generated figures catalogue; full adds the R manuals (apt-get download r-doc-pdf)
    "ui_load": ([PY, "bench/ui_load.py", "--users", "20", "--requests", "50"],) * 2,
    "docs_retrieval": ([PY, "bench/docs_retrieval.py", "--corpus", "figures"],
                       [PY, "bench/docs_retrieval.py"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(BENCHES))
    ap.add_argument("--full", action="store_true", help="the issue's scale (hours on 2 cores)")
    a = ap.parse_args()
    names = [s.strip() for s in a.only.split(",")] if a.only else list(BENCHES)
    bad = [n for n in names if n not in BENCHES]
    if bad:
        raise SystemExit(f"unknown benchmark(s) {bad}; known: {', '.join(BENCHES)}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    failed = []
    t_all = time.perf_counter()
    for name in names:
        cmd = BENCHES[name][1 if a.full else 0]
        print(f"\n=== {name}: {' '.join(os.path.relpath(c, ROOT) if c.startswith(str(ROOT)) else c for c in cmd)}",
              flush=True)
        t = time.perf_counter()
        if cmd[0] == IMGRAG:  # the CLI prints its own table; keep it in the results file too
            p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            print(p.stdout + (p.stderr if p.returncode else ""), flush=True)
            rc = p.returncode
            if rc == 0:
                C.record(name, {"output": p.stdout}, {"command": " ".join(cmd[1:])})
        else:
            rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        print(f"=== {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t:.0f}s", flush=True)
        if rc:
            failed.append(name)
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda and not a.only:
        print("\n=== gpu_index", flush=True)
        if subprocess.run([PY, "bench/gpu_index.py"], cwd=ROOT, env=env).returncode:
            failed.append("gpu_index")
    else:
        print("\n(gpu_index skipped: no CUDA device)" if not cuda else "")
    print(f"\nall benchmarks: {time.perf_counter() - t_all:.0f}s; figures appended to "
          f"{ROOT / 'bench' / 'results' / 'results.jsonl'}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
