"""Run the benchmarks that exist in bench/ at CI-friendly scale; figures go to bench/results/results.jsonl.

Benchmarks still to be written (see BENCHMARKS.md, "Not measured yet") are listed and skipped.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "results.jsonl"
PY = sys.executable
IMGRAG = str(Path(PY).with_name("imgrag"))


def record(name: str, cmd: list[str], output: str, seconds: float) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    with RESULTS.open("a") as f:
        f.write(json.dumps({"name": name, "cmd": " ".join(cmd), "seconds": round(seconds, 2), "commit": commit,
                            "machine": f"{platform.machine()} {os.cpu_count()} cores", "at": time.strftime("%FT%T"),
                            "output": output}) + "\n")


def run(name: str, cmd: list[str]) -> None:
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    dt = time.perf_counter() - t
    print(p.stdout + (p.stderr if p.returncode else ""))
    record(name, cmd, p.stdout, dt)


def main() -> int:
    run("zeroshot-samples", [IMGRAG, "eval", "zeroshot", "data/samples", "--model", "lite"])
    run("retrieval-samples", [IMGRAG, "eval", "retrieval", "--images", "data/samples", "--captions",
                              "data/captions.tsv", "--model", "lite"])
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if cuda:
        run("gpu-index", [PY, "bench/gpu_index.py"])
    else:
        print("\n(gpu-index skipped: no CUDA device)")
    for missing in ("indexer_throughput", "memory", "search_scale", "incremental", "latency"):
        if (ROOT / "bench" / f"{missing}.py").exists():
            run(missing, [PY, f"bench/{missing}.py"])
        else:
            print(f"({missing}: not written yet, see BENCHMARKS.md)")
    print(f"\nfigures appended to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
