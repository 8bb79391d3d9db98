"""Commands that look at the whole collection: ``imgrag duplicates`` and ``imgrag export``.

:func:`add_parsers` adds their subcommands to the parser (called from :mod:`.parser`); :data:`COMMANDS`
joins :mod:`.commands`' table.
"""

from __future__ import annotations

import argparse

from imgrag.app.cli.output import print_json, safe
from imgrag.retrieval.paths import display

EPILOG_DUPLICATES = """Nothing is deleted: the groups are a suggestion, the keeper the largest then oldest image.
examples:
  imgrag duplicates                        # copies: resized, re-encoded, slightly cropped, brightened
  imgrag duplicates --bursts               # looser: burst shots of one scene
  imgrag duplicates --json > dups.json     # [[{path, keeper, size, width, height, score}, ...], ...]"""


def _cosine(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {s!r}") from None
    if not -1.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between -1 and 1, got {s}")
    return v


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    pd = sub.add_parser("duplicates", parents=[common], help="groups of near-duplicate images, with a keeper",
                        description="Find copies among the indexed images: candidates from the vector index "
                                    "(nearest neighbours), each pair confirmed by comparing small thumbnails "
                                    "(same file content needs no check).",
                        epilog=EPILOG_DUPLICATES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pd.add_argument("--threshold", type=_cosine, metavar="T",
                    help="least cosine similarity of a candidate pair (default 0.80; 0.70 with --bursts)")
    pd.add_argument("--min-similarity", type=_cosine, metavar="S",
                    help="least thumbnail correlation that confirms a pair (default 0.85; 0.70 with --bursts)")
    pd.add_argument("--bursts", action="store_true", help="looser defaults that also group burst shots")
    pd.add_argument("--no-verify", dest="verify", action="store_false",
                    help="trust the embedding alone (only for strong models: a weak one groups look-alikes)")
    pd.add_argument("-k", type=int, default=10, help="neighbours looked at per image (default 10)")
    pd.add_argument("--path", dest="path_glob", metavar="GLOB", help="only paths matching this glob")
    pd.add_argument("--json", action="store_true", help="print the groups as JSON")

    pe = sub.add_parser("export", parents=[common], help="write the index to a Parquet file",
                        description="Paths, metadata, labels and vectors (fixed-size float32 lists) in one Parquet "
                                    "file for pandas, DuckDB, FAISS or FiftyOne; streamed, written atomically.")
    pe.add_argument("out", metavar="OUT.parquet")
    pe.add_argument("--no-vectors", dest="vectors", action="store_false", help="metadata only")
    pe.add_argument("--json", action="store_true", help="print the report as JSON")


def cmd_duplicates(args) -> int:
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.duplicates import DuplicateOptions, find_duplicates
    from imgrag.retrieval.stores.base import Filters

    index = Index.open(args.index, device=args.device, precision=args.precision)
    rep = find_duplicates(index.store, DuplicateOptions(
        threshold=args.threshold, min_similarity=args.min_similarity, k=args.k, bursts=args.bursts,
        verify=args.verify, filters=Filters(path_glob=args.path_glob) if args.path_glob else None))
    if args.json:
        print_json(rep.to_json())
        return 0
    if not rep.groups:
        print(f"no duplicates among {rep.items} images")
        return 0
    for n, g in enumerate(rep.groups, 1):
        print(f"group {n} ({len(g)} images)")
        for m in g:
            tag = "keep" if m.keeper else ("same" if m.same_file else f"{m.score:.3f}")
            print(f"  {tag:>5}  {m.width or '?'}x{m.height or '?'}  {display(m.path)}")
    extra = sum(len(g) - 1 for g in rep.groups)
    print(f"{len(rep.groups)} groups, {extra} images besides the keepers, among {rep.items} images "
          f"({rep.candidates} candidate pairs, {rep.rejected} rejected by the thumbnail check); nothing was deleted")
    return 0


def cmd_export(args) -> int:
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.export import export_parquet

    index = Index.open(args.index, device=args.device, precision=args.precision)
    rep = export_parquet(index, args.out, vectors=args.vectors)
    if args.json:
        print_json(rep.to_dict())
    else:
        print(f"wrote {rep.rows} rows ({rep.bytes / 1e6:.1f} MB) to {safe(rep.path)}")
    return 0


COMMANDS = {"duplicates": cmd_duplicates, "export": cmd_export}
