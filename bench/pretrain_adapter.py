#!/usr/bin/env python3
"""A pre-trained lite adapter from openly licensed image–text pairs that install offline (issue #15, part 5).

Data (fetched with the ordinary clients into bench/.cache/, git-ignored; nothing is installed):

* Debian ``openclipart-png`` + ``openclipart-svg`` (public domain, CC0 dedication): the PNG drawings, each
  paired with the title, keywords (``dc:subject``) and description of the SVG at the same path. **Only the
  ~20 % tune split** (``bench/make_eval_sets.py``: ``sha1(path) % 5 == 0``) is used, so the project's
  openclipart eval split and the openclipart drawings in data/samples (taken from the eval split; the sample
  builder refuses tune-split files, re-checked here from data/CREDITS.md) stay unseen.
* npm ``emoji-datasource-google`` 16.0.0 (MIT data; the Noto Emoji images are Apache-2.0): 64 px images
  with their Unicode names and short names. Share-alike sets (OpenMoji, CC BY-SA) are deliberately not used.

Training: the project's own ``tune`` code (retrieval/tune/train.py), SigLIP loss by default, text-side
residual adapter, caption-style supervision (one key per image, its texts as positives), 20 % validation
split with early stopping.

Evaluation, on held-out sets from other sources: data/samples + data/captions.tsv (text→image R@1/R@5 over
the 71 images, 147 captions; photos and clip art also separately), zero-shot top-1 over data/samples'
11 folders (raw, and calibrated as ``imgrag classify`` does by default), and the openclipart eval split
(``bench/make_eval_sets.py openclipart /tmp/oc-eval``; vectors cached by bench/tune_eval.py).

    python bench/make_eval_sets.py openclipart /tmp/oc-eval      # the eval split, then its vectors:
    python bench/tune_eval.py --model lite --oc /tmp/oc-eval --limit-per-class 48
    python bench/pretrain_adapter.py [--variants oc,oc:clip,emoji,oc+emoji] [--json out.json] [--save FILE]

Image vectors are cached in bench/.cache/pretrain_adapter/ (the lite model runs once per image).
"""
from __future__ import annotations

import argparse
import collections
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CACHE, ensure_imgrag_importable  # noqa: E402

ensure_imgrag_importable()
import make_eval_sets as mes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = CACHE / "pretrain_adapter"
EMOJI_PKG = "emoji-datasource-google@16.0.0"
SVG_PKG = "openclipart-svg"
PER_FOLDER = 60  # cap per openclipart folder: stars, flags and card decks would otherwise dominate


# -- data -----------------------------------------------------------------------------------------
def _deb_root(package: str, sub: str) -> Path:
    """Extracted ``/usr/share/openclipart/<sub>`` of a Debian package (apt-get download, dpkg-deb -x)."""
    dest = CACHE / f"{package}-extracted"
    root = dest / "usr/share/openclipart" / sub
    if root.is_dir():
        return root
    debs = sorted(CACHE.glob(f"{package}_*.deb"))
    if not debs:
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=CACHE, check=True)
        debs = sorted(CACHE.glob(f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(dest)], check=True)
    return root


def _svg_texts(svg: Path) -> tuple[str, list[str], str]:
    t = svg.read_text(errors="replace")[:200_000]

    def one(tag: str) -> str:
        m = re.search(rf"<dc:{tag}>(.*?)</dc:{tag}>", t, re.S)
        return " ".join(re.sub(r"<[^>]+>", " ", m.group(1)).split()) if m else ""

    subj = re.search(r"<dc:subject>(.*?)</dc:subject>", t, re.S)
    items = re.findall(r"<rdf:li>(.*?)</rdf:li>", subj.group(1), re.S) if subj else []
    kws = [k.strip().lower().replace("_", " ") for k in items]
    return one("title"), kws, one("description")


_JUNK_KW = {"hash", "unsorted", "mapsym", "png", "svg", "clip art", "clipart", "image", "media", "public domain"}


