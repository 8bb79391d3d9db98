"""Exact search with torch at 1M × 512 (issue 19 part 4): the FAISS store's torch path on whatever device exists.

Measures :class:`imgrag.retrieval.stores.faiss.gpu.TorchExact` — the path the FAISS store takes with
``search_device: torch…`` (and by default on CUDA when faiss has no GPU support) — on N × D L2-normalised
random float32 vectors, k = 10:

- copy: seconds to make the resident copy (host → device, in chunks);
- single queries: p50 / p99 latency of one query per call;
- batched: queries/s with 64 queries per call;
- filtered: one query with half of the rows masked out (a filter, or deleted rows);
- the same single/batched figures for faiss ``IndexFlatIP`` on the CPU, the exact reference;
- agreement: top-10 ids of the torch path equal faiss Flat's (share of the 64 batched queries).

    python bench/gpu_search.py                    # 1,000,000 × 512 on CUDA if torch sees it, else the CPU
    python bench/gpu_search.py --device cuda --precision fp16
    python bench/gpu_search.py --n 100000 --queries 20   # a quick look

One JSON line goes to stdout and to bench/results/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


class _AllLive:
    """The one thing :meth:`TorchExact.search` asks of a store state: label → live position."""

    def __init__(self, n: int, live: np.ndarray | None = None) -> None:
        self.label_pos = np.arange(n, dtype=np.int64)
        if live is not None:
            self.label_pos[~live] = -1

    def positions(self, labels: np.ndarray) -> np.ndarray:
        return self.label_pos[labels]


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for off in range(0, n, 100_000):  # bounded temporaries
        v = rng.standard_normal((min(100_000, n - off), dim), dtype=np.float32)
        out[off:off + len(v)] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def _latency(fn, queries: np.ndarray) -> dict:
    fn(queries[:1])  # warm-up (kernels, allocator)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None, :])
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": round(float(np.percentile(times, 50)), 3), "p99_ms": round(float(np.percentile(times, 99)), 3)}


def _throughput(fn, queries: np.ndarray, reps: int) -> float:
    fn(queries)
    t = time.perf_counter()
    for _ in range(reps):
        fn(queries)
    return round(reps * len(queries) / (time.perf_counter() - t), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--queries", type=int, default=50, help="single queries timed")
    ap.add_argument("--batch", type=int, default=64, help="queries per batched call")
    ap.add_argument("--device", default=None, help="torch device (default: cuda if torch sees it, else cpu)")
    ap.add_argument("--precision", choices=["fp32", "fp16"], default=None,
                    help="resident copy (default: fp32; the store's default too)")
    ap.add_argument("--no-faiss", action="store_true", help="skip the faiss Flat reference on the CPU")
    a = ap.parse_args()

    import torch

    from imgrag.retrieval.stores.faiss.gpu import TorchExact

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = a.precision or "fp32"
    xb = _vectors(a.n, a.dim, 0)
    xq = _vectors(max(a.queries, a.batch), a.dim, 1)
    res: dict = {"bench": "gpu_search", "n": a.n, "dim": a.dim, "k": a.k, "device": device, "precision": precision,
                 "torch": torch.__version__, "cores": len(os.sched_getaffinity(0)), "host": platform.node(),
                 "date": time.strftime("%Y-%m-%d %H:%M")}
    if device.startswith("cuda"):
        res["gpu"] = torch.cuda.get_device_name(torch.device(device))

    t = time.perf_counter()
    te = TorchExact(device, a.dim, precision)
    te.check_room(a.n)
    labels = np.arange(a.n, dtype=np.int64)
    step = 262_144
    for off in range(0, a.n, step):
        te.add(xb[off:off + step], labels[off:off + step])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    res["copy_s"] = round(time.perf_counter() - t, 2)
    st = _AllLive(a.n)
    half = _AllLive(a.n, np.random.default_rng(2).random(a.n) < 0.5)
    search = lambda q: te.search(st, q, a.k, None)  # noqa: E731
    res["torch_single"] = _latency(search, xq[:a.queries])
    res["torch_filtered_half"] = _latency(lambda q: te.search(half, q, a.k, None), xq[: max(5, a.queries // 5)])
    reps = 10 if device.startswith("cuda") else 2
    res["torch_batch_qps"] = _throughput(search, xq[:a.batch], reps)
    _D, got = te.search(st, xq[:a.batch], a.k, None)

    if not a.no_faiss:
        import faiss

        index = faiss.IndexFlatIP(a.dim)
        index.add(xb)
        flat = lambda q: index.search(np.ascontiguousarray(q), a.k)  # noqa: E731
        res["faiss_flat_cpu_single"] = _latency(flat, xq[: max(5, a.queries // 5)])
        res["faiss_flat_cpu_batch_qps"] = _throughput(flat, xq[:a.batch], 2)
        _D, want = flat(xq[:a.batch])
        res["top10_equal_to_flat"] = round(float(np.mean([set(g) == set(w) for g, w in zip(got, want)])), 3)
    line = json.dumps(res)
    print(line)
    out = Path(__file__).resolve().parent / "results" / "results.jsonl"
    out.parent.mkdir(exist_ok=True)
    with out.open("a") as fh:
        fh.write(line + "\n")


if __name__ == "__main__":
    main()
