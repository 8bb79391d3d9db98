"""Ray engine throughput per worker and scaling from 1 to N embedding actors, on this machine.

    python bench/ray_scale.py --n 256 --workers 1 2 --model ViT-B-32 --out bench/figures/ray_cpu_scale.json

Builds ``--n`` distinct 640×480 JPEGs from data/samples (random crops, so no two files share a hash),
starts one local Ray cluster (``--ray-cpus`` logical CPUs, default 2 × cores so decode tasks can run
beside the actors), then for each worker count indexes them into a fresh index with
``build_index_ray`` (one torch thread per actor) and times the whole call: plan, actor start and model
load, decode, embed, fragment writes, commits and the final optimize. For reference it also times the
local engine on the same files and the model alone (one thread, batches of ``--batch-size``).
The ViT-B-32 weights are random (``IMGRAG_ALLOW_RANDOM_WEIGHTS``); throughput does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("IMGRAG_ALLOW_RANDOM_WEIGHTS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_images(out: Path, n: int, seed: int = 0) -> list[Path]:
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    have = sorted(out.glob("*.jpg"))
    if len(have) >= n:
        return have[:n]
    samples = sorted(p for p in (ROOT / "data" / "samples").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        img = Image.open(samples[i % len(samples)]).convert("RGB")
        w, h = img.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        p = out / f"img{i:05d}.jpg"
        img.crop((x, y, x + cw, y + ch)).resize((640, 480)).save(p, "JPEG", quality=90)
        paths.append(p)
    return paths


def model_only(spec: str, batch: int, threads: int, reps: int = 3) -> float:
    import torch

    from imgrag.retrieval.embedders import load_embedder

    torch.set_num_threads(threads)
    emb = load_embedder(spec, device="cpu", precision="fp32", batch_size=batch)
    emb.image_transform()
    x = torch.randn(batch, 3, emb.image_size, emb.image_size)
    emb.embed_pixels(x)  # warm-up
    t = time.perf_counter()
    for _ in range(reps):
        emb.embed_pixels(x)
    return reps * batch / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--ray-cpus", type=int, default=2 * (os.cpu_count() or 2))
    ap.add_argument("--no-local", action="store_true", help="skip the local-engine reference run")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    import ray

    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.indexer.ray_engine import RayOptions, build_index_ray
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.index import Index

    imgs = make_images(ROOT / "bench" / ".cache" / "ray_scale", args.n)
    src = Path(tempfile.mkdtemp(prefix="imgrag-ray-src-"))
    for p in imgs[: args.n]:
        os.symlink(p, src / p.name)
    res: dict = {"n": args.n, "model": args.model, "batch_size": args.batch_size, "cores": os.cpu_count(),
                 "ray_logical_cpus": args.ray_cpus, "machine": f"{platform.machine()} {platform.processor()}",
                 "python": platform.python_version(), "loadavg_start": os.getloadavg(), "runs": []}
    res["model_only_img_s_1thread"] = round(model_only(args.model, args.batch_size, 1), 2)
    print(f"model only, 1 thread: {res['model_only_img_s_1thread']} img/s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="imgrag-ray-bench-"))
    try:
        if not args.no_local:
            idx = Index.create_or_open(work / "local", load_embedder(args.model, device="cpu", precision="fp32"))
            t = time.perf_counter()
            rep = build_index(idx, [src], IndexOptions(batch_size=args.batch_size, workers=1))
            dt = time.perf_counter() - t
            res["local_engine"] = {"seconds": round(dt, 2), "img_s": round(rep.embedded / dt, 2), "decode_workers": 1}
            print(f"local engine: {rep.embedded} images in {dt:.1f}s = {rep.embedded / dt:.2f} img/s", flush=True)
        t = time.perf_counter()
        env = {k: os.environ[k] for k in ("IMGRAG_ALLOW_RANDOM_WEIGHTS", "HF_HUB_OFFLINE", "IMGRAG_MODEL_CONFIGS")
               if k in os.environ}
        ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})
        res["ray_init_s"] = round(time.perf_counter() - t, 2)
        for w in args.workers:
            idx = Index.create_or_open(work / f"ray{w}", load_embedder(args.model, device="cpu", precision="fp32"))
            opts = RayOptions(actors=w, cpus_per_actor=1, cpus_per_decode_task=1, batch_size=args.batch_size,
                              rows_per_fragment=args.batch_size, commit_every=4096, device="cpu", precision="fp32")
            t = time.perf_counter()
            rep = build_index_ray(idx, [src], opts)
            dt = time.perf_counter() - t
            busy = rep.seconds.get("decode", 0.0) + rep.seconds.get("model", 0.0)  # summed over workers
            run = {"workers": w, "seconds": round(dt, 2), "img_s": round(rep.embedded / dt, 2),
                   "worker_busy_s": round(busy, 2),
                   "img_s_per_busy_worker": round(rep.embedded / busy, 2) if busy else None,
                   "stage_s": {k: round(v, 2) for k, v in rep.seconds.items()},
                   "embedded": rep.embedded, "loadavg_after": os.getloadavg()}
            res["runs"].append(run)
            print(json.dumps(run), flush=True)
        if len(res["runs"]) >= 2:
            base = res["runs"][0]["img_s"]
            res["speedup"] = {str(r["workers"]): round(r["img_s"] / base, 2) for r in res["runs"]}

    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(src, ignore_errors=True)
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
