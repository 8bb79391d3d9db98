"""The ``imgrag`` command line (the ``imgrag`` console script is :func:`main`).

- :mod:`.parser` — the argument parser, every subcommand's options and help text;
- :mod:`.commands` — what each subcommand does;
- :mod:`.output` — what it prints (``--json`` or lines for a terminal).

Every user error ends as one line on stderr (``imgrag: error: ...``) and a non-zero exit code; a
traceback is shown only with ``--debug``. ``--json`` prints machine-readable results on stdout.
"""

from __future__ import annotations

import logging
import sys
from typing import Sequence

from imgrag.app.cli.commands import COMMANDS
from imgrag.app.cli.parser import build_parser
from imgrag.retrieval.errors import ImgragError

__all__ = ["main", "build_parser"]


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
