#!/usr/bin/env python3
"""Near-duplicate finding: precision/recall on planted copies, and time + memory of the candidate stage at scale.

    python bench/duplicates.py quality [--openclipart N] [--model lite] [--out DIR]
    python bench/duplicates.py scale [--items 100000] [--store faiss|lancedb] [--faiss-factory HNSW32]
                                     [--ann-min-rows N] [--candidates auto|store|hnsw]

**quality** takes real images (data/samples, scikit-image's data folder, optionally N openclipart PNGs from
bench/.cache — see bench/make_eval_sets.py), and plants copies of a share of them: resized to 50 %,
re-encoded as JPEG quality 30, cropped 5 % and 10 % (each side), brightened by 30 %. Distinct
near-neighbours are planted too: the mirror image and an offset view (a 60 % window of the other corner) of
some originals — same subject, not a copy. Everything is indexed with ``--model`` (default lite, offline),
then the truth (each original with its copies) is compared pairwise with the groups found: precision and
recall over same-group pairs, for the embedding alone and with the pHash check, at several thresholds.
It also prints the pHash/dHash distance distributions of copies vs distinct pairs (how the defaults were set).

**scale** builds a store of synthetic unit vectors (clusters of near-copies among random vectors) and times
``candidate_pairs`` (neighbour search in batches) plus union-find, in a child process whose peak RSS is read.
The candidates come from the store's ANN index (FAISS ``--faiss-factory HNSW32``; LanceDB's index, built by
``optimize`` once the table has ``--ann-min-rows``) or, for an exact store over 20,000 images, from a
temporary HNSW graph (``--candidates`` forces one or the other). The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY_KINDS = ("resize50", "jpeg30", "crop5", "crop10", "bright30")
NEAR_KINDS = ("mirror", "offset")


def source_images(openclipart: int) -> list[Path]:
    out = sorted(p for p in (ROOT / "data" / "samples").rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    try:
        import skimage

        sk = Path(skimage.__file__).parent / "data"
        out += sorted(p for p in sk.iterdir() if p.suffix.lower() in (".png", ".jpg") and p.stat().st_size > 20_000)
    except ImportError:
        pass
    if openclipart:
        oc = ROOT / "bench" / ".cache" / "openclipart-png-extracted"
        pngs = sorted(p for p in oc.rglob("*.png") if not p.is_symlink())
        random.Random(0).shuffle(pngs)
        out += pngs[:openclipart]
    return out


def plant(img, kind: str):
    from PIL import Image, ImageEnhance, ImageOps

    w, h = img.size
    if kind == "resize50":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    if kind.startswith("crop"):
        f = int(kind[4:]) / 100
        return img.crop((int(w * f), int(h * f), w - int(w * f), h - int(h * f)))
    if kind == "bright30":
        return ImageEnhance.Brightness(img).enhance(1.3)
    if kind == "mirror":
        return ImageOps.mirror(img)
    if kind == "offset":
        return img.crop((int(w * 0.4), int(h * 0.4), w, h))
    return img


def make_set(out: Path, sources: list[Path], copy_share: float = 0.5, seed: int = 0) -> dict[str, list[str]]:
    """Write originals and planted images under ``out``; truth: original path -> its planted copies."""
    from PIL import Image

    import numpy as np

    rng = random.Random(seed)
    truth: dict[str, list[str]] = {}
    out.mkdir(parents=True, exist_ok=True)
    seen: list[np.ndarray] = []  # 32×32 grey pixels of the kept sources

    def tiny(im) -> np.ndarray:
        return np.asarray(im.convert("L").resize((32, 32), Image.Resampling.BOX), dtype=np.float32)

    def same_picture(a: np.ndarray, others: list[np.ndarray]) -> bool:
        # the truth's own rule, independent of the signals measured: mean grey difference under 6/255
        return any(float(np.abs(a - o).mean()) < 6.0 for o in others)
    for n, src in enumerate(sources):
        try:
            img = Image.open(src)
            img.load()
        except OSError:
            continue
        if img.mode in ("P", "LA", "RGBA", "PA"):  # clip art: drawn on transparency, shown on white
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        img = img.convert("RGB")
        if min(img.size) < 64 or same_picture(tiny(img), seen):  # series of near-identical clip art
            continue
        seen.append(tiny(img))
        stem = f"{n:04d}_{src.stem}"
        orig = out / f"{stem}.png"
        img.save(orig)
        truth[str(orig)] = []
        if rng.random() < copy_share:
            for kind in rng.sample(COPY_KINDS, 2):
                p = out / f"{stem}__{kind}.jpg"
                plant(img, kind).save(p, quality=30 if kind == "jpeg30" else 90)
                truth[str(orig)].append(str(p))
        elif rng.random() < 0.6:  # distinct near-neighbours: same subject, not copies
            kind = rng.choice(NEAR_KINDS)
            near = plant(img, kind)
            if not same_picture(tiny(near), [tiny(img)]):  # a symmetric picture's mirror is a copy
                near.save(out / f"{stem}__near_{kind}.png")
    return truth


def pair_scores(found: list[set[str]], truth: dict[str, list[str]]) -> dict[str, float]:
    def pairs(groups):
        s = set()
        for g in groups:
            g = sorted(g)
            s.update((a, b) for i, a in enumerate(g) for b in g[i + 1:])
        return s
    t = pairs([{o, *c} for o, c in truth.items() if c])
    f = pairs(found)
    tp = len(t & f)
    return {"precision": tp / len(f) if f else 1.0, "recall": tp / len(t) if t else 1.0,
            "true_pairs": len(t), "found_pairs": len(f)}


def hash_distances(truth: dict[str, list[str]], folder: Path) -> None:
    """Signal distributions: each copy kind vs its original (worst, 5th percentile), and each original or
    near-neighbour vs the most similar other distinct image (best, 95th percentile)."""
    import numpy as np

    from imgrag.retrieval.perceptual import hamming, hash_files

    nears = sorted(str(p) for p in folder.glob("*__near_*"))
    hs = hash_files([*truth, *(c for cs in truth.values() for c in cs), *nears])
    sig = {"thumb corr": lambda a, b: a.similarity(b), "pHash+crops": lambda a, b: -a.distance(b),
           "dHash": lambda a, b: -hamming(a.dhash, b.dhash)}
    origs = [o for o in truth if hs[o] is not None]
    for name, f in sig.items():
        parts = []
        by_kind: dict[str, list[float]] = {}
        for o, cs in truth.items():
            for c in cs:
                if hs[o] is not None and hs[c] is not None:
                    by_kind.setdefault(c.rsplit("__", 1)[1].split(".")[0], []).append(abs(f(hs[o], hs[c])))
        for kind, v in sorted(by_kind.items()):
            worst = min(v) if name == "thumb corr" else max(v)
            parts.append(f"{kind} {worst:.2f}")
        distinct = []
        for x in [*origs, *nears]:
            own = x.rsplit("__", 1)[0] + ".png" if "__near_" in x else x
            distinct.append(max(f(hs[x], hs[o]) for o in origs if o != own and hs[x] is not None))
        d = np.abs(distinct)
        best = d.max() if name == "thumb corr" else d.min()
        print(f"  {name:12} copies (worst): {', '.join(parts)} | distinct (closest) {best:.2f}, "
              f"p99 {np.percentile(d, 99 if name == 'thumb corr' else 1):.2f}")


def quality(args) -> None:
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.duplicates import DuplicateOptions, find_duplicates

    work = Path(args.out or tempfile.mkdtemp(prefix="imgrag-dups-"))
    srcs = source_images(args.openclipart)
    truth = make_set(work / "images", srcs)
    n_imgs = len(list((work / "images").iterdir()))
    print(f"set: {len(truth)} originals, {sum(len(c) for c in truth.values())} planted copies, "
          f"{n_imgs} images in all (incl. distinct near-neighbours) in {work}")
    print("perceptual hash distances (bits of 64):")
    hash_distances(truth, work / "images")
    if args.hash_only:
        return
    emb = load_embedder(args.model, device="cpu")
    index = Index.create_or_open(work / "index", emb, store="lancedb")
    build_index(index, [str(work / "images")], IndexOptions(workers=0))
    rows = []
    for verify in (False, True):
        for t in args.thresholds:
            for bursts in ((False, True) if verify else (False,)):
                rep = find_duplicates(index.store, DuplicateOptions(threshold=t, verify=verify, bursts=bursts))
                s = pair_scores([{m.path for m in g} for g in rep.groups], truth)
                rows.append({"model": args.model, "threshold": t, "verify": "thumb" if verify else "none",
                             "bursts": bursts, **s, "seconds": round(rep.seconds["total"], 2)})
                print(json.dumps(rows[-1]))


def _scale_child(n: int, store_kind: str, dim: int, k: int, options: dict, source: str,
                 ef_search: int | None = None) -> None:
    import numpy as np

    from imgrag.retrieval.stores import make_rows, open_store
    from imgrag.retrieval.queries import duplicates as dup
    from imgrag.retrieval.queries.duplicates import _UnionFind, candidate_pairs

    if ef_search:
        dup.TEMP_EF_SEARCH = ef_search

    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((n, dim)).astype(np.float32)
    # 2 % of the items get a near-copy (cosine ~0.97) right after them
    planted = rng.choice(n - 1, size=n // 50, replace=False)
    vecs[planted + 1] = vecs[planted] + 0.12 * rng.standard_normal((len(planted), dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    root = Path(tempfile.mkdtemp(prefix="imgrag-dupscale-"))
    store = open_store(store_kind, root / store_kind, dim, **options)
    tb = time.perf_counter()
    for i in range(0, n, 20_000):
        store.upsert(make_rows([{"id": f"/x/{j:07d}.jpg", "path": f"/x/{j:07d}.jpg", "hash": f"h{j}"}
                                for j in range(i, min(n, i + 20_000))], vecs[i:i + 20_000]))
    store.optimize()
    build_s = time.perf_counter() - tb
    del vecs
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    load0 = os.getloadavg()[0]
    ids, hashes, pairs, items, used = candidate_pairs(store, 0.8, k=k, source=source)
    uf = _UnionFind()
    for a, b in pairs:
        uf.union(a, b)
    groups = uf.groups()
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0  # CPU: all threads, robust to the load
    found = {tuple(sorted(g)) for g in groups if len(g) == 2}
    print(json.dumps({"items": items, "store": store_kind, "options": options, "candidates_from": used,
                      "temp_ef_search": dup.TEMP_EF_SEARCH,
                      "describe": store.describe(), "dim": dim, "k": k,
                      "load_avg_1min": [round(load0, 1), round(os.getloadavg()[0], 1)],
                      "planted_pairs": len(planted), "candidate_pairs": len(pairs), "groups": len(groups),
                      "planted_found": sum(1 for p in planted if (int(p), int(p) + 1) in found),
                      # a pair whose original was itself overwritten as another pair's copy is no pair any more
                      "planted_intact": int(len(set(planted.tolist()) - set((planted + 1).tolist()))),
                      "build_s": round(build_s, 1), "candidates_s": round(secs, 1), "candidates_cpu_s": round(cpu, 1),
                      "peak_rss_mib_before": round(rss0 / 1024), "peak_rss_mib": round(
                          resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}), flush=True)
    store.close()
    shutil.rmtree(root, ignore_errors=True)  # 400 MB at 100,000 items


def scale(args) -> None:
    options: dict = {}
    if args.faiss_factory:
        options["factory"] = args.faiss_factory
    if args.ann_min_rows:
        options["ann_min_rows"] = args.ann_min_rows
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import duplicates; "
            f"duplicates._scale_child({args.items}, {args.store!r}, {args.dim}, {args.k}, {options!r}, "
            f"{args.candidates!r}, {args.ef_search!r})")
    subprocess.run([sys.executable, "-c", code], check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--openclipart", type=int, default=0, help="also take N openclipart PNGs (bench/.cache)")
    q.add_argument("--model", default="lite")
    q.add_argument("--out")
    q.add_argument("--hash-only", action="store_true", help="only the hash distance distributions")
    q.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.95])
    s = sub.add_parser("scale")
    s.add_argument("--items", type=int, default=100_000)
    s.add_argument("--store", choices=["faiss", "lancedb"], default="faiss")
    s.add_argument("--dim", type=int, default=512)
    s.add_argument("--k", type=int, default=10)
    s.add_argument("--faiss-factory", help="FAISS store index, e.g. HNSW32 (default: the store's Flat)")
    s.add_argument("--ann-min-rows", type=int, help="LanceDB: build its vector index from this many rows")
    s.add_argument("--candidates", choices=["auto", "store", "hnsw"], default="auto")
    s.add_argument("--ef-search", type=int, help="efSearch of the temporary graph (default: the library's)")
    args = p.parse_args()
    quality(args) if args.what == "quality" else scale(args)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
