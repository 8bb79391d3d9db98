"""``imgrag groups``: the collection clustered into named groups, each with its most representative images.

:func:`add_parsers` adds the subcommand (called from :mod:`.parser`); :data:`COMMANDS` joins :mod:`.commands`' table.
"""

from __future__ import annotations

import argparse
import sys

from imgrag.app.cli.output import print_json, safe
from imgrag.retrieval.paths import display
from imgrag.app.cli.argtypes import positive_int

EPILOG_GROUPS = """Groups are k-means clusters of the stored vectors (k by silhouette unless --k), numbered largest first;
each is named by the label (ImageNet classes by default) that fits its centre best, calibrated so one generic label
does not name every group. The same index and --seed give the same groups.
examples:
  imgrag groups                            # k chosen automatically, ImageNet names
  imgrag groups --k 12 --labels mine.txt   # 12 groups named from your list (one label per line)
  imgrag groups --json > groups.json       # [{group, name, size, examples: [{path, id}], score}, ...]"""


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    pg = sub.add_parser("groups", parents=[common], help="cluster the collection into named groups",
                        description="Cluster the indexed vectors (spherical k-means on a sample, then every item "
                                    "assigned in batches) and name each group zero-shot from a label list.",
                        epilog=EPILOG_GROUPS, formatter_class=argparse.RawDescriptionHelpFormatter)
    pg.add_argument("--k", type=positive_int, metavar="K", help="number of groups (default: chosen by silhouette, 2..30)")
    pg.add_argument("--labels", metavar="FILE",
                    help="name groups from this list, one label per line (default: the 1,000 ImageNet classes)")
    pg.add_argument("--examples", type=int, default=3, metavar="N", help="representative images per group (default 3)")
    pg.add_argument("--seed", type=int, default=0, help="seed of the sample and k-means (default 0)")
    pg.add_argument("--path", dest="path_glob", metavar="GLOB", help="only paths matching this glob")
    pg.add_argument("--json", action="store_true", help="print the groups as JSON")


def cmd_groups(args) -> int:
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.queries.groups import GroupOptions, group_index
    from imgrag.retrieval.stores.base import Filters

    index = Index.open(args.index, device=args.device, precision=args.precision)
    rep = group_index(index, GroupOptions(
        k=args.k, seed=args.seed, examples=max(0, args.examples),
        filters=Filters(path_glob=args.path_glob) if args.path_glob else None), labels=args.labels)
    if args.json:
        print_json(rep.to_json(display))
        return 0
    if not rep.groups:
        print(f"no groups: no items among {rep.items}")
        return 0
    width = max(len(safe(g.name or "")) for g in rep.groups)
    for g in rep.groups:
        examples = "  ".join(display(p) for _, p, _ in g.examples)
        print(f"{g.number:>3}  {safe(g.name or '?'):<{width}}  {g.size:>7}  {examples}")
    how = "chosen by silhouette" if rep.k_auto else "given"
    print(f"{len(rep.groups)} groups of {rep.items} items (k={rep.k} {how}; sample of {rep.sample})", file=sys.stderr)
    return 0


COMMANDS = {"groups": cmd_groups}
