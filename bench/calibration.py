#!/usr/bin/env python3
"""Measure zero-shot calibration methods against each other (docs/quality.md, "Calibrated zero-shot").

    python bench/make_eval_sets.py openclipart /tmp/oc-eval                # second-level classes
    python bench/make_eval_sets.py openclipart /tmp/oc-top --level top     # top-level subjects
    python bench/calibration.py --model lite data/samples /tmp/oc-eval /tmp/oc-top [--json]

For every folder-per-class set and every method it reports top-1/top-5 in three settings:

* ``collection`` — the calibration is fitted on the set being classified (whole-index classify, eval);
* ``sample``     — fitted on a random sample of --sample images of the set (single image against a sample
  of its index);
* ``other``      — fitted on the *other* sets (single image against an unrelated reference set);
* ``bundled``    — fitted on the 48 bundled reference images (retrieval/reference/: what a single image gets
  when the index is too small).

Image vectors are cached in --cache (keyed by model and folder) so reruns only redo the arithmetic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from imgrag.retrieval.queries import calibration as cal


def load_set(emb, model: str, root: str, cache: Path, depth: int):
    """(labels, vectors, targets) of a folder-per-class tree; unreadable images are left out."""
    from imgrag.retrieval.queries.evaluate import class_words, embed_readable_files, folder_dataset

    classes, paths, targets = folder_dataset(root, depth)
    key = hashlib.sha1(f"{model}|{os.path.abspath(root)}|{depth}|{len(paths)}".encode()).hexdigest()[:12]
    f = cache / f"{Path(root).name}-{key}.npz"
    if f.is_file():
        z = np.load(f)
        vecs, ok = z["vecs"], z["ok"]
    else:
        vecs, ok, _skipped = embed_readable_files(emb, paths)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(f, vecs=vecs, ok=np.asarray(ok, dtype=np.int64))
    return [class_words(c) for c in classes], vecs, np.asarray(targets)[np.asarray(ok, dtype=np.int64)]


def accuracy(sims: np.ndarray, y: np.ndarray, logit_scale: float) -> tuple[float, float, int, float, float]:
    """top-1, top-5, most images given one label, and of the softmax: NLL and expected calibration
    error (10 confidence bins) — do the probabilities still mean something after calibration?"""
    from imgrag.retrieval.queries.classify import scores_to_probs

    order = np.argsort(-sims, axis=1, kind="stable")
    hit = order[:, 0] == y
    top5 = float((order[:, : min(5, sims.shape[1])] == y[:, None]).any(axis=1).mean())
    max_share = int(np.bincount(order[:, 0], minlength=sims.shape[1]).max())
    p = scores_to_probs(sims, logit_scale, None).astype(np.float64)
    nll = float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())
    conf = p.max(axis=1)
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = float(sum(abs(conf[bins == b].mean() - hit[bins == b].mean()) * (bins == b).mean()
                    for b in range(10) if (bins == b).any()))
    return float(hit.mean()), top5, max_share, nll, ece


def measure(emb, data: dict[str, tuple[list[str], np.ndarray, np.ndarray]], templates: str = "simple",
            sample: int = 256, seed: int = 0) -> list[dict]:
    """One row per set × method × setting; ``data`` maps a set name to (labels, image vectors, targets)."""
    from imgrag.retrieval.queries.classify import bundled_reference, class_vectors, load_templates

    tmpl = load_templates(templates)
    bundled = bundled_reference(emb)
    rng = np.random.default_rng(seed)
    rows = []
    for s, (labels, vecs, y) in data.items():
        w = class_vectors(emb, labels, tmpl)
        sims = vecs @ w.T
        others = np.concatenate([v for t, (_, v, _) in data.items() if t != s]) if len(data) > 1 else None
        for method in ("none", *cal.METHODS):
            settings = {"collection": sims,
                        "sample": sims[rng.choice(len(sims), min(sample, len(sims)), replace=False)]}
            if others is not None:
                settings["other"] = others @ w.T
            settings["bundled"] = bundled @ w.T
            for setting, ref in settings.items():
                c = cal.fit(method, ref, emb.logit_scale)
                t1, t5, share, nll, ece = accuracy(c.apply(sims) if c else sims, y, emb.logit_scale)
                rows.append({"set": s, "n": len(y), "classes": len(labels), "method": method, "fit_on": setting,
                             "top1": round(t1, 4), "top5": round(t5, 4), "max_label_share": share,
                             "nll": round(nll, 3), "ece": round(ece, 3)})
                if method == "none":
                    break
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sets", nargs="+", help="folder-per-class roots")
    ap.add_argument("--model", default="lite")
    ap.add_argument("--templates", default="simple")
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--sample", type=int, default=256, help="reference sample size for the 'sample' setting")
    ap.add_argument("--cache", default=str(Path(__file__).resolve().parent / ".cache" / "calibration"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    from imgrag.retrieval.embedders import load_embedder

    emb = load_embedder(a.model, device="cpu")
    data = {s: load_set(emb, a.model, s, Path(a.cache), a.depth) for s in a.sets}
    rows = measure(emb, data, a.templates, a.sample)
    if a.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_rows(rows)
    return 0


def print_rows(rows: list[dict]) -> None:
    print(f"{'set':<22}{'n':>6}{'C':>4}  {'method':<9}{'fit on':<11}{'top-1':>7}{'top-5':>7}{'max/label':>10}{'NLL':>7}{'ECE':>7}")
    for r in rows:
        print(f"{Path(r['set']).name:<22}{r['n']:>6}{r['classes']:>4}  {r['method']:<9}{r['fit_on']:<11}"
              f"{100 * r['top1']:>6.1f}%{100 * r['top5']:>6.1f}%{r['max_label_share']:>10}"
              f"{r['nll']:>7.2f}{r['ece']:>7.3f}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
