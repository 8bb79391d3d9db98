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


def _writes(args) -> bool:
    """The commands that change the index: ``index``, ``tune`` (and ``tune --reset``), ``classify --write``
    over the whole index (with ``--image`` or ``--query`` nothing is written)."""
    if args.command == "classify":
        return bool(getattr(args, "write", False)) and not getattr(args, "image", None) and not getattr(args, "query", None)
    return args.command in ("index", "tune")


def _command_lock(args):
    """A command that writes takes the index's writer lock first, so that it fails at once when another
    process is writing — before it loads a model or, for ``--rebuild``, makes a draft. The library call
    inside takes the same lock again (re-entrant on this thread: :mod:`imgrag.retrieval.locking`), so the
    lock does not depend on the CLI; this only makes the refusal come first."""
    import contextlib

    if not _writes(args):
        return contextlib.nullcontext()
    from imgrag.retrieval.index import Manifest, default_index_dir
    from imgrag.retrieval.locking import writer_lock

    root = args.index or default_index_dir()
    if args.command != "index" and not Manifest.exists(root):
        return contextlib.nullcontext()  # no index: the command says so (no lock file left in a new folder)
    return writer_lock(root, outer=True)


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