def openclipart_pairs() -> list[tuple[Path, list[str]]]:
    """(png, texts) for the tune split, at most PER_FOLDER per folder (sorted by sha1, as make_eval_sets)."""
    png_root = _deb_root("openclipart-png", "png")
    svg_root = _deb_root(SVG_PKG, "svg")
    files = [f for f in mes.list_files(png_root) if mes.in_tune_split(f)]
    by_folder: dict[str, list[str]] = collections.defaultdict(list)
    for f in files:
        by_folder[f.rsplit("/", 1)[0]].append(f)
    chosen = [f for v in by_folder.values()
              for f in sorted(v, key=lambda f: hashlib.sha1(f.encode()).hexdigest())[:PER_FOLDER]]
    meta = {}
    for f in chosen:
        svg = svg_root / (f[:-4] + ".svg")
        meta[f] = _svg_texts(svg) if svg.is_file() else ("", [], "")
    title_count = collections.Counter(m[0].lower() for m in meta.values())
    out = []
    for f in sorted(chosen):
        texts = drawing_texts(f, *meta[f], title_count)
        if texts:
            out.append((png_root / f, texts))
    return out


def drawing_texts(rel: str, title: str, kws: list[str], desc: str, title_count: dict[str, int]) -> list[str]:
    """A drawing's texts: its title (or file name), its keywords, its description."""
    texts = []
    # a title shared by many drawings names a collection ("gramastar", "AIGA_Symbol_Signs"), not the drawing
    if title and title_count.get(title.lower(), 0) <= 3 and "collection" not in title.lower() and len(title) <= 80:
        texts.append(title.replace("_", " "))
    else:  # the file name, without a trailing number
        stem = re.sub(r"[_\-.]*\d*$", "", Path(rel).stem).replace("_", " ").strip()
        if len(stem) >= 3:
            texts.append(stem)
    kws = [k for k in dict.fromkeys(kws) if k and k not in _JUNK_KW and re.search("[a-z]{3}", k)
           and not k.startswith("0x")]
    if kws:
        texts.append(", ".join(kws[:8]))
    first = texts[0].lower() if texts else ""
    if desc and 3 <= len(desc) <= 120 and "http" not in desc and desc.lower() != first:
        texts.append(desc)
    return texts


def emoji_pairs() -> list[tuple[Path, list[str]]]:
    """(png, texts) of emoji-datasource-google: the Unicode name and the short names."""
    base = CACHE / "emoji"
    pkg = base / "package"
    if not (pkg / "emoji.json").is_file():
        base.mkdir(parents=True, exist_ok=True)
        tgz = sorted(base.glob("emoji-datasource-google-*.tgz"))
        if not tgz:
            npm = shutil.which("npm") or sys.exit("npm not found: install it or leave emoji out of --variants")
            subprocess.run([npm, "pack", EMOJI_PKG], cwd=base, check=True)
            tgz = sorted(base.glob("emoji-datasource-google-*.tgz"))
        with tarfile.open(tgz[-1]) as tf:
            tf.extractall(base, members=[m for m in tf.getmembers() if m.name in (
                "package/emoji.json", "package/LICENSE", "package/package.json") or m.name.startswith(
                "package/img/google/64/")])
    out = []
    for e in json.loads((pkg / "emoji.json").read_text()):
        img = pkg / "img/google/64" / e["image"]
        if not e.get("has_img_google") or not img.is_file() or e["category"] == "Component":
            continue
        texts = emoji_texts(e)
        if texts:
            out.append((img, texts))
    return out


def emoji_texts(entry: dict) -> list[str]:
    """An emoji's texts: its Unicode name ("grinning face") and its other short names ("grinning")."""
    name = (entry.get("name") or "").lower()
    texts = [name] if name else []
    for s in entry.get("short_names", []):
        s = s.replace("_", " ").replace("-", " ")
        if s not in texts:
            texts.append(s)
    return texts


