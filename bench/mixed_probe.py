"""Short photo queries on mixed indexes: which photos of vector search's top k does the default mode drop?

The issue's check, widened: one- and two-word photo queries ("food", "a person", "people", "a tree", …) on
indexes that hold photos and manuals, and for k = 5 and 10 the photos of ``--mode vector``'s top k that
``--mode auto`` (hybrid) leaves out, with the pages that took their places. Every photo counts, relevant or
not: the point is what a user who asked for photos sees change.

    python bench/mixed_probe.py INDEX [INDEX ...]     # e.g. bench/.cache/mixed/index, bench/.cache/mixed/second/index

Indexes from ``bench/mixed_search.py`` (it builds ``WORK/index`` and, with ``--second-corpus``,
``WORK/second/index``) or ``imgrag index data/samples some.pdf --model lite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ensure_imgrag_importable  # noqa: E402

ensure_imgrag_importable()

QUERIES = ["food", "a person", "sky", "an animal", "a dog", "a cat", "a car", "a flower", "a building", "water",
           "a tree", "music", "sports", "a bird", "a house", "fruit", "a ship", "people", "the moon", "a ball"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("indexes", nargs="+")
    ap.add_argument("-k", type=int, nargs="+", default=[5, 10])
    ap.add_argument("--hybrid-from", metavar="REV", help="hybrid.py as of a git revision (a 'before' run)")
    args = ap.parse_args()
    if args.hybrid_from:
        from mixed_search import load_hybrid_from

        load_hybrid_from(args.hybrid_from)

    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.hybrid import search_documents

    for path in args.indexes:
        idx = Index.open(path)
        rows = []
        for q in QUERIES:
            for k in args.k:
                vec = [h.id for h in search_documents(idx, q, k=k, mode="vector", with_snippets=False)]
                auto = [h.id for h in search_documents(idx, q, k=k, mode="auto", with_snippets=False)]
                lost = [Path(x).name for x in vec if "#page=" not in x and x not in auto]
                if lost:
                    rows.append((q, k, lost, [Path(x).name for x in auto if "#page=" in x and x not in vec]))
        print(f"{path}: {len(rows)} of {len(QUERIES) * len(args.k)} (query, k) drop a photo of vector's top k")
        for q, k, lost, pages in rows:
            print(f"  {q!r:14} k={k:<3} dropped {', '.join(lost)}  ← {', '.join(pages)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
