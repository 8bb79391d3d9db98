#!/usr/bin/env python3
"""Figures for ``imgrag tune`` (issue #15, part 3), on images training never saw.

1. openclipart (``python bench/make_eval_sets.py openclipart /tmp/oc-eval``): each class's images are split
   in half (seeded); the adapter is trained on one half (tune's own validation split held out of it for early
   stopping), top-1 is measured on the other half, before (raw zero-shot, ``simple`` templates, the classify
   default) and after. Loss (siglip/clip) and adapter side (text/both) are compared. Goal: after ≥ 2× raw.
2. Few-shot prototypes (fewshot.py): 1/2/4/8/16 example images per class from the tuning half, alpha swept,
   top-1 on the other half.
3. data/samples + data/captions.tsv: 5-fold cross-validated text→image R@1/R@5: train on the captions of 4/5
   of the images, query with the captions of the held-out fifth against all images.

    python bench/tune_eval.py --model lite --oc /tmp/oc-eval [--limit-per-class 16] [--json out.json]

Image vectors are cached in bench/.cache/tune_eval/ (the model is run once per image set).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, ensure_imgrag_importable  # noqa: E402

ensure_imgrag_importable()

from imgrag.retrieval.tune.data import Supervision, class_texts  # noqa: E402
from imgrag.retrieval.tune.fewshot import mix_prototypes  # noqa: E402
from imgrag.retrieval.tune.train import TuneConfig, train_adapter  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHOTS = (1, 2, 4, 8, 16)
ALPHAS = (0.25, 0.5, 0.75)


def embed_folder(emb, root: Path, limit: int | None, cache: Path) -> dict:
    """{vectors, paths, targets, classes} for a folder-per-class tree (decode failures left out)."""
    if cache.is_file():
        z = np.load(cache)
        return {k: z[k] for k in z.files}
    from imgrag.retrieval.queries.evaluate import folder_dataset
    from imgrag.retrieval.tune.data import _decode

    classes, paths, targets = folder_dataset(root, limit_per_class=limit)
    rel = [os.path.relpath(p, root) for p in paths]
    # vectors of the same files cached by a run with another --limit-per-class are reused (same model)
    known: dict[str, np.ndarray] = {}
    for other in sorted(cache.parent.glob(cache.name.rsplit("-", 1)[0] + "-*.npz")):
        z = np.load(other)
        known.update(zip(z["paths"].tolist(), z["vectors"]))
    got: dict[int, np.ndarray] = {k: known[r] for k, r in enumerate(rel) if r in known}
    todo = [k for k in range(len(paths)) if k not in got]
    print(f"  {len(got)} cached vectors reused, {len(todo)} images to embed", file=sys.stderr, flush=True)
    for i in range(0, len(todo), 64):
        chunk = todo[i : i + 64]
        imgs = [_decode(paths[k], emb.image_size) for k in chunk]
        ok = [j for j, im in enumerate(imgs) if not isinstance(im, Exception)]
        if ok:
            got.update(zip([chunk[j] for j in ok], emb.embed_images([imgs[j] for j in ok])))
        print(f"  embedded {i + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)
    keep = sorted(got)
    out = {"vectors": np.stack([got[k] for k in keep]).astype(np.float32), "paths": np.array([rel[k] for k in keep]),
           "targets": np.array([targets[k] for k in keep]), "classes": np.array(classes)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def half_split(targets: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = [], []
    for c in np.unique(targets):
        m = rng.permutation(np.flatnonzero(targets == c))
        a += m[: len(m) // 2].tolist()
        b += m[len(m) // 2 :].tolist()
    return np.array(sorted(a)), np.array(sorted(b))


def top1(iv: np.ndarray, w: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((iv @ w.T).argmax(axis=1) == y))


def top1_calibrated(iv: np.ndarray, w: np.ndarray, y: np.ndarray, logit_scale: float) -> float:
    """top-1 with the default calibration fitted on the evaluated images (as ``imgrag eval zeroshot``)."""
    from imgrag.retrieval.queries.calibration import fit

    sims = iv @ w.T
    c = fit("auto", sims, logit_scale)
    return float(np.mean((c.apply(sims) if c else sims).argmax(axis=1) == y))


def openclipart(emb, data: dict, seed: int) -> dict:
    from imgrag.retrieval.queries.classify import class_vectors, load_templates

    from imgrag.retrieval.queries.evaluate import class_words

    counts = np.bincount(data["targets"], minlength=len(data["classes"]))
    keep_cls = np.flatnonzero(counts >= 4)  # two images or more in each half
    remap = {c: i for i, c in enumerate(keep_cls)}
    sel = np.isin(data["targets"], keep_cls)
    X = data["vectors"][sel].astype(np.float32)
    y = np.array([remap[c] for c in data["targets"][sel]])
    labels = [class_words(str(data["classes"][c])) for c in keep_cls]
    tune_idx, test_idx = half_split(y, seed)
    W = class_vectors(emb, labels, load_templates("simple"))
    texts, tkeys = [], []
    for k, lab in enumerate(labels):
        for t in class_texts(lab):
            texts.append(t)
            tkeys.append(k)
    tv = np.asarray(emb.embed_texts(texts), np.float32)
    sup = Supervision("openclipart half", "classes", [str(p) for p in data["paths"][sel][tune_idx]], X[tune_idx],
                      y[tune_idx], texts, tv, np.array(tkeys), labels)
    raw = top1(X[test_idx], W, y[test_idx])
    ls = emb.logit_scale
    from imgrag.retrieval.queries.calibration import auto_method

    out = {"classes": len(labels), "tune_images": len(tune_idx), "test_images": len(test_idx),
           "raw_top1": raw, "calibration": auto_method(len(labels)),
           "calibrated_top1": top1_calibrated(X[test_idx], W, y[test_idx], ls), "runs": []}
    for loss in ("siglip", "clip"):
        for sides in ("text", "both"):
            res = train_adapter(sup, TuneConfig(loss=loss, sides=sides, seed=seed))
            after = top1(res.adapter.apply_image(X[test_idx]), res.adapter.apply_text(W), y[test_idx])
            cal_after = top1_calibrated(res.adapter.apply_image(X[test_idx]), res.adapter.apply_text(W), y[test_idx], ls)
            out["runs"].append({"loss": loss, "sides": sides, "top1": after, "ratio": after / max(raw, 1e-9),
                                "top1_calibrated": cal_after,
                                "epochs": res.epochs, "best_epoch": res.best_epoch,
                                "val_before": res.before["i2t_top1"], "val_after": res.after["i2t_top1"]})
            print(f"  openclipart {loss}/{sides}: top-1 {raw:.3f} -> {after:.3f}", file=sys.stderr, flush=True)
    # few-shot prototypes from the tuning half
    rng = np.random.default_rng(seed)
    fs = []
    for shots in SHOTS:
        ex = []
        for c in range(len(labels)):
            m = rng.permutation(tune_idx[y[tune_idx] == c])
            ex += m[:shots].tolist()
        ex = np.array(ex)
        row = {"shots": shots, "examples": len(ex), "image_only": top1(X[test_idx], mix_prototypes(W, X[ex], y[ex], 1.0), y[test_idx])}
        for a in ALPHAS:
            row[f"alpha_{a}"] = top1(X[test_idx], mix_prototypes(W, X[ex], y[ex], a), y[test_idx])
        row["default_calibrated"] = top1_calibrated(X[test_idx], mix_prototypes(W, X[ex], y[ex]), y[test_idx], ls)
        fs.append(row)
    out["fewshot"] = fs
    return out


def samples_cv(emb, seed: int, folds: int = 5, loss: str = "siglip") -> dict:
    from imgrag.retrieval.queries.evaluate import read_captions
    from imgrag.retrieval.tune.data import _decode

    caps = read_captions(ROOT / "data" / "captions.tsv")
    images = sorted({p for p, _ in caps})
    cache = CACHE / "tune_eval" / f"samples-{emb.model_id.replace(':', '_').replace('/', '_')}.npz"
    if cache.is_file():
        iv = np.load(cache)["vectors"]
    else:
        iv = emb.embed_images([_decode(str(ROOT / "data" / "samples" / p), emb.image_size) for p in images])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, vectors=iv)
    col = {p: i for i, p in enumerate(images)}
    ckeys = np.array([col[p] for p, _ in caps])
    tv = np.asarray(emb.embed_texts([c for _, c in caps]), np.float32)
    fold_of = np.random.default_rng(seed).permutation(len(images)) % folds
    raw_hits, hits, raw5, hits5 = [], [], [], []
    for f in range(folds):
        tr = np.flatnonzero(fold_of != f)
        tsel = np.isin(ckeys, tr)
        remap = {int(k): i for i, k in enumerate(tr)}
        sup = Supervision("captions", "captions", [images[i] for i in tr], iv[tr], np.arange(len(tr)),
                          [c for (p, c), s in zip(caps, tsel) if s], tv[tsel], np.array([remap[int(k)] for k in ckeys[tsel]]),
                          [images[i] for i in tr])
        a = train_adapter(sup, TuneConfig(loss=loss, seed=seed)).adapter
        q = ~tsel  # held-out captions, gallery: every image
        for vecs, h1, h5 in ((tv[q], raw_hits, raw5), (a.apply_text(tv[q]), hits, hits5)):
            order = np.argsort(-(vecs @ iv.T), axis=1)
            h1 += (order[:, 0] == ckeys[q]).tolist()
            h5 += (order[:, :5] == ckeys[q][:, None]).any(axis=1).tolist()
    return {"loss": loss, "images": len(images), "captions": len(caps), "folds": folds,
            "raw_r1": float(np.mean(raw_hits)), "tuned_r1": float(np.mean(hits)),
            "raw_r5": float(np.mean(raw5)), "tuned_r5": float(np.mean(hits5))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--oc", type=Path, default=Path("/tmp/oc-eval"), help="openclipart eval split (make_eval_sets.py)")
    ap.add_argument("--limit-per-class", type=int, default=None, help="first N images of each class (a faster run)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-oc", action="store_true")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    from imgrag.retrieval.embedders import load_embedder

    emb = load_embedder(args.model, device="cpu", precision="fp32")
    result: dict = {"model": args.model, "seed": args.seed}
    result["samples_captions"] = [samples_cv(emb, args.seed, loss=loss) for loss in ("siglip", "clip")]
    print(json.dumps(result["samples_captions"]), file=sys.stderr, flush=True)
    if not args.skip_oc:
        tag = f"oc-{args.model.replace(':', '_')}-{args.limit_per_class or 'all'}"
        data = embed_folder(emb, args.oc, args.limit_per_class, CACHE / "tune_eval" / f"{tag}.npz")
        result["openclipart"] = openclipart(emb, data, args.seed)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