def embed_cached(emb, items: list[tuple[Path, list[str]]], tag: str) -> tuple[np.ndarray, list[int]]:
    """Vectors of the images (decode failures left out), cached by path under bench/.cache/pretrain_adapter/."""
    from imgrag.retrieval.tune.data import _decode

    cache = OUT / f"{tag}-{emb.model_id.replace(':', '_')}.npz"
    known: dict[str, np.ndarray] = {}
    if cache.is_file():
        z = np.load(cache)
        known = dict(zip(z["paths"].tolist(), z["vectors"]))
    keys = [str(p.relative_to(CACHE)) for p, _ in items]
    todo = [k for k, key in enumerate(keys) if key not in known]
    print(f"  {tag}: {len(items) - len(todo)} cached, {len(todo)} to embed", file=sys.stderr, flush=True)
    for i in range(0, len(todo), 64):
        chunk = todo[i : i + 64]
        imgs = [_decode(str(items[k][0]), emb.image_size) for k in chunk]
        ok = [j for j, im in enumerate(imgs) if not isinstance(im, Exception)]
        if ok:
            known.update(zip([keys[chunk[j]] for j in ok], emb.embed_images([imgs[j] for j in ok])))
        if (i // 64) % 5 == 4 or i + 64 >= len(todo):
            OUT.mkdir(parents=True, exist_ok=True)
            np.savez(cache, paths=np.array(list(known)), vectors=np.stack(list(known.values())).astype(np.float32))
            print(f"  {tag}: embedded {i + len(chunk)}/{len(todo)}", file=sys.stderr, flush=True)
    keep = [k for k, key in enumerate(keys) if key in known]
    return np.stack([known[keys[k]] for k in keep]).astype(np.float32), keep


# -- leakage checks -------------------------------------------------------------------------------
def sample_sources() -> dict[str, str]:
    """data/samples file → its source as data/CREDITS.md lists it (package path for openclipart)."""
    out = {}
    for line in (ROOT / "data" / "CREDITS.md").read_text().splitlines():
        cells = [c.strip().strip("`") for c in line.split("|")]
        if len(cells) > 3 and cells[1].count("/") == 1 and "." in cells[1]:
            out[cells[1]] = cells[2]
    return out


def leakage(train_png: list[Path], train_vecs: np.ndarray, samples: dict, oc: dict | None) -> dict:
    """How the held-out sets were kept out of training, checked on files, paths and vectors."""
    png_root = _deb_root("openclipart-png", "png")
    rels = [p.relative_to(png_root).as_posix() for p in train_png]
    assert all(mes.in_tune_split(r) for r in rels), "a training drawing is outside the tune split"
    src = sample_sources()
    # a source may be a symlink to the same drawing filed elsewhere: the split applies to the real file
    oc_samples = {f: (png_root / s).resolve().relative_to(png_root.resolve()).as_posix()
                  for f, s in src.items() if not s.startswith("scikit")}
    in_tune = [s for s in oc_samples.values() if mes.in_tune_split(s)]
    assert not in_tune and not set(oc_samples.values()) & set(rels), f"samples drawn from training files: {in_tune}"
    digest = {hashlib.sha1(p.read_bytes()).hexdigest() for p in train_png}
    out = {"train_outside_tune_split": 0, "sample_drawings_from_openclipart": len(oc_samples),
           "sample_drawings_in_tune_split": len(in_tune)}

    def near(v: np.ndarray) -> np.ndarray:
        return (v @ train_vecs.T).max(axis=1) if len(train_vecs) else np.zeros(len(v))

    out["samples_near_duplicate_vectors"] = int((near(samples["vectors"]) >= 0.995).sum())
    if oc is not None:
        oc_dir = Path(oc.get("root", ""))
        same = sum(hashlib.sha1((oc_dir / p).read_bytes()).hexdigest() in digest
                   for p in oc["paths"].tolist() if (oc_dir / p).is_file())
        out["oc_eval_identical_files"] = int(same)
        out["oc_eval_near_duplicate_vectors"] = int((near(oc["vectors"]) >= 0.995).sum())
    return out


# -- evaluation -----------------------------------------------------------------------------------
def load_samples(emb) -> dict:
    from imgrag.retrieval.queries.evaluate import read_captions
    from imgrag.retrieval.tune.data import _decode

    caps = read_captions(ROOT / "data" / "captions.tsv")
    images = sorted({p for p, _ in caps})
    cache = CACHE / "tune_eval" / f"samples-{emb.model_id.replace(':', '_').replace('/', '_')}.npz"
    if cache.is_file():  # shared with bench/tune_eval.py (same order: sorted caption paths)
        iv = np.load(cache)["vectors"]
    else:
        iv = emb.embed_images([_decode(str(ROOT / "data" / "samples" / p), emb.image_size) for p in images])
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, vectors=iv)
    col = {p: i for i, p in enumerate(images)}
    src = sample_sources()
    photo = np.array([src.get(p, "").startswith("scikit") for p in images])
    return {"images": images, "vectors": np.asarray(iv, np.float32), "captions": [c for _, c in caps],
            "cap_keys": np.array([col[p] for p, _ in caps]), "photo": photo,
            "folders": np.array([p.split("/")[0] for p in images])}


