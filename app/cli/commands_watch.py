"""``imgrag watch PATH…``: keep the index current as files are added, changed, renamed or deleted.

:func:`add_parsers` adds the subcommand (called from :mod:`.parser`); :data:`COMMANDS` joins
:mod:`.commands`' table. The work is :class:`imgrag.indexer.watch.Watcher`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from imgrag.retrieval.errors import ImgragError
from imgrag.app.cli.argtypes import nonneg_int

EPILOG_WATCH = """Events come from the file system (inotify on Linux; needs imgrag[watch]) with a rescan every
--rescan-every seconds as a fallback (network mounts send no events); --poll uses rescans only. A file is
indexed once its size and modification time have stayed the same for --settle seconds (and, with inotify,
once it is closed), so half-copied files are not indexed. Each batch takes the writer lock briefly: searches
never wait, and another writer makes the watcher wait and retry. Ctrl-C stops it; every batch committed is kept.
examples:
  imgrag watch ~/Pictures                         # events, rescan every 300 s
  imgrag watch /mnt/nas/photos --poll --rescan-every 120"""


def _seconds(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {s!r}") from None
    if not 0 < v <= 86_400 * 7:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be above 0 seconds (at most a week), got {s}")
    return v


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    pw = sub.add_parser("watch", parents=[common], help="keep the index current as files change (events or rescans)",
                        description="Index new and changed images and PDFs under PATH... within seconds, remove "
                                    "deleted ones and follow renames (the vector is reused), until Ctrl-C.",
                        epilog=EPILOG_WATCH, formatter_class=argparse.RawDescriptionHelpFormatter)
    pw.add_argument("paths", nargs="+", metavar="PATH", help="folders or files to watch")
    pw.add_argument("--model", help="embedding model for a new index (an existing index keeps its model)")
    pw.add_argument("--store", choices=["lancedb", "faiss"], help="vector store for a new index (default lancedb)")
    pw.add_argument("--rescan-every", type=_seconds, metavar="SECONDS",
                    help="full rescan interval, the fallback for network mounts (default 300; 30 with --poll)")
    pw.add_argument("--poll", action="store_true", help="no file-system events: rescans only")
    pw.add_argument("--settle", type=_seconds, default=1.0, metavar="SECONDS",
                    help="how long a file must stay unchanged before it is indexed (default 1)")
    pw.add_argument("--batch-size", type=nonneg_int, default=64, help="images per forward pass (default 64)")
    pw.add_argument("--workers", type=nonneg_int, default=None, help="decode worker processes (default: as imgrag index)")
    pw.add_argument("--commit-every", type=nonneg_int, default=1024, help="rows per atomic commit (default 1024)")
    pw.add_argument("--json", action="store_true", help="print one JSON object per batch")


def cmd_watch(args) -> int:
    from imgrag.indexer.pipeline import IndexOptions, check_roots
    from imgrag.indexer.scan import normalize_roots
    from imgrag.indexer.watch import WatchOptions, Watcher
    from imgrag.retrieval.embedders import DEFAULT_MODEL, load_embedder
    from imgrag.retrieval.index import Index, Manifest, default_index_dir
    from imgrag.retrieval.location import is_uri

    if any(is_uri(p) for p in args.paths):
        raise ImgragError("imgrag watch needs local folders; for object storage run imgrag index --engine ray")
    if args.batch_size < 1 or args.commit_every < 1:
        raise ImgragError("--batch-size and --commit-every must be at least 1")
    check_roots(normalize_roots(args.paths))  # validate first: nothing is created for a typo
    root = args.index or default_index_dir()
    existing = Manifest.load(root) if Manifest.exists(root) else None
    model = args.model or (existing.model if existing else DEFAULT_MODEL)

    def make_embedder():
        return load_embedder(model, device=args.device, precision=args.precision, batch_size=args.batch_size)

    index = Index.create_or_open(root, make_embedder if existing else make_embedder(),
                                 store=args.store or (existing.store if existing else "lancedb"))
    opts = WatchOptions(index=IndexOptions(batch_size=args.batch_size, workers=args.workers,
                                           commit_every=args.commit_every),
                        poll=args.poll, rescan_every=args.rescan_every, settle=args.settle)
    watcher = Watcher(index, args.paths, opts, on_batch=lambda r: _print_batch(r, args.json))
    mode = "rescans every %gs" % opts.every(True) if args.poll else "file-system events"
    print(f"imgrag: watching {len(watcher.roots)} path(s) into {index.root} ({mode}); Ctrl-C to stop",
          file=sys.stderr, flush=True)
    try:
        watcher.run()
    except KeyboardInterrupt:
        print(f"imgrag: watch stopped; {watcher.batches} batch(es) indexed, each committed whole", file=sys.stderr,
              flush=True)
        return 130
    return 0


def _print_batch(r, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r.to_dict()), flush=True)  # one line per batch
    else:
        print(f"{time.strftime('%H:%M:%S')} indexed {r.embedded} new/changed ({r.reused} reused), removed "
              f"{r.deleted}, {r.skipped} skipped; {r.total_items} items", flush=True)


COMMANDS = {"watch": cmd_watch}
