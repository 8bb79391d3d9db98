"""The ``imgrag`` command line.

Every user error ends as one line on stderr (``imgrag: error: ...``) and a non-zero exit code; a
traceback is shown only with ``--debug``. ``--json`` prints machine-readable results on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime
from typing import Any, Sequence

from imgrag.retrieval.errors import BadQueryError, ImgragError

EPILOG_INDEX = """examples:
  imgrag index ~/Pictures                          # default model, embedded LanceDB store
  imgrag index ~/Pictures --model lite             # offline model shipped with imgrag[lite]
  imgrag index ~/Pictures --store faiss --faiss-factory HNSW32
  imgrag index ~/Pictures --model ViT-B-32:/models/open_clip_pytorch_model.bin
Re-running only embeds new and changed files; deleted files are removed; a crashed or interrupted run
continues where it stopped."""

EPILOG_SEARCH = """query syntax:
  imgrag search "a dog on a beach"
  imgrag search --image photo.jpg                  # more like this (the image itself is excluded)
  imgrag search "beach + 0.5*image:photo.jpg - people"   # weighted terms, '-' subtracts
  imgrag search "cat" --path "*/2019/*" --after 2019-06-01 --min-score 0.2"""


def _date(s: str) -> datetime:
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {s!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _nonneg_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def build_parser() -> argparse.ArgumentParser:
    from imgrag.retrieval.embedders import DEFAULT_MODEL

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--index", metavar="DIR",
                        help="index directory or object-storage URI such as s3://bucket/prefix "
                             "(default: $IMGRAG_INDEX or ~/.local/share/imgrag/index)")
    common.add_argument("--device", default="auto", help="auto (cuda → mps → cpu), cpu, cuda, cuda:N, mps")
    common.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="auto: fp16 on CUDA; bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32 "
                             "(the lite model stays fp32 under auto)")
    common.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    common.add_argument("--debug", action="store_true", help="show tracebacks for errors")

    p = argparse.ArgumentParser(prog="imgrag", description="Search, classify and ask questions about image and PDF collections by meaning (CLIP/SigLIP embeddings in LanceDB or FAISS; answers from a vision-language model, citing the images).")
    p.add_argument("--version", action="version", version=f"imgrag {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # index
    pi = sub.add_parser("index", parents=[common], help="index images under one or more folders",
                        description="Embed every image and PDF page under PATH... into the index (incremental, resumable).",
                        epilog=EPILOG_INDEX, formatter_class=argparse.RawDescriptionHelpFormatter)
    pi.add_argument("paths", nargs="+", metavar="PATH", help="folders, image files or PDFs")
    pi.add_argument("--model", help=f"embedding model spec (default for a new index: {DEFAULT_MODEL}; "
                                    "'lite' = offline model). An existing index keeps its model.")
    pi.add_argument("--store", choices=["lancedb", "faiss"], help="vector store for a new index (default lancedb)")
    pi.add_argument("--faiss-factory", metavar="STR", help="FAISS index factory string (default Flat), e.g. HNSW32, IVF4096,SQ8")
    pi.add_argument("--batch-size", type=_positive_int, default=64, help="images per forward pass (default 64)")
    pi.add_argument("--workers", type=_nonneg_int, default=None,
                    help="decode worker processes (default: one per core on CPU, cores-1 with a GPU, 1..8; "
                         "0 = decode in the main process)")
    pi.add_argument("--no-draft", dest="draft", action="store_false",
                    help="decode JPEGs at full size (default: reduced-size DCT decoding to the model's resolution)")
    pi.add_argument("--commit-every", type=_positive_int, default=1024, help="rows per atomic commit (default 1024)")
    pi.add_argument("--retry-skipped", action="store_true", help="retry files that failed before even if unchanged")
    pi.add_argument("--no-prune", dest="prune", action="store_false", help="keep rows of files deleted from disk")
    pi.add_argument("--rebuild", action="store_true", help="delete the index contents and start over")
    pi.add_argument("--dpi", type=float, default=150.0,
                    help="PDF pages: render resolution in dots per inch (default 150)")
    pi.add_argument("--page-tiles", type=_nonneg_int, default=2,
                    help="PDF pages: square tiles embedded besides the whole padded page for tall pages "
                         "(dense text pages get a 2x2 grid instead), averaged into the page's vector "
                         "(default 2; 0 = whole page only)")
    pi.add_argument("--ocr", action="store_true",
                    help="also OCR images (screenshots, scans) so their text is searchable (needs tesseract; "
                         "decodes at full size)")
    pi.add_argument("--no-ocr", dest="ocr_pages", action="store_const", const="off", default="auto",
                    help="do not OCR PDF pages without a text layer (default: OCR them when tesseract is installed)")
    pi.add_argument("--json", action="store_true", help="print the run report as JSON")
    pi.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    pi.add_argument("--engine", choices=["local", "ray"], default="local",
                    help="local (default): this machine; ray: a Ray cluster (decode tasks, one model per embedding "
                         "actor, Lance fragments written in parallel; LanceDB indexes; needs imgrag[distributed])")
    pi.add_argument("--ray-address", metavar="ADDR",
                    help="with --engine ray: the cluster to join (auto, HOST:6379, ray://HOST:10001; "
                         "default $RAY_ADDRESS, else a local cluster on this machine)")
    pi.add_argument("--ray-actors", type=_positive_int, metavar="N",
                    help="with --engine ray: embedding actors (default: one per GPU, num_gpus=1 each; 1 on CPU clusters)")

    # search
    ps = sub.add_parser("search", parents=[common], help="search by text, by example image, or both",
                        epilog=EPILOG_SEARCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    ps.add_argument("query", nargs="*", help="text query; terms joined by ' + ' / ' - ', optional weights 0.5*term")
    ps.add_argument("--image", action="append", default=[], metavar="FILE", help="query image (repeatable; FILE or W*FILE)")
    ps.add_argument("-k", "--top-k", dest="k", type=_positive_int, default=10, help="number of results (default 10)")
    _filter_args(ps)
    ps.add_argument("--mode", choices=["auto", "vector", "text", "hybrid"], default="auto",
                    help="vector (embedding), text (keywords in page text / OCR), hybrid (both, fused by "
                         "reciprocal rank fusion); auto (default): hybrid when the index holds text, else vector")
    ps.add_argument("--weights", metavar="V,T", default=None,
                    help="hybrid: weights of the vector and text rankings in the fusion (default: 0.5,1 for "
                         "the lite model, else 1,1)")
    ps.add_argument("--vector-gate", type=float, default=None, metavar="G",
                    help="hybrid: fuse the vector ranking only when its best cosine exceeds its candidates' "
                         "median by G (default: 0.10 for the lite model, else 0 = always)")
    ps.add_argument("--min-score", type=float, help="hide results with cosine similarity below this")
    ps.add_argument("--sort-date", action="store_true", help="order results by capture date (after the cutoff)")
    ps.add_argument("--json", action="store_true", help="print results as JSON")

    # classify
    pc = sub.add_parser("classify", parents=[common], help="zero-shot classification with prompt templates",
                        description="Classify the whole index (default), one image (--image) or the results of a "
                                    "query (--query) into the given labels.")
    g = pc.add_mutually_exclusive_group(required=True)
    g.add_argument("--labels", help="comma-separated labels, e.g. 'cat,dog,car'")
    g.add_argument("--labels-file", metavar="FILE", help="one label per line")
    pc.add_argument("--templates", default="simple",
                    help="prompt templates: simple (default, 7 prompts), openai (80), photo, none, or a file with one '{}' template per line")
    pc.add_argument("--image", metavar="FILE", help="classify this image")
    pc.add_argument("--query", metavar="TEXT", help="classify the top-k results of this search")
    pc.add_argument("-k", "--top-k", dest="k", type=_positive_int, default=20, help="results to classify with --query")
    pc.add_argument("--top", type=_positive_int, default=3, help="labels shown per image (default 3)")
    pc.add_argument("--threshold", action="append", default=[], metavar="LABEL=P",
                    help="minimum probability for LABEL to be assigned (repeatable; '*=P' for all)")
    pc.add_argument("--write", action="store_true", help="store each image's top label and probability in the index")
    pc.add_argument("--limit", type=_positive_int, default=50, help="rows printed for whole-index runs (default 50)")
    _filter_args(pc)
    pc.add_argument("--json", action="store_true", help="print predictions as JSON (all rows)")

    # info
    pn = sub.add_parser("info", parents=[common], help="index statistics, model, store and skipped files")
    pn.add_argument("--errors", action="store_true", help="list files that could not be indexed, with reasons")
    pn.add_argument("--json", action="store_true")

    # ask (only when the answer module is installed in this build)
    if _available("imgrag.retrieval.queries.answer"):
        _add_ask(sub, common)
    if _available("imgrag.app.web.server"):
        _add_serve(sub, common)

    # eval
    pe = sub.add_parser("eval", parents=[common], help="measure retrieval / zero-shot quality of a model on your data")
    esub = pe.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    er = esub.add_parser("retrieval", parents=[common], help="text↔image Recall@1/5/10 from a captions file")
    er.add_argument("--images", required=True, metavar="DIR")
    er.add_argument("--captions", required=True, metavar="FILE", help="TSV: relative/path.jpg<TAB>caption (several lines per image allowed)")
    er.add_argument("--model", default="lite")
    er.add_argument("--batch-size", type=_positive_int, default=64)
    er.add_argument("--json", action="store_true")
    ez = esub.add_parser("zeroshot", parents=[common], help="top-1/top-5 accuracy on a folder-per-class tree")
    ez.add_argument("dir", metavar="DIR")
    ez.add_argument("--model", default="lite")
    ez.add_argument("--templates", action="append", default=None,
                    help="template set(s) to compare (repeatable; default: none, photo, simple, openai)")
    ez.add_argument("--depth", type=_positive_int, default=1, help="folder depth that names the class (default 1)")
    ez.add_argument("--limit-per-class", type=int, default=None)
    ez.add_argument("--batch-size", type=_positive_int, default=64)
    ez.add_argument("--json", action="store_true")
    return p


def _available(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _add_ask(sub, common) -> None:
    pa = sub.add_parser("ask", parents=[common], help="answer a question from the retrieved images, citing them")
    pa.add_argument("question")
    pa.add_argument("-k", "--k", "--top-k", dest="k", type=_positive_int, default=8, help="images retrieved (default 8)")
    pa.add_argument("--max-images", type=_positive_int, default=4, help="images passed to the generator (default 4)")
    pa.add_argument("--generator", default=None,
                    help="hf:HUB_ID_OR_DIR, anthropic:MODEL, openai:MODEL or smollm2 (default: smollm2, offline)")
    pa.add_argument("--min-score", type=float, default=None,
                    help="if the best match scores below this, say the collection does not contain the answer "
                         "(default per embedding model: lite 0.25, CLIP 0.18, SigLIP 0.05; -1 disables)")
    pa.add_argument("--rerank", action="store_true",
                    help="re-order the retrieved images by how many of the question's words their text evidence "
                         "(file name, labels, text) holds, before choosing which to send")
    _filter_args(pa)
    pa.add_argument("--json", action="store_true")


def _add_serve(sub, common) -> None:
    pv = sub.add_parser("serve", parents=[common], help="start the web UI")
    pv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    pv.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    pv.add_argument("--auth", metavar="USER:PASS", help="require this login (recommended with --host 0.0.0.0)")
    pv.add_argument("--generator", default=None, help="generator for the Ask tab (default smollm2)")
    pv.add_argument("--max-upload-mb", type=float, default=25, metavar="MB",
                    help="largest accepted upload in megabytes (default 25)")
    pv.add_argument("--max-upload-mp", type=float, default=50, metavar="MP",
                    help="largest accepted upload in megapixels, checked before decoding (default 50)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", dest="path_glob", metavar="GLOB", help="only paths matching this glob ('*' spans folders)")
    p.add_argument("--after", type=_date, metavar="DATE", help="captured on or after DATE (EXIF)")
    p.add_argument("--before", type=_date, metavar="DATE", help="captured on or before DATE (EXIF)")
    p.add_argument("--min-width", type=int, metavar="PX")
    p.add_argument("--label", help="only images whose stored label (classify --write) is LABEL")


def _filters(args):
    from imgrag.retrieval.stores.base import Filters

    f = Filters(path_glob=args.path_glob, taken_after=args.after, taken_before=args.before,
                min_width=args.min_width, label=args.label)
    return None if f.is_empty() else f


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("imgrag")
    except Exception:  # noqa: BLE001
        return "unknown"


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str, ensure_ascii=False))


def _safe(s: str) -> str:
    """Printable form of a path (file names may hold control characters)."""
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in str(s))


# ---------------------------------------------------------------------------------------------------
def cmd_index(args) -> int:
    from imgrag.indexer.pipeline import IndexOptions, build_index
    from imgrag.retrieval.embedders import DEFAULT_MODEL, load_embedder
    from imgrag.retrieval.index import Index, Manifest, default_index_dir

    from imgrag.retrieval.location import is_uri

    if args.engine == "ray":
        from imgrag.indexer.ray_engine import import_ray

        import_ray()  # fail fast, before loading a model, when the extra is missing
    elif any(is_uri(p) for p in args.paths):
        raise ImgragError("object-storage sources (s3://, gs://, az://) need --engine ray")
    if args.engine != "ray" and (args.ray_address or args.ray_actors):
        raise ImgragError("--ray-address and --ray-actors need --engine ray")
    if args.engine == "ray" and args.ocr:
        raise ImgragError("--ocr needs the local engine (imgrag index without --engine ray)")
    root = args.index or default_index_dir()
    existing = Manifest.load(root) if Manifest.exists(root) and not args.rebuild else None
    model = args.model or (existing.model if existing else DEFAULT_MODEL)
    store = args.store or (existing.store if existing else "lancedb")
    opts = {}
    if args.faiss_factory:
        if store != "faiss":
            raise ImgragError("--faiss-factory needs --store faiss")
        opts["factory"] = args.faiss_factory
    def make_embedder():
        return load_embedder(model, device=args.device, precision=args.precision, batch_size=args.batch_size)

    # a new index, or a --model to check against the index now (its spelling may differ): build it here;
    # otherwise the model loads (and is checked against the index) only if a file needs embedding
    eager = existing is None or (args.model is not None and args.model != existing.model)
    index = Index.create_or_open(root, make_embedder() if eager else make_embedder, store=store,
                                 store_options=opts, rebuild=args.rebuild)
    if not args.dpi > 0 or args.dpi > 1200:
        raise ImgragError(f"--dpi must be between 1 and 1200, got {args.dpi:g}")
    options = IndexOptions(batch_size=args.batch_size, workers=args.workers, draft=args.draft,
                           commit_every=args.commit_every, retry_skipped=args.retry_skipped, prune=args.prune,
                           dpi=args.dpi, page_tiles=args.page_tiles, ocr_images=args.ocr, ocr_pages=args.ocr_pages)
    bar = None
    cb = None
    if args.progress and not args.json and sys.stderr.isatty() or (args.progress and os.environ.get("IMGRAG_PROGRESS") == "1"):
        from tqdm import tqdm

        def cb(p):
            nonlocal bar
            if bar is None:
                bar = tqdm(total=p.total, unit="img", desc="indexing", dynamic_ncols=True)
            bar.n = p.done
            bar.set_postfix(embedded=p.embedded, reused=p.reused, skipped=p.skipped, refresh=False)
            bar.refresh()
    try:
        if args.engine == "ray":
            from imgrag.indexer.ray_engine import RayOptions, build_index_ray

            ropts = RayOptions(address=args.ray_address, actors=args.ray_actors, batch_size=args.batch_size,
                               commit_every=max(args.commit_every, 1), draft=args.draft,
                               retry_skipped=args.retry_skipped, prune=args.prune, device=args.device,
                               precision=args.precision)
            rep = build_index_ray(index, args.paths, ropts, progress=cb)
        else:
            rep = build_index(index, args.paths, options, progress=cb)
    finally:
        if bar is not None:
            bar.close()
    if args.json:
        _print_json(rep.to_dict())
    else:
        print(f"indexed {rep.embedded} new/changed images ({rep.reused} reused by content hash), "
              f"{rep.unchanged} unchanged, {rep.deleted} removed, {len(rep.skipped)} skipped; "
              f"{rep.total_items} items in {index.root} [{index.manifest.model}, {index.manifest.store}] "
              f"in {rep.seconds.get('total', 0):.1f}s ({rep.images_per_s:.1f} img/s)")
        if rep.pages:
            print(f"documents: {rep.documents} PDFs, {rep.pages} pages ({rep.ocr_pages} OCR'd)")
        if rep.pages_without_text:
            from imgrag.retrieval.ocr import INSTALL_HINT

            print(f"note: {rep.pages_without_text} PDF pages have no text layer and were not OCR'd, so keyword search "
                  f"cannot find them; " + ("OCR was turned off (--no-ocr)" if args.ocr_pages == "off" else INSTALL_HINT)
                  + ", then re-run with --rebuild", file=sys.stderr)
        if rep.skipped:
            print(f"skipped files: see `imgrag info --errors --index {index.root}`")
    if rep.interrupted:
        print("interrupted: committed work is kept; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


def _open_index(args):
    from imgrag.retrieval.index import Index

    return Index.open(args.index, device=args.device, precision=args.precision)


def _hit_dict(h) -> dict:
    r = h.row
    return {"path": h.path, "score": round(float(h.score), 6), "id": h.id, "page": r.get("page"),
            "taken_at": r.get("taken_at"), "width": r.get("width"), "height": r.get("height"),
            "label": r.get("label"),
            **({"snippet": r.get("snippet"), "match_spans": r.get("match_spans")} if r.get("snippet") else {}),
            **{k: r[k] for k in ("rank_vector", "rank_text") if r.get(k) is not None}}


def cmd_search(args) -> int:
    from imgrag.retrieval.queries.search import Term, parse_query, search

    terms: list = []
    text = " ".join(args.query).strip()
    if text:
        terms.extend(parse_query(text))
    for spec in args.image:
        w = 1.0
        if "*" in spec:
            head, tail = spec.split("*", 1)
            try:
                w, spec = float(head), tail
            except ValueError:
                pass
        path = os.path.abspath(os.path.expanduser(spec))
        if not os.path.isfile(path):
            raise BadQueryError(f"query image not found: {spec}")
        terms.append(Term("image", path, w))
    if not terms:
        raise BadQueryError("give a text query and/or --image FILE")
    from imgrag.retrieval.queries.hybrid import add_snippets, resolve_mode, search_documents

    plain = len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1.0
    index = _open_index(args)
    mode = args.mode
    if not plain:
        if mode in ("text", "hybrid"):
            raise BadQueryError(f"--mode {mode} needs a plain text query (no images, weights or '+'/'-' terms)")
        mode = "vector"
    mode = resolve_mode(index, mode)
    if mode == "vector":
        hits = search(index, terms, k=args.k, filters=_filters(args), min_score=args.min_score,
                      sort_by_date=args.sort_date)
        hits = add_snippets(hits, text) if text else hits
    else:
        hits = search_documents(index, text, k=args.k, mode=mode, filters=_filters(args), weights=args.weights,
                                min_score=args.min_score, vector_gate=args.vector_gate)
        if args.sort_date:
            hits.sort(key=lambda h: (h.row.get("taken_at") is None, h.row.get("taken_at") or 0))
    if args.json:
        _print_json([_hit_dict(h) for h in hits])
        return 0
    if not hits:
        print("no results")
    bold = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    for rank, h in enumerate(hits, 1):
        date = h.row.get("taken_at")
        extra = f"  {date:%Y-%m-%d}" if date else ""
        page = f" (page {h.row['page']})" if h.row.get("page") else ""
        print(f"{rank:>3}  {h.score:.4f}  {_safe(h.path)}{page}{extra}")
        if h.row.get("snippet"):
            from imgrag.retrieval.textsearch import highlight

            snip = _safe(h.row["snippet"]) if not bold else h.row["snippet"]
            if bold:
                snip = _safe(highlight(snip, h.row.get("match_spans") or [], "\x00", "\x01"))
                snip = snip.replace("\\x00", "\033[1m").replace("\\x01", "\033[0m")
            print(f"       {snip}")
    return 0


def _thresholds(specs: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in specs:
        if "=" not in s:
            raise BadQueryError(f"--threshold {s!r}: use LABEL=PROBABILITY")
        k, v = s.rsplit("=", 1)
        try:
            p = float(v)
        except ValueError:
            raise BadQueryError(f"--threshold {s!r}: {v!r} is not a number") from None
        if k.strip() == "*":
            out.update({lab: p for lab in labels})
        else:
            out[k.strip()] = p
    return out


def cmd_classify(args) -> int:
    from imgrag.retrieval.queries.classify import ZeroShotClassifier, classify_index, parse_labels
    from imgrag.retrieval.queries.search import load_query_image, search

    if args.labels_file:
        try:
            raw = open(args.labels_file, encoding="utf-8").read()
        except OSError as e:
            raise ImgragError(f"cannot read labels file {args.labels_file}: {e.strerror or e}") from e
        labels = parse_labels(raw.replace(",", "\n") if "\n" not in raw.strip() else raw)
    else:
        labels = parse_labels(args.labels)
    index = _open_index(args)
    clf = ZeroShotClassifier(index.embedder, labels, args.templates, _thresholds(args.threshold, labels))
    rows: list[dict] = []
    if args.image:
        pred = clf.predict_images([load_query_image(args.image)], top_n=args.top)[0]
        rows.append({"path": os.path.abspath(args.image), "label": pred.label, "score": pred.score, "top": pred.top})
    elif args.query:
        hits = search(index, args.query, k=args.k, filters=_filters(args))
        if hits:
            vecs = index.store.get([h.id for h in hits], columns=["id", "vector"])
            by_id = {i: v for i, v in zip(vecs["id"].to_pylist(), vecs["vector"].to_pylist())}
            import numpy as np

            preds = clf.predict_vectors(np.asarray([by_id[h.id] for h in hits], dtype=np.float32), args.top)
            rows = [{"path": h.path, "label": p.label, "score": p.score, "top": p.top} for h, p in zip(hits, preds)]
    else:
        for _id, path, p in classify_index(index, clf, write=args.write, filters=_filters(args), top_n=args.top):
            rows.append({"path": path, "label": p.label, "score": p.score, "top": p.top})
    if args.json:
        _print_json(rows)
        return 0
    counts: dict[str, int] = {}
    for r in rows:
        counts[str(r["label"])] = counts.get(str(r["label"]), 0) + 1
    for r in rows[: args.limit]:
        top = ", ".join(f"{lab} {p:.2f}" for lab, p in r["top"])
        print(f"{(r['label'] or '(none)'):<20} {r['score']:.3f}  {_safe(r['path'])}   [{top}]")
    if len(rows) > args.limit:
        print(f"... {len(rows) - args.limit} more (use --json for all)")
    if len(rows) > 1:
        print("counts: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])))
    if args.write and not args.image and not args.query:
        print(f"wrote labels for {len(rows)} items (filter with --label LABEL)")
    return 0


def cmd_info(args) -> int:
    index = _open_index(args)
    if args.errors:
        sk = index.skipped()
        if args.json:
            _print_json(sk)
        else:
            if not sk:
                print("no skipped files")
            for r in sk:
                print(f"{_safe(r['path'])}: {r['reason']}")
        return 0
    info = index.info()
    if args.json:
        _print_json(info)
    else:
        for k, v in info.items():
            if k == "disk_bytes":
                v = f"{v / 1e6:.1f} MB"
            print(f"{k:>16}: {v}")
    return 0


def cmd_ask(args) -> int:
    from imgrag.retrieval.generators import load_generator
    from imgrag.retrieval.queries.answer import answer

    index = _open_index(args)
    gen = load_generator(args.generator, device=args.device, precision=args.precision)
    stream = answer(index, args.question, k=args.k, max_images=args.max_images, generator=gen,
                    min_score=args.min_score, filters=_filters(args), rerank=args.rerank)
    if args.json:
        for _ in stream:
            pass
        _print_json(stream.result.to_dict())
        return 0
    print(f"[{stream.generator_name}]", file=sys.stderr, flush=True)
    for chunk in stream:  # model text: no terminal control sequences (ESC etc.) reach the terminal
        print("".join(ch if ch in "\n\t" or ch.isprintable() else "\ufffd" for ch in chunk), end="", flush=True)
    print()
    res = stream.result
    if res.citations:
        print("\ncited:")
        for c in res.citations:
            page = f" page {c.page}" if c.page is not None else ""
            print(f"  [{c.n}] {c.score:.3f}  {_safe(c.path)}{page}")
    uncited = [c for c in res.sent if c.n not in {x.n for x in res.citations}]
    if uncited:
        print("also shown to the model, not cited:")
        for c in uncited:
            page = f" page {c.page}" if c.page is not None else ""
            print(f"  [{c.n}] {c.score:.3f}  {_safe(c.path)}{page}")
    for note in res.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from imgrag.app.web.server import serve

    return serve(args)


def cmd_eval(args) -> int:
    from imgrag.retrieval.queries import evaluate

    return evaluate.run_cli(args)


COMMANDS = {"index": cmd_index, "search": cmd_search, "classify": cmd_classify, "info": cmd_info,
            "ask": cmd_ask, "serve": cmd_serve, "eval": cmd_eval}


def _command_lock(args):
    """``imgrag index`` on a local index takes the writer lock first: a second indexer is refused
    before it loads a model, and before ``--rebuild`` could wipe the files of the one running."""
    import contextlib

    if args.command != "index":
        return contextlib.nullcontext()
    from imgrag.retrieval.index import default_index_dir
    from imgrag.retrieval.location import is_uri

    root = args.index or default_index_dir()
    if is_uri(str(root)):
        return contextlib.nullcontext()  # object storage: the lease taken by the run itself
    from pathlib import Path

    from imgrag.indexer.lock import IndexLock

    return IndexLock(Path(root), outer=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        with _command_lock(args):
            return COMMANDS[args.command](args)
    except ImgragError as e:
        if getattr(args, "debug", False):
            raise
        print(f"imgrag: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("imgrag: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # noqa: BLE001 - a bug must still read as one line without --debug
        if getattr(args, "debug", False):
            raise
        print(f"imgrag: internal error: {type(e).__name__}: {e} (run again with --debug for details)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
