"""GPU indexing benchmark, one short prepared run: --preprocess tensor vs pil, end to end.

For each input set — 640×480 JPEGs, 12-MP JPEGs, a PNG mix (RGB and RGBA, 640×480) — and each
preprocessing path it indexes the set from scratch and reports:

- ``e2e_img_s``: images embedded ÷ the embed stage's wall time (decode + preprocess + model + commit);
- ``e2e_over_model``: that ÷ the model-only rate (preprocessed tensors already in pinned memory,
  same batch size and precision);
- ``gpu_busy``: fraction of the embed stage the GPU was busy (NVML samples every 50 ms when pynvml is
  installed; otherwise, and on the CPU, ``model_busy``: the main process's time in ``embed_pixels``);
- ``cpu_ms_per_img``: CPU time of this process and its decode workers ÷ images.

Batch size and decode workers come from :func:`imgrag.indexer.gpu_plan.plan_resources` unless given.
Self-contained: inputs are made from scikit-image's bundled photos (varied crops, so hashes differ);
random-init weights (throughput does not depend on them); FAISS store.

    IMGRAG_ALLOW_RANDOM_WEIGHTS=1 python bench/gpu_index.py                 # GPU: ViT-B-32 fp16
    python bench/gpu_index.py --smoke                                       # CPU, ~minutes: lite
    python bench/gpu_index.py --search-n 1000000                            # + exact search on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

os.environ.setdefault("IMGRAG_ALLOW_RANDOM_WEIGHTS", "1")

SETS = {  # name -> (width, height, format, count on a GPU, count with --smoke)
    "jpeg_640x480": (640, 480, "JPEG", 20000, 48),
    "jpeg_12mp": (4000, 3000, "JPEG", 2000, 8),
    "png_mix": (640, 480, "PNG", 4000, 24),
}


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
    i, out, w, h, fmt = args
    from PIL import Image

    srcs = _sources()
    rng = np.random.default_rng(i)
    a = srcs[i % len(srcs)]
    H, W = a.shape[:2]
    y, x = rng.integers(0, H // 4), rng.integers(0, W // 4)
    im = Image.fromarray(a[y : y + 3 * H // 4, x : x + 3 * W // 4]).resize((w, h), Image.BILINEAR)
    if fmt == "JPEG":
        im.save(Path(out) / f"img{i:06d}.jpg", quality=90)
    else:  # every other PNG with an alpha channel (composited on white by both paths)
        if i % 2:
            im = im.convert("RGBA")
            im.putalpha(Image.linear_gradient("L").resize((w, h)))
        im.save(Path(out) / f"img{i:06d}.png", compress_level=1)


def make_set(out: Path, n: int, w: int, h: int, fmt: str, procs: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if len(list(out.iterdir())) >= n:
        return
    with Pool(procs) as p:
        p.map(_make, [(i, str(out), w, h, fmt) for i in range(n)], chunksize=16)


class GpuSampler:
    """NVML utilisation of GPU 0 every 50 ms while running (None without pynvml or a GPU)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        self._stop = threading.Event()
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._h, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # noqa: BLE001
            self._nvml = None

    def __enter__(self):
        if self._nvml is not None:
            self._t = threading.Thread(target=self._run, daemon=True)
            self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu)

    def __exit__(self, *exc) -> None:
        self._stop.set()

    @property
    def busy(self) -> float | None:
        return float(np.mean(self.samples)) / 100 if self.samples else None


