"""Built-in evaluation: text↔image Recall@K from captions, zero-shot accuracy on folder-per-class data.

Works with any embedder. Images are decoded by a thread pool (Pillow releases the GIL) and embedded
in batches; only vectors are kept, so memory is (images + captions) × d floats. An image that cannot
be decoded (corrupt, truncated, over the pixel limit) is left out and reported with its reason; the
evaluation goes on with the others. ``max_pixels`` (``--max-megapixels``) admits huge scans, decoded
reduced (:mod:`imgrag.retrieval.reduced`).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.paths import display

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.embedders.base import Embedder
    from imgrag.retrieval.tune.adapter import Adapter

KS = (1, 5, 10)


def _load(path: str, draft: int | None, max_pixels: int | None):
    from imgrag.retrieval.imageio import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image

    try:
        return decode_image(Path(path).read_bytes(), draft_size=draft,
                            max_pixels=max_pixels or DEFAULT_MAX_PIXELS).image
    except ImageDecodeError as e:
        return e
    except OSError as e:
        return ImgragError(f"cannot read file ({e.strerror or e})")


def embed_readable_files(embedder: "Embedder", paths: Sequence[str], batch_size: int = 64,
                         threads: int | None = None, max_pixels: int | None = None
                         ) -> tuple[np.ndarray, list[int], list[tuple[str, str]]]:
    """(vectors of the files that decode, their indices into ``paths``, [(path, reason)] of the rest)."""
    vecs: list[np.ndarray] = []
    ok_idx: list[int] = []
    failed: list[tuple[str, str]] = []
    draft = embedder.image_size
    with ThreadPoolExecutor(threads or min(4, (os.cpu_count() or 2))) as pool:
        for i in range(0, len(paths), batch_size):
            chunk = paths[i : i + batch_size]
            imgs = list(pool.map(lambda p: _load(p, draft, max_pixels), chunk))
            ok = [im for im in imgs if not isinstance(im, Exception)]
            ok_idx += [i + j for j, im in enumerate(imgs) if not isinstance(im, Exception)]
            failed += [(p, str(im)) for p, im in zip(chunk, imgs) if isinstance(im, Exception)]
            if ok:
                vecs.append(embedder.embed_images(ok))
    if not ok_idx and paths:
        raise ImgragError(f"none of the {len(paths)} evaluation images could be read, e.g. "
                          f"{failed[0][0]}: {failed[0][1]}")
    return (np.concatenate(vecs) if vecs else np.zeros((0, embedder.dim), np.float32)), ok_idx, failed


def embed_image_files(embedder: "Embedder", paths: Sequence[str], batch_size: int = 64,
                      threads: int | None = None) -> tuple[np.ndarray, list[str]]:
    """(n, d) vectors, one per path in order; fails if any file cannot be read (callers that need
    every row aligned with ``paths``; the evaluations use :func:`embed_readable_files`)."""
    vecs, _ok, failed = embed_readable_files(embedder, paths, batch_size, threads)
    if failed:
        raise ImgragError(f"{len(failed)} images could not be read, e.g. {failed[0][0]}: {failed[0][1]}")
    return vecs, []


# --- retrieval ---------------------------------------------------------------------------------------
def read_captions(path: str | Path) -> list[tuple[str, str]]:
    """TSV ``relative/path<TAB>caption``; several lines per image allowed; ``#`` comments."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if "\t" not in line:
            raise ImgragError(f"{path}:{n}: expected 'path<TAB>caption'")
        p, c = line.split("\t", 1)
        out.append((p.strip(), c.strip()))
    if not out:
        raise ImgragError(f"no captions in {path}")
    return out


def recall_at_k(sims: np.ndarray, relevant: Sequence[set[int]], ks: Iterable[int] = KS) -> dict[int, float]:
    """Rows are queries; a query counts as a hit at K if any relevant column is in its top K."""
    order = np.argsort(-sims, axis=1, kind="stable")
    out = {}
    for k in ks:
        top = order[:, :k]
        out[k] = float(np.mean([bool(relevant[i] & set(top[i].tolist())) for i in range(len(relevant))]))
    return out