def retrieval_figures(tv: np.ndarray, iv: np.ndarray, keys: np.ndarray, sel: np.ndarray) -> dict:
    order = np.argsort(-(tv[sel] @ iv.T), axis=1)
    k = keys[sel]
    return {"queries": int(sel.sum()), "r1": float(np.mean(order[:, 0] == k)),
            "r5": float(np.mean((order[:, :5] == k[:, None]).any(axis=1)))}


def zeroshot_figures(iv: np.ndarray, w: np.ndarray, y: np.ndarray, logit_scale: float) -> dict:
    from imgrag.retrieval.queries.calibration import fit

    sims = iv @ w.T
    c = fit("auto", sims, logit_scale)
    out = {}
    for name, s in (("raw", sims), ("calibrated", c.apply(sims) if c else sims)):
        order = np.argsort(-s, axis=1)
        out[f"top1_{name}"] = float(np.mean(order[:, 0] == y))
        out[f"top5_{name}"] = float(np.mean((order[:, :5] == y[:, None]).any(axis=1)))
    out["max_per_label_raw"] = int(np.bincount(sims.argmax(axis=1), minlength=w.shape[0]).max())
    return out


def evaluate_all(emb, adapter, samples: dict, oc: dict | None, cache: dict) -> dict:
    """Every held-out figure, with ``adapter`` (None = the raw lite model)."""
    from imgrag.retrieval.queries.classify import class_vectors, load_templates
    from imgrag.retrieval.queries.evaluate import class_words

    def text(t):
        return adapter.apply_text(t) if adapter is not None else t

    if "cap_tv" not in cache:
        cache["cap_tv"] = np.asarray(emb.embed_texts(samples["captions"]), np.float32)
    tv, iv, keys = text(cache["cap_tv"]), samples["vectors"], samples["cap_keys"]
    photo_q = samples["photo"][keys]
    out = {"samples_retrieval": retrieval_figures(tv, iv, keys, np.ones(len(keys), bool)),
           "samples_retrieval_photos": retrieval_figures(tv, iv, keys, photo_q),
           "samples_retrieval_clipart": retrieval_figures(tv, iv, keys, ~photo_q)}
    labels = sorted(set(samples["folders"].tolist()))
    if "samples_w" not in cache:
        cache["samples_w"] = class_vectors(emb, labels, load_templates("simple"))
    y = np.array([labels.index(f) for f in samples["folders"]])
    out["samples_zeroshot"] = {"classes": len(labels), "images": len(y),
                               **zeroshot_figures(iv, text(cache["samples_w"]), y, emb.logit_scale)}
    if oc is not None:
        names = [class_words(str(c)) for c in oc["classes"]]
        if "oc_w" not in cache:
            cache["oc_w"] = class_vectors(emb, names, load_templates("simple"))
        out["oc_eval_zeroshot"] = {"classes": len(names), "images": len(oc["targets"]),
                                   **zeroshot_figures(oc["vectors"], text(cache["oc_w"]), oc["targets"],
                                                      emb.logit_scale)}
    return out


# -- training -------------------------------------------------------------------------------------
def supervision(emb, sets: list[str], vectors: dict, pairs: dict):
    """Caption-style supervision: one key per image, its texts as positives (tune's ``--captions`` shape)."""
    from imgrag.retrieval.tune.data import Supervision

    ids, vecs, texts, tkeys = [], [], [], []
    for s in sets:
        v, keep = vectors[s]
        for row, k in enumerate(keep):
            path, ts = pairs[s][k]
            key = len(ids)
            ids.append(str(path.relative_to(CACHE)))
            vecs.append(v[row])
            texts += ts
            tkeys += [key] * len(ts)
    tv = np.asarray(emb.embed_texts(texts), np.float32)
    return Supervision("+".join(sets), "captions", ids, np.stack(vecs), np.arange(len(ids)), texts, tv,
                       np.array(tkeys), ids)


