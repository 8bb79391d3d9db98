"""The ``imgrag`` argument parser: every subcommand, its options and help text, and the argument types.

Nothing here does work or prints; :mod:`.commands` runs what the parser returns.
"""

from __future__ import annotations

import argparse
from datetime import datetime

from imgrag.app.cli.argtypes import dpi as _dpi
from imgrag.app.cli.argtypes import megapixels as _megapixels
from imgrag.app.cli.argtypes import nonneg_int as _nonneg_int
from imgrag.app.cli.argtypes import positive_int as _positive_int

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


EVAL_MODEL_HELP = ("embedding model (default lite); with --index DIR the index's model and its tuned adapter "
                   "(imgrag tune) are evaluated instead")
EVAL_NO_ADAPTER_HELP = "with --index: leave the index's tuned adapter out, to compare"
MAX_MEGAPIXELS_HELP = ("largest image accepted, in megapixels (default 179, Pillow's own limit); larger ones (huge scans, posters) are decoded reduced to at most 16 MP: JPEG at a DCT scale and 8-bit PNG in strips with bounded memory, other formats whole (about 4 bytes per pixel)")


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
    pi.add_argument("--batch-size", type=_positive_int, default=None,
                    help="images per forward pass of each model replica (default: 64 on the CPU; on CUDA the "
                         "largest power of two that GPU memory holds, 32..1024: indexer/gpu_plan.py)")
    pi.add_argument("--workers", type=_nonneg_int, default=None,
                    help="decode worker processes (default: one per core on the CPU, 1..8; on CUDA every core but "
                         "one per GPU, at most 64; 0 = decode in the main process)")
    pi.add_argument("--devices", type=_device_list, metavar="LIST", default=None,
                    help="run one model replica per listed device, e.g. cuda:0,cuda:1 or cpu,cpu; 'all' = every "
                         "visible GPU (default: every visible GPU when the model runs on plain cuda, i.e. --device "
                         "auto or cuda; --device cuda:N uses that GPU alone). Local engine only (docs/gpu.md)")
    pi.add_argument("--no-draft", dest="draft", action="store_false",
                    help="decode JPEGs at full size (default: reduced-size DCT decoding to the model's resolution)")
    pi.add_argument("--max-megapixels", type=_megapixels, metavar="N", help=MAX_MEGAPIXELS_HELP)
    pi.add_argument("--preprocess", choices=["auto", "pil", "tensor"], default="auto",
                    help="where images are decoded and resized: 'pil' = in the decode workers with the model's own "
                         "PIL transform; 'tensor' = workers only read files (and decode formats the GPU cannot), "
                         "JPEG decode and resize/normalise run as tensor ops on the model's device (also works on "
                         "the CPU); 'auto' (default) = tensor when the model runs on CUDA, else pil. Local engine "
                         "only (docs/gpu.md)")
    pi.add_argument("--commit-every", type=_positive_int, default=1024, help="rows per atomic commit (default 1024)")
    pi.add_argument("--retry-skipped", action="store_true", help="retry files that failed before even if unchanged")
    pi.add_argument("--no-prune", dest="prune", action="store_false", help="keep rows of files deleted from disk")
    pi.add_argument("--rebuild", action="store_true",
                    help="re-embed everything into a new copy built beside the index (model and store: the index's "
                         "unless --model/--store say otherwise); it replaces the index only once complete, so "
                         "searches read the old one meanwhile, and an interrupted rebuild resumes when the same "
                         "command is run again")
    pi.add_argument("--dpi", type=_dpi, default=150.0,
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
                    help="vector (embedding similarity), text (keywords in page text / OCR), hybrid (both: the "
                         "similarity raised by matching words; items without text keep their similarity); "
                         "auto (default): hybrid when the index holds text, else vector")
    ps.add_argument("--weights", metavar="V,T", default=None,
                    help="hybrid: weights of similarity and keyword match; a full keyword match raises the "
                         "score T/(V+T) of the way to 1 (default: 0.5,1 for the lite model, else 1,1)")
    ps.add_argument("--vector-gate", type=float, default=None, metavar="G",
                    help="hybrid: when the best cosine does not exceed its candidates' median by G, keyword "
                         "matches are ordered by their words alone (default: 0.10 for the lite model, else 0)")
    ps.add_argument("--min-score", type=float, help="hide results whose shown score is below this (cosine "
                    "similarity; in hybrid the relevance; in text mode the keyword match)")
    ps.add_argument("--sort-date", action="store_true", help="order results by capture date (after the cutoff)")
    ps.add_argument("--all-copies", action="store_true",
                    help="show each path of an exact copy (same content hash) as its own result; by default copies "
                         "are one result listing the other paths")
    ps.add_argument("--no-adapter", action="store_true", help="ignore the index's tuned adapter (imgrag tune), to compare")
    ps.add_argument("--json", action="store_true", help="print results as JSON")

    # classify
    pc = sub.add_parser("classify", parents=[common], help="zero-shot classification with prompt templates",
                        description="Classify the whole index (default), one image (--image) or the results of a "
                                    "query (--query) into the given labels.")
    g = pc.add_mutually_exclusive_group()  # one of them, or --examples alone (its folder names are the labels)
    g.add_argument("--labels", help="comma-separated labels, e.g. 'cat,dog,car'")
    g.add_argument("--labels-file", metavar="FILE", help="one label per line")
    pc.add_argument("--examples", metavar="ROOT",
                    help="few-shot: a folder per class holding a few example images (folder name = label, matched "
                         "to --labels, or the labels themselves without --labels); each label's text prototype is "
                         "mixed with the mean of its examples (Tip-Adapter style, no training)")
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
    pc.add_argument("--no-adapter", action="store_true", help="ignore the index's tuned adapter (imgrag tune), to compare")
    _calibration_arg(pc, "each label's scores are corrected for label-prior and hub bias, with statistics of the "
                         "collection (whole index) or of a random sample of the index (--image, --query); auto "
                         "is none when a tuned adapter or --examples is used (measured better there)")
    _filter_args(pc)
    pc.add_argument("--json", action="store_true", help="print predictions as JSON (all rows)")

    # info
    pn = sub.add_parser("info", parents=[common], help="index statistics, model, store and skipped files")
    pn.add_argument("--errors", action="store_true", help="list files that could not be indexed, with reasons")
    pn.add_argument("--json", action="store_true")

    # tune
    pt = sub.add_parser("tune", parents=[common], help="train a small adapter on your labels or captions (towers frozen)",
                        description="Train a residual linear adapter on the text side with SigLIP's sigmoid loss "
                                    "(default) or CLIP's InfoNCE, on stored vectors (no image is re-embedded unless "
                                    "it is not in the index); a validation split is held out with early stopping. "
                                    "The adapter is stored in the index; search, classify and ask use it.")
    gt = pt.add_mutually_exclusive_group(required=True)
    gt.add_argument("--folders", metavar="ROOT", help="folder-per-class tree: the folder name is the class text")
    gt.add_argument("--captions", metavar="TSV", help="path<TAB>caption lines (paths relative to the TSV or the index's)")
    gt.add_argument("--labels-from-index", action="store_true", help="the labels written by `imgrag classify --write`")
    gt.add_argument("--reset", action="store_true", help="remove the index's adapter")
    pt.add_argument("--loss", choices=["siglip", "clip"], default="siglip",
                    help="siglip (default): pairwise sigmoid loss; clip: symmetric InfoNCE")
    pt.add_argument("--seed", type=int, default=0, help="seed of the validation split and training (default 0)")
    pt.add_argument("--json", action="store_true", help="print the result as JSON")

    # ask (only when the answer module is installed in this build)
    if _available("imgrag.retrieval.queries.answer"):
        _add_ask(sub, common)
    if _available("imgrag.app.web"):  # the package, not a module in it: finding that would run its __init__
        _add_serve(sub, common)

    from imgrag.app.cli.commands_collection import add_parsers as add_collection_parsers

    add_collection_parsers(sub, common)  # duplicates, export
    from imgrag.app.cli.commands_groups import add_parsers as add_groups_parsers

    add_groups_parsers(sub, common)  # groups
    from imgrag.app.cli.commands_watch import add_parsers as add_watch_parsers

    add_watch_parsers(sub, common)  # watch

    # eval
    pe = sub.add_parser("eval", parents=[common], help="measure retrieval / zero-shot quality of a model on your data")
    esub = pe.add_subparsers(dest="eval_kind", metavar="KIND", required=True)
    er = esub.add_parser("retrieval", parents=[common], help="text↔image Recall@1/5/10 from a captions file")
    er.add_argument("--images", required=True, metavar="DIR")
    er.add_argument("--captions", required=True, metavar="FILE", help="TSV: relative/path.jpg<TAB>caption (several lines per image allowed)")
    er.add_argument("--model", default=None, help=EVAL_MODEL_HELP)
    er.add_argument("--no-adapter", action="store_true", help=EVAL_NO_ADAPTER_HELP)
    er.add_argument("--batch-size", type=_positive_int, default=64)
    er.add_argument("--max-megapixels", type=_megapixels, metavar="N", help=MAX_MEGAPIXELS_HELP)
    er.add_argument("--json", action="store_true")
    ez = esub.add_parser("zeroshot", parents=[common], help="top-1/top-5 accuracy on a folder-per-class tree")
    ez.add_argument("dir", metavar="DIR")
    ez.add_argument("--model", default=None, help=EVAL_MODEL_HELP)
    ez.add_argument("--no-adapter", action="store_true", help=EVAL_NO_ADAPTER_HELP)
    ez.add_argument("--templates", action="append", default=None,
                    help="template set(s) to compare (repeatable; default: none, photo, simple, openai)")
    ez.add_argument("--depth", type=_positive_int, default=1, help="folder depth that names the class (default 1)")
    ez.add_argument("--limit-per-class", type=int, default=None)
    ez.add_argument("--batch-size", type=_positive_int, default=64)
    ez.add_argument("--max-megapixels", type=_megapixels, metavar="N", help=MAX_MEGAPIXELS_HELP)
    _calibration_arg(ez, "top-1/top-5 are of calibrated scores (fitted on the evaluated images); the raw figures "
                         "are shown beside them (top1_raw, top5_raw)")
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
                    help="hf:HUB_ID_OR_DIR, anthropic:MODEL, openai:MODEL, gemini:MODEL or smollm2 (default: smollm2, offline)")
    pa.add_argument("--min-score", type=float, default=None,
                    help="if the best match scores below this, say the collection does not contain the answer "
                         "(default per embedding model: lite 0.25, CLIP 0.18, SigLIP 0.05; -1 disables)")
    pa.add_argument("--rerank", action="store_true",
                    help="re-order the retrieved images by how many of the question's words their text evidence "
                         "(file name, labels, text) holds, before choosing which to send")
    pa.add_argument("--no-adapter", action="store_true", help="ignore the index's tuned adapter (imgrag tune), to compare")
    _filter_args(pa)
    pa.add_argument("--json", action="store_true")