@dataclass
class RetrievalReport:
    images: int
    captions: int
    text_to_image: dict[int, float]
    image_to_text: dict[int, float]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not evaluated


def eval_retrieval(embedder: "Embedder", images_dir: str | Path, captions_file: str | Path,
                   batch_size: int = 64, max_pixels: int | None = None,
                   adapter: "Adapter | None" = None) -> RetrievalReport:
    """Text↔image recall; with ``adapter`` (an index's ``imgrag tune``) captions and images pass through it
    as queries and classify do."""
    caps = read_captions(captions_file)
    images = sorted({p for p, _ in caps})
    missing = [p for p in images if not (Path(images_dir) / p).is_file()]
    if missing:
        raise ImgragError(f"{len(missing)} captioned images not found under {images_dir}, e.g. {missing[0]}")
    iv, ok, skipped = embed_readable_files(embedder, [str(Path(images_dir) / p) for p in images], batch_size,
                                           max_pixels=max_pixels)
    images = [images[i] for i in ok]  # unreadable images and their captions are left out
    col = {p: i for i, p in enumerate(images)}
    caps = [(p, c) for p, c in caps if p in col]
    tv = embedder.embed_texts([c for _, c in caps])
    if adapter is not None:
        tv, iv = adapter.apply_text(tv), adapter.apply_image(iv)
    sims = tv @ iv.T  # (captions, images)
    t2i = recall_at_k(sims, [{col[p]} for p, _ in caps])
    caps_of: dict[int, set[int]] = defaultdict(set)
    for j, (p, _) in enumerate(caps):
        caps_of[col[p]].add(j)
    i2t = recall_at_k(sims.T, [caps_of[i] for i in range(len(images))])
    return RetrievalReport(len(images), len(caps), t2i, i2t, skipped)