def fingerprint_meta(emb, sup, res, cfg) -> dict:
    from dataclasses import asdict
    from datetime import datetime, timezone

    return {"model": emb.model_id, "model_fingerprint": emb.fingerprint(), "dim": emb.dim,
            "data_digest": sup.digest(), "supervision": {**sup.summary(), "source": f"pretrained: {sup.source}"},
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "config": asdict(cfg),
            "validation": res.to_json(), "sources": {
                "oc": "Debian openclipart-png + openclipart-svg 1:0.18+dfsg-19, tune split (public domain)",
                "emoji": "npm emoji-datasource-google 16.0.0 (MIT; Noto Emoji images Apache-2.0)"}}


def load_oc_eval(path: Path, root: Path) -> dict | None:
    if not path.is_file():
        print(f"  no openclipart eval vectors at {path} (run bench/tune_eval.py first); skipped", file=sys.stderr)
        return None
    z = np.load(path)
    return {**{k: z[k] for k in z.files}, "root": str(root)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="lite")
    ap.add_argument("--variants", default="oc,oc:clip,emoji,oc+emoji",
                    help="comma-separated runs SETS[:LOSS] (sets oc, emoji joined by +; loss siglip (default) or clip)")
    ap.add_argument("--oc-eval", type=Path, default=CACHE / "tune_eval" / "oc-lite-48.npz",
                    help="openclipart eval-split vectors cached by bench/tune_eval.py --limit-per-class 48")
    ap.add_argument("--oc-eval-root", type=Path, default=Path("/tmp/oc-eval"), help="its image folder (leakage check)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shrink", type=lambda t: [float(x) for x in t.split(",") if x], default=[0.25, 0.5],
                    help="also evaluate each adapter with its weights scaled by these factors (reported, not chosen)")
    ap.add_argument("--save", type=Path, help="write the adapter of the first variant/loss here (adapter.npz format)")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.tune.adapter import Adapter
    from imgrag.retrieval.tune.train import TuneConfig, train_adapter

    emb = load_embedder(args.model, device="cpu", precision="fp32")
    runs = [(v.split(":")[0].split("+"), (v.split(":") + ["siglip"])[1]) for v in args.variants.split(",")]
    variants = [r[0] for r in runs]
    sets = sorted({s for v in variants for s in v})
    pairs = {s: {"oc": openclipart_pairs, "emoji": emoji_pairs}[s]() for s in sets}
    vectors = {s: embed_cached(emb, pairs[s], {"oc": "openclipart-tune", "emoji": "emoji-google"}[s]) for s in sets}
    samples = load_samples(emb)
    oc = load_oc_eval(args.oc_eval, args.oc_eval_root)
    result: dict = {"model": args.model, "seed": args.seed,
                    "training_sets": {s: {"images": len(vectors[s][1]),
                                          "texts": sum(len(pairs[s][k][1]) for k in vectors[s][1])} for s in sets}}
    if "oc" in sets:
        v, keep = vectors["oc"]
        result["leakage"] = leakage([pairs["oc"][k][0] for k in keep], v, samples, oc)
    cache: dict = {}
    result["raw"] = evaluate_all(emb, None, samples, oc, cache)
    result["runs"] = []
    sups: dict[str, object] = {}
    for v, loss in runs:
        name = "+".join(v)
        if name not in sups:
            sups[name] = supervision(emb, v, vectors, pairs)
        sup = sups[name]
        cfg = TuneConfig(loss=loss, seed=args.seed)
        res = train_adapter(sup, cfg)
        res.adapter.meta.update(fingerprint_meta(emb, sup, res, cfg))
        run = {"train": name, "loss": loss, "images": len(sup.item_ids), "texts": len(sup.texts),
               "epochs": res.epochs, "best_epoch": res.best_epoch, "validation": res.to_json(),
               "data_digest": sup.digest(), **evaluate_all(emb, res.adapter, samples, oc, cache)}
        for a in args.shrink:  # v + a·W v: a milder adapter, between the raw model (0) and the trained one (1)
            mild = Adapter(res.adapter.text_w * a, None, res.adapter.meta)
            run.setdefault("shrink", {})[str(a)] = evaluate_all(emb, mild, samples, oc, cache)
        result["runs"].append(run)
        print(json.dumps({k: run[k] for k in ("train", "loss", "samples_retrieval", "samples_zeroshot")}),
              file=sys.stderr, flush=True)
        if args.save and len(result["runs"]) == 1:
            args.save.parent.mkdir(parents=True, exist_ok=True)
            args.save.write_bytes(res.adapter.to_bytes())
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
