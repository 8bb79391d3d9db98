"""GPU benchmark (run on a CUDA machine): ViT-B-32 fp16 end-to-end `imgrag index` images/s on real
JPEGs vs model-only forward throughput, and exact GPU search latency over 1M × 512 vectors.

Self-contained: generates its own JPEGs from scikit-image's bundled photos (varied crops, so hashes
differ); random-init ViT-B-32 weights (throughput does not depend on weights). Uses the FAISS store.

    IMGRAG_ALLOW_RANDOM_WEIGHTS=1 python bench/gpu_index.py --n 20000 --size 640x480 --workers 14
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

os.environ.setdefault("IMGRAG_ALLOW_RANDOM_WEIGHTS", "1")


def _sources():
    import skimage.data as d

    out = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry"):
        try:
            a = getattr(d, name)()
        except Exception:  # noqa: BLE001 - a missing sample is fine
            continue
        if a.ndim == 2:
            a = np.stack([a] * 3, axis=-1)
        out.append(a[..., :3])
    return out


def _make(args):
    i, out, w, h = args
    from PIL import Image

    srcs = _sources()
    rng = np.random.default_rng(i)
    a = srcs[i % len(srcs)]
    H, W = a.shape[:2]
    y, x = rng.integers(0, H // 4), rng.integers(0, W // 4)
    crop = Image.fromarray(a[y : y + 3 * H // 4, x : x + 3 * W // 4])
    crop.resize((w, h), Image.BILINEAR).save(Path(out) / f"img{i:06d}.jpg", quality=90)


def make_jpegs(out: Path, n: int, w: int, h: int, procs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    have = len(list(out.glob("*.jpg")))
    if have >= n:
        return
    with Pool(procs) as p:
        p.map(_make, [(i, str(out), w, h) for i in range(n)], chunksize=64)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--search-n", type=int, default=1_000_000)
    a = ap.parse_args()
    import torch

    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder
    from imgrag.retrieval.index import Index

    w, h = map(int, a.size.split("x"))
    work = Path(tempfile.mkdtemp(prefix="imgrag-gpu-"))
    t = time.perf_counter()
    make_jpegs(work / "jpegs", a.n, w, h, os.cpu_count() or 4)
    print(f"made {a.n} JPEGs {w}x{h} in {time.perf_counter() - t:.1f}s", flush=True)
    res: dict = {"gpu": torch.cuda.get_device_name(0), "cpus": os.cpu_count(), "n": a.n, "size": a.size,
                 "batch": a.batch_size, "workers": a.workers, "model": a.model, "precision": "fp16"}

    emb = OpenClipEmbedder(a.model, device="cuda", precision="fp16", batch_size=a.batch_size)
    emb.warmup()
    # model-only: preprocessed tensors already in pinned host memory, same batch and precision
    x = torch.randn(a.batch_size, 3, emb.image_size, emb.image_size).pin_memory()
    for _ in range(3):
        emb.embed_pixels(x)
    torch.cuda.synchronize()
    reps = max(10, 8192 // a.batch_size)
    t = time.perf_counter()
    for _ in range(reps):
        emb.embed_pixels(x)
    torch.cuda.synchronize()
    res["model_only_img_s"] = reps * a.batch_size / (time.perf_counter() - t)

    for draft in (True, False):
        idx = Index.create_or_open(work / f"idx-{draft}", emb, store="faiss")
        rep = build_index(idx, [work / "jpegs"], IndexOptions(batch_size=a.batch_size, workers=a.workers,
                                                               draft=draft, commit_every=8192))
        s = rep.seconds
        key = "draft" if draft else "full_decode"
        res[key] = {"e2e_img_s": rep.embedded / s["embed_total"], "total_s": s["total"],
                    "embedded": rep.embedded, **{k: round(v, 2) for k, v in s.items()}}
        print(key, json.dumps(res[key]), flush=True)
    res["ratio_e2e_over_model"] = res["draft"]["e2e_img_s"] / res["model_only_img_s"]

    # exact GPU search: 1M × 512 fp16, matmul + topk
    n, d = a.search_n, 512
    g = torch.Generator(device="cuda").manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(n, d, device="cuda", generator=g), dim=1).half()
    q = torch.nn.functional.normalize(torch.randn(1024, d, device="cuda", generator=g), dim=1).half()
    lat = []
    for i in range(200):
        torch.cuda.synchronize()
        t = time.perf_counter()
        torch.topk(db @ q[i % 1024 : i % 1024 + 1].T, 10, dim=0)
        torch.cuda.synchronize()
        lat.append(time.perf_counter() - t)
    lat = np.asarray(lat[20:]) * 1000
    t = time.perf_counter()
    for i in range(0, 1024, 64):
        torch.topk(q[i : i + 64] @ db.T, 10, dim=1)
    torch.cuda.synchronize()
    res["gpu_exact_search"] = {"n": n, "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                               "batch64_qps": 1024 / (time.perf_counter() - t)}
    print(json.dumps(res, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