def _cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def model_only(emb, batch: int, device: str) -> float:
    import torch

    x = torch.randn(batch, 3, emb.image_size, emb.image_size)
    if device.startswith("cuda"):
        x = x.pin_memory()
    emb.embed_pixels(x)  # warm-up
    reps = 3 if not device.startswith("cuda") else max(10, 8192 // batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        emb.embed_pixels(x)  # returns numpy: synchronises
    return reps * batch / (time.perf_counter() - t)


def run_one(emb, folder: Path, work: Path, mode: str, batch: int, workers: int) -> dict:
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.index import Index

    idx = Index.create_or_open(work / f"idx-{folder.name}-{mode}", emb, store="faiss")
    c0 = _cpu_seconds()
    with GpuSampler() as gpu:
        rep = build_index(idx, [folder], IndexOptions(batch_size=batch, workers=workers, preprocess=mode,
                                                      commit_every=8192))
    s = rep.seconds
    n = max(1, rep.embedded)
    out = {"embedded": rep.embedded, "skipped": len(rep.skipped), "e2e_img_s": round(rep.embedded / s["embed_total"], 1),
           "cpu_ms_per_img": round(1000 * (_cpu_seconds() - c0) / n, 2),
           "model_busy": round(s["model"] / s["embed_total"], 3),
           "gpu_busy": None if gpu.busy is None else round(gpu.busy, 3),
           "seconds": {k: round(v, 2) for k, v in s.items()}}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sets on the CPU with the lite model (minutes)")
    ap.add_argument("--model", default=None, help="model spec (default ViT-B-32 on a GPU, lite with --smoke)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--batch-size", type=int, default=None, help="default: gpu_plan.plan_resources")
    ap.add_argument("--workers", type=int, default=None, help="default: gpu_plan.plan_resources")
    ap.add_argument("--sets", default=",".join(SETS), help="comma-separated: " + ", ".join(SETS))
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every set's image count")
    ap.add_argument("--search-n", type=int, default=0, help="also time exact GPU search over N × 512 vectors")
    ap.add_argument("--work", default=None, help="folder for inputs and indexes (kept; default a temp dir)")
    a = ap.parse_args()
    import torch

    from imgrag.indexer.gpu_plan import detect, plan_resources
    from imgrag.retrieval.device import resolve_device
    from imgrag.retrieval.embedders import load_embedder

    device = "cpu" if a.smoke else resolve_device(a.device)
    n_gpus, mem, cores = detect()
    plan = plan_resources(n_gpus if device.startswith("cuda") else 0, mem, cores)
    batch, workers = a.batch_size or plan.batch_size, a.workers if a.workers is not None else plan.workers
    model = a.model or ("lite" if a.smoke else "ViT-B-32")
    precision = "fp32" if device == "cpu" else a.precision
    emb = load_embedder(model, device=device, precision=precision, batch_size=batch)
    emb.image_transform()  # load weights before timing
    res: dict = {"device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                 "gpus": n_gpus, "cores": cores, "model": model, "precision": precision, "batch": batch,
                 "workers": workers, "plan": vars(plan), "smoke": a.smoke,
                 "model_only_img_s": round(model_only(emb, batch, device), 1), "sets": {}}
    print(json.dumps({k: v for k, v in res.items() if k != "sets"}), flush=True)
    work = Path(a.work or tempfile.mkdtemp(prefix="imgrag-gpu-"))
    for name in a.sets.split(","):
        w, h, fmt, n_gpu, n_smoke = SETS[name]
        n = max(2, int((n_smoke if a.smoke else n_gpu) * a.scale))
        t = time.perf_counter()
        make_set(work / name, n, w, h, fmt, max(1, cores))
        print(f"made {n} {name} in {time.perf_counter() - t:.1f}s", flush=True)
        row = {}
        for mode in ("pil", "tensor"):
            r = run_one(emb, work / name, work, mode, batch, workers)
            r["e2e_over_model"] = round(r["e2e_img_s"] / res["model_only_img_s"], 3)
            row[mode] = r
            print(name, mode, json.dumps(r), flush=True)
        row["tensor_over_pil"] = round(row["tensor"]["e2e_img_s"] / row["pil"]["e2e_img_s"], 2)
        res["sets"][name] = row
    if a.search_n and device.startswith("cuda"):
        res["gpu_exact_search"] = exact_search(a.search_n)
    print(json.dumps(res, indent=2))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_index.json").write_text(json.dumps(res, indent=2))
    return 0


def exact_search(n: int, d: int = 512) -> dict:
    """Exact top-10 over n × d fp16 vectors on the GPU: matmul + topk, one query and batches of 64."""
    import torch

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
    ms = np.asarray(lat[20:]) * 1000
    t = time.perf_counter()
    for i in range(0, 1024, 64):
        torch.topk(q[i : i + 64] @ db.T, 10, dim=1)
    torch.cuda.synchronize()
    return {"n": n, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "batch64_qps": 1024 / (time.perf_counter() - t)}


if __name__ == "__main__":
    sys.exit(main())
