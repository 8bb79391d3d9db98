"""Indexer throughput on camera-size photos: end-to-end `imgrag index` vs model-only vs a naive loop.

For each model (default: the offline ``lite`` model and a random-init ``ViT-B-32``, at ``--precision auto``
as ``imgrag index`` runs them: bf16 on CPUs with native bf16, else fp32):

- **model-only**: ``embedder.embed_pixels`` on a pre-made (batch, 3, S, S) tensor — the ceiling;
  measured before and after the indexing runs, the mean is used.
- **end-to-end**: ``build_index`` (what ``imgrag index`` runs, same batch, default workers, LanceDB
  store, model already loaded) over N distinct 12-megapixel JPEGs (4000×3000, quality 90) made from
  real photos; draft (reduced-size DCT) decoding on and off. ``steady`` excludes the pipeline fill
  (the first batch): images/s between the first and the last batch.
- **naive loop**: open, decode, preprocess and encode one image at a time (what LanceDB's open-clip
  embedding function does), then one store write.

Ratios are taken within one run. Figures are appended to bench/results/results.jsonl.

    python bench/indexer_throughput.py                      # default (CI) scale
    python bench/indexer_throughput.py --n 1024 --models ViT-B-32 --naive 96
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

C.ensure_imgrag_importable()


def model_only(emb, batch: int, seconds: float) -> float:
    import torch

    x = torch.randn(batch, 3, emb.image_size, emb.image_size, generator=torch.Generator().manual_seed(0))
    emb.embed_pixels(x)  # warm (oneDNN primitives for this shape)
    n, t0 = 0, time.perf_counter()
    while True:
        emb.embed_pixels(x)
        n += batch
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 2 * batch:
            return n / dt


def end_to_end(emb, dirs, work: Path, batch: int, workers, draft: bool, store: str) -> dict:
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.index import Index

    root = work / f"idx-{emb.model_id.replace('/', '_')}-{int(draft)}"
    shutil.rmtree(root, ignore_errors=True)
    idx = Index.create_or_open(root, emb, store=store)
    marks: list[tuple[float, int]] = []

    def progress(p):
        marks.append((time.perf_counter(), p.embedded))

    t0 = time.perf_counter()
    rep = build_index(idx, [str(d) for d in dirs], IndexOptions(batch_size=batch, workers=workers, draft=draft),
                      progress=progress)
    wall = time.perf_counter() - t0
    s = rep.seconds
    out = {"embedded": rep.embedded, "skipped": len(rep.skipped), "wall_s": wall,
           "img_s": rep.embedded / wall, "stages": {k: round(v, 3) for k, v in s.items()}}
    if len(marks) >= 3:
        (ta, na), (tb, nb) = marks[0], marks[-1]
        out["steady_img_s"] = (nb - na) / (tb - ta)
    else:
        out["steady_img_s"] = out["img_s"]
    shutil.rmtree(root, ignore_errors=True)
    return out


def naive(emb, files, work: Path, store: str) -> dict:
    """One image at a time: PIL open + full decode, the model's own preprocessing, a batch-1 forward."""
    import numpy as np
    from PIL import Image

    from imgrag.retrieval.index import Index
    from imgrag.retrieval.stores.base import make_rows

    tf = emb.image_transform()
    root = work / "idx-naive"
    shutil.rmtree(root, ignore_errors=True)
    idx = Index.create_or_open(root, emb, store=store)
    t0 = time.perf_counter()
    metas, vecs = [], []
    for f in files:
        with Image.open(f) as im:
            x = tf(im.convert("RGB"))
        vecs.append(emb.embed_pixels(x.unsqueeze(0)))
        st = f.stat()
        metas.append({"id": str(f), "path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    idx.store.upsert(make_rows(metas, np.concatenate(vecs)))
    wall = time.perf_counter() - t0
    shutil.rmtree(root, ignore_errors=True)
    return {"n": len(files), "wall_s": wall, "img_s": len(files) / wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="lite,ViT-B-32", help="comma-separated model specs (default lite,ViT-B-32)")
    ap.add_argument("--n", type=int, default=320, help="12-MP JPEGs to index (default 320)")
    ap.add_argument("--size", default="4000x3000", help="JPEG size WxH (default 4000x3000)")
    ap.add_argument("--batch-size", type=int, default=64, help="indexer batch = model batch (default 64, the CLI's)")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the indexer's default)")
    ap.add_argument("--naive", type=int, default=48, help="images for the naive one-at-a-time loop (default 48)")
    ap.add_argument("--skip-no-draft", dest="no_draft", action="store_false", help="skip the --no-draft runs")
    ap.add_argument("--model-seconds", type=float, default=6.0, help="seconds per model-only measurement")
    ap.add_argument("--store", default="lancedb", choices=["lancedb", "faiss"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto", help="auto (what `imgrag index` uses), fp32, bf16, fp16")
    a = ap.parse_args()

    import torch

    from imgrag.indexer.pipeline import default_workers
    from imgrag.retrieval.embedders import load_embedder

    w, h = map(int, a.size.lower().split("x"))
    dirs = C.make_jpegs(C.CACHE / f"photos-{w}x{h}", a.n, w, h)
    files = C.jpeg_files(dirs)[: a.n]
    work = Path(tempfile.mkdtemp(prefix="imgrag-bench-tp-"))
    src = dirs
    if len(C.jpeg_files(dirs)) != a.n:  # the cache holds more (an earlier bigger run): index n links
        src = [work / "photos"]
        src[0].mkdir()
        for f in files:
            (src[0] / f.name).symlink_to(f)
    workers = default_workers(a.device) if a.workers is None else a.workers
    mb = C.median_file_mb(files)
    C.log(f"{len(files)} JPEGs {w}x{h} (median {mb:.2f} MB); batch {a.batch_size}, {workers} decode worker(s), "
          f"torch threads {torch.get_num_threads()}")

    results: dict = {}
    tables = []
    for spec in [s.strip() for s in a.models.split(",") if s.strip()]:
        emb = load_embedder(spec, device=a.device, precision=a.precision, batch_size=a.batch_size)
        t = time.perf_counter()
        emb.warmup()
        load_s = time.perf_counter() - t
        dtype = str(getattr(emb, "dtype", "torch.float32")).replace("torch.", "")  # lite runs fp32
        r: dict = {"load_s": load_s, "image_size": emb.image_size, "dtype": dtype}
        C.log(f"{spec}: loaded in {load_s:.1f}s ({dtype}); model-only ...")
        m1 = model_only(emb, a.batch_size, a.model_seconds)
        C.log(f"{spec}: model-only {m1:.1f} img/s; end-to-end (draft) ...")
        r["e2e_draft"] = end_to_end(emb, src, work, a.batch_size, a.workers, True, a.store)
        if a.no_draft:
            C.log(f"{spec}: end-to-end draft {r['e2e_draft']['img_s']:.1f} img/s; end-to-end (no draft) ...")
            r["e2e_full"] = end_to_end(emb, src, work, a.batch_size, a.workers, False, a.store)
        C.log(f"{spec}: naive loop on {a.naive} images ...")
        r["naive"] = naive(emb, files[: a.naive], work, a.store) if a.naive else None
        m2 = model_only(emb, a.batch_size, a.model_seconds)
        r["model_only_img_s"] = (m1 + m2) / 2
        r["model_only_runs"] = [m1, m2]
        mo = r["model_only_img_s"]
        cores = C.machine_info()["nproc"]
        for k in ("e2e_draft", "e2e_full"):
            if k in r:
                e = r[k]
                e["ratio_vs_model"] = e["img_s"] / mo
                e["steady_ratio_vs_model"] = e["steady_img_s"] / mo
                # On a CPU-only machine decoding and the model share the cores. One image costs w
                # CPU-seconds in a worker plus cores / model_img_s in the model (which uses every
                # core), so img/s <= cores / (w + cores / model_img_s): ratio <= 1 / (1 + w * model / cores).
                w_s = sum(e["stages"].get(x, 0.0) for x in ("read", "decode", "preprocess")) / max(1, e["embedded"])
                e["worker_cpu_ms_per_img"] = 1000 * w_s
                e["cpu_ceiling_ratio"] = 1.0 / (1.0 + w_s * mo / cores) if a.device == "cpu" else 1.0
        if r["naive"]:
            r["speedup_vs_naive"] = r["e2e_draft"]["img_s"] / r["naive"]["img_s"]
        results[spec] = r
        del emb

    rows = []
    for spec, r in results.items():
        mo = r["model_only_img_s"]
        rows.append([f"{spec} ({r['dtype']})", "model-only (embed_pixels, pre-made tensors)", mo, 1.0, None, None, None])
        for k, label in (("e2e_draft", "imgrag index, draft decode (default)"), ("e2e_full", "imgrag index --no-draft")):
            if k in r:
                e = r[k]
                rows.append([spec, label, e["img_s"], e["ratio_vs_model"], e["steady_img_s"], e["steady_ratio_vs_model"],
                             e["cpu_ceiling_ratio"]])
        if r["naive"]:
            rows.append([spec, f"naive loop, 1 image at a time ({r['naive']['n']} images)", r["naive"]["img_s"],
                         r["naive"]["img_s"] / mo, None, None, None])
    tables.append(C.table(["model", "run", "img/s", "÷ model-only", "steady img/s", "steady ÷ model-only",
                           "CPU ceiling ÷ model-only"], rows,
                          title=f"Indexing throughput, {len(files)} JPEGs {w}×{h} q90 (median {mb:.1f} MB), "
                                f"batch {a.batch_size}, {workers} decode worker(s), {a.device}"))
    rows = [[spec, r["speedup_vs_naive"], r["e2e_draft"]["img_s"], r["naive"]["img_s"]]
            for spec, r in results.items() if r.get("naive")]
    if rows:
        tables.append(C.table(["model", "speedup vs naive loop", "imgrag index img/s", "naive img/s"], rows,
                              title="Speedup over the naive one-image-at-a-time loop"))
    rows = []
    for spec, r in results.items():
        for k, label in (("e2e_draft", "draft"), ("e2e_full", "no draft")):
            if k in r:
                s = r[k]["stages"]
                n = r[k]["embedded"] or 1
                rows.append([spec, label, s.get("total"), s.get("model"), s.get("wait"), s.get("write"),
                             s.get("optimize"), s.get("plan"), 1000 * s.get("read", 0) / n,
                             1000 * s.get("decode", 0) / n, 1000 * s.get("preprocess", 0) / n])
    tables.append(C.table(["model", "decode", "total s", "model s", "wait s", "write s", "optimize s", "plan s",
                           "read ms/img", "decode ms/img", "preprocess ms/img"], rows,
                          title="Where the time goes (IndexReport.seconds; main process wall time; "
                                "read/decode/preprocess are worker CPU time per image)"))
    shutil.rmtree(work, ignore_errors=True)
    C.record("indexer_throughput", results, {"n": len(files), "size": a.size, "median_mb": mb, "batch": a.batch_size,
                                             "workers": workers, "store": a.store, "device": a.device})
    return 0


if __name__ == "__main__":
    sys.exit(main())