def _add_serve(sub, common) -> None:
    pv = sub.add_parser("serve", parents=[common], help="start the web UI")
    pv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    pv.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    pv.add_argument("--auth", metavar="USER:PASS", help="require this login (recommended with --host 0.0.0.0)")
    pv.add_argument("--roots", nargs="+", metavar="DIR",
                    help="folders the Index tab and the HTTP API may add (and folders under them); without it, "
                         "any folder on 127.0.0.1 and none when listening beyond it")
    pv.add_argument("--watch", nargs="+", metavar="PATH",
                    help="also keep the index current with these folders while serving (as imgrag watch; "
                         "shares the writer lock with the Index tab's jobs)")
    pv.add_argument("--generator", default=None, help="generator for the Ask tab (default smollm2)")
    pv.add_argument("--max-upload-mb", type=float, default=25, metavar="MB",
                    help="largest accepted upload in megabytes (default 25)")
    pv.add_argument("--max-upload-mp", "--max-megapixels", dest="max_upload_mp", type=_megapixels, default=50,
                    metavar="MP", help="largest accepted upload in megapixels, checked before decoding (default 50; "
                                       "above 179 an upload is decoded reduced, as imgrag index --max-megapixels)")


def _calibration_arg(p: argparse.ArgumentParser, what: str) -> None:
    from imgrag.retrieval.queries.calibration import CHOICES, DEFAULT_METHOD, MANY_LABELS, MANY_LABELS_METHOD

    p.add_argument("--calibration", choices=CHOICES, default="auto",
                   help=f"zero-shot calibration: auto (default: {MANY_LABELS_METHOD} with {MANY_LABELS} labels or "
                        f"more, else {DEFAULT_METHOD}): {what}; none: raw scores; or a method (docs/quality.md)")


def _filter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", dest="path_glob", metavar="GLOB", help="only paths matching this glob ('*' spans folders)")
    p.add_argument("--after", type=_date, metavar="DATE", help="captured on or after DATE (EXIF)")
    p.add_argument("--before", type=_date, metavar="DATE", help="captured on or before DATE (EXIF)")
    p.add_argument("--min-width", type=int, metavar="PX")
    p.add_argument("--label", help="only images whose stored label (classify --write) is LABEL")
    p.add_argument("--kind", "--type", dest="kind", choices=("photo", "page"),
                   help="only whole image files (photo) or only document pages (page); default both (the "
                        "results' `kind` field; the HTTP API's `type`)")


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("imgrag")
    except Exception:  # noqa: BLE001
        return "unknown"


def _device_list(s: str) -> tuple[str, ...]:
    """``--devices``: ``all`` or a comma list of cpu / cuda / cuda:N / mps (indexer/replicas.py)."""
    from imgrag.indexer.replicas import parse_devices
    from imgrag.retrieval.errors import ImgragError

    try:
        return parse_devices(s)
    except ImgragError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--devices: ")) from None