# --- zero-shot -----------------------------------------------------------------------------------------
def folder_dataset(root: str | Path, depth: int = 1, limit_per_class: int | None = None,
                   extensions: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
                   ) -> tuple[list[str], list[str], list[int]]:
    """Folder-per-class tree → (class names, file paths, class index per file).

    The class is the path of the first ``depth`` folders below ``root`` (``animals/birds`` at depth 2),
    turned into words: ``_``/``-`` become spaces and, at depth > 1, only the last folder names it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ImgragError(f"not a folder: {root}")
    exts = {e.lower() for e in extensions}
    by_class: dict[str, list[str]] = defaultdict(list)
    for dirpath, _dirs, files in os.walk(root):
        rel = Path(dirpath).relative_to(root).parts
        if len(rel) < depth:
            continue
        cls = "/".join(rel[:depth])
        for f in sorted(files):
            if os.path.splitext(f)[1].lower() in exts:
                by_class[cls].append(os.path.join(dirpath, f))
    classes = sorted(c for c in by_class if by_class[c])
    if len(classes) < 2:
        raise ImgragError(f"need at least two class folders (depth {depth}) with images under {root}")
    paths, targets = [], []
    for ci, c in enumerate(classes):
        files = sorted(by_class[c])[: limit_per_class or None]
        paths += files
        targets += [ci] * len(files)
    return classes, paths, targets


def class_words(cls: str) -> str:
    return cls.split("/")[-1].replace("_", " ").replace("-", " ").strip()


@dataclass
class ZeroShotReport:
    templates: str
    top1: float
    top5: float
    per_class: dict[str, float] = field(default_factory=dict)
    confusions: list[tuple[str, str, int]] = field(default_factory=list)  # (true, predicted, count)
    # top1/top5 (and per_class, confusions) are of the calibrated scores; these of the raw ones
    calibration: str = "none"
    top1_raw: float = 0.0
    top5_raw: float = 0.0


@dataclass
class ZeroShotRun:
    images: int  # evaluated (readable) images
    reports: list[ZeroShotReport]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not evaluated


def eval_zeroshot(embedder: "Embedder", root: str | Path, template_sets: Sequence[str] = ("none", "photo", "simple", "openai"),
                  depth: int = 1, limit_per_class: int | None = None, batch_size: int = 64,
                  max_pixels: int | None = None, calibration: str | None = "auto",
                  adapter: "Adapter | None" = None) -> ZeroShotRun:
    """Top-1/top-5 per template set; with calibration (queries/calibration.py) fitted on the evaluated
    images themselves (the collection being classified), beside the raw figures. With ``adapter`` the
    class vectors pass through it as in ``imgrag classify``."""
    from imgrag.retrieval.queries.calibration import fit, resolve_method
    from imgrag.retrieval.queries.classify import class_vectors, load_templates

    method = resolve_method(calibration)

    classes, paths, targets = folder_dataset(root, depth, limit_per_class)
    labels = [class_words(c) for c in classes]
    iv, ok, skipped = embed_readable_files(embedder, paths, batch_size, max_pixels=max_pixels)
    if adapter is not None:
        iv = adapter.apply_image(iv)
    y = np.asarray([targets[i] for i in ok])
    reports = []
    for ts in template_sets:
        w = class_vectors(embedder, labels, load_templates(ts))
        if adapter is not None:
            w = adapter.apply_text(w)
        sims = iv @ w.T
        raw_order = np.argsort(-sims, axis=1, kind="stable")
        c = fit(method, sims, embedder.logit_scale)
        order = np.argsort(-c.apply(sims), axis=1, kind="stable") if c else raw_order
        top1 = order[:, 0] == y
        top5 = (order[:, : min(5, len(classes))] == y[:, None]).any(axis=1)
        per = {labels[c]: float(top1[y == c].mean()) for c in range(len(classes)) if (y == c).any()}
        conf = Counter((labels[t], labels[p]) for t, p in zip(y, order[:, 0]) if t != p)
        top5_raw = (raw_order[:, : min(5, len(classes))] == y[:, None]).any(axis=1)
        reports.append(ZeroShotReport(ts, float(top1.mean()), float(top5.mean()), per,
                                      [(a, b, n) for (a, b), n in conf.most_common(10)],
                                      c.method if c else "none", float((raw_order[:, 0] == y).mean()),
                                      float(top5_raw.mean())))
    return ZeroShotRun(len(ok), reports, skipped)


def _print_skipped(skipped: list[tuple[str, str]], shown: int = 20) -> None:
    if not skipped:
        return
    print(f"skipped {len(skipped)} unreadable image{'s' if len(skipped) != 1 else ''} (not evaluated):")
    for p, reason in skipped[:shown]:
        print(f"  {display(p)}: {reason}")  # os.walk paths: a name that is not UTF-8 holds surrogates
    if len(skipped) > shown:
        print(f"  … and {len(skipped) - shown} more (--json lists all)")


def _skipped_json(skipped: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"path": display(p), "reason": r} for p, r in skipped]


# --- CLI ------------------------------------------------------------------------------------------------
def _model_and_adapter(args) -> tuple["Embedder", str, "Adapter | None", dict]:
    """``--model`` alone: that model, no adapter. ``--index DIR``: the index's model and its tuned adapter
    (``--no-adapter`` leaves it out, to compare)."""
    from imgrag.retrieval.embedders import load_embedder

    if not getattr(args, "index", None):
        if getattr(args, "no_adapter", False):
            raise ImgragError("--no-adapter needs --index DIR (an adapter lives in an index)")
        model = args.model or "lite"
        return (load_embedder(model, device=args.device, precision=args.precision, batch_size=args.batch_size),
                model, None, {})
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.tune import load_adapter

    index = Index.open(args.index, device=args.device, precision=args.precision)
    model = index.manifest.model
    if args.model and args.model != model:
        raise ImgragError(f"index {args.index} was built with model {model!r}, not {args.model!r}; drop --model "
                          "(with --index the index's model is evaluated)")
    adapter = None if getattr(args, "no_adapter", False) else load_adapter(index)
    return index.embedder, model, adapter, {"index": str(args.index), "adapter": adapter is not None}


def _adapter_note(extra: dict) -> str:
    if not extra:
        return ""
    return f" (index {extra['index']}, {'tuned adapter' if extra['adapter'] else 'no adapter'})"


def run_cli(args) -> int:
    emb, model, adapter, extra = _model_and_adapter(args)
    from imgrag.retrieval.imageio import pixel_limit

    max_pixels = pixel_limit(getattr(args, "max_megapixels", None))
    if args.eval_kind == "retrieval":
        r = eval_retrieval(emb, args.images, args.captions, args.batch_size, max_pixels=max_pixels, adapter=adapter)
        if args.json:
            print(json.dumps({"model": model, **extra, "images": r.images, "captions": r.captions,
                              "text_to_image": {f"R@{k}": v for k, v in r.text_to_image.items()},
                              "image_to_text": {f"R@{k}": v for k, v in r.image_to_text.items()},
                              "skipped": len(r.skipped), "unreadable": _skipped_json(r.skipped)}, indent=2))
        else:
            print(f"model {model}{_adapter_note(extra)}: {r.images} images, {r.captions} captions")
            _print_skipped(r.skipped)
            print(f"{'':14}" + "".join(f"{'R@' + str(k):>8}" for k in KS))
            for name, d in (("text→image", r.text_to_image), ("image→text", r.image_to_text)):
                print(f"{name:14}" + "".join(f"{100 * d[k]:>7.1f}%" for k in KS))
        return 0
    sets = args.templates or ["none", "photo", "simple", "openai"]
    from imgrag.retrieval.tune.adapter import tuned_calibration

    calibration = tuned_calibration(getattr(args, "calibration", "auto"), adapter is not None)  # as classify
    run = eval_zeroshot(emb, args.dir, sets, args.depth, args.limit_per_class, args.batch_size, max_pixels=max_pixels,
                        calibration=calibration, adapter=adapter)
    n, reps = run.images, run.reports
    if args.json:
        print(json.dumps({"model": model, **extra, "images": n, "skipped": len(run.skipped),
                          "unreadable": _skipped_json(run.skipped), "results": [r.__dict__ for r in reps]}, indent=2))
        return 0
    print(f"model {model}{_adapter_note(extra)}: {n} images, {len(reps[0].per_class)} classes")
    _print_skipped(run.skipped)
    calibrated = any(r.calibration != "none" for r in reps)
    print(f"{'templates':<10}{'top-1':>8}{'top-5':>8}" + (f"{'raw top-1':>11}{'raw top-5':>11}" if calibrated else ""))
    for r in reps:
        print(f"{r.templates:<10}{100 * r.top1:>7.1f}%{100 * r.top5:>7.1f}%"
              + (f"{100 * r.top1_raw:>10.1f}%{100 * r.top5_raw:>10.1f}%" if calibrated else ""))
    if calibrated:
        print(f"(top-1/top-5 with calibration {reps[0].calibration}; --calibration none for raw scores only)")
    best = max(reps, key=lambda r: r.top1)
    print(f"\nper-class top-1 ({best.templates}):")
    for c, a in sorted(best.per_class.items(), key=lambda kv: kv[1]):
        print(f"  {c:<30}{100 * a:>6.1f}%")
    if best.confusions:
        print("most confused (true → predicted: count):")
        for a, b, k in best.confusions[:5]:
            print(f"  {a} → {b}: {k}")
    sys.stdout.flush()
    return 0
