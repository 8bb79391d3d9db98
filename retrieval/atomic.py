"""Atomic local file writes: the one place that knows how (temp file in the same folder, fsync, rename, fsync
of the folder), with one temp-name rule.

Readers see the old content or the new, never half of it; a crash leaves at most a temp file, which
``is_temp_name`` recognises so that cleanup code can delete it. Object storage needs none of this (one PUT is
atomic): see ``location.Location.write_bytes``.

This module imports nothing from imgrag, so every other module may use it without creating an import cycle.
"""
from __future__ import annotations

import contextlib
import os
import re
import threading
from pathlib import Path
from typing import BinaryIO, Iterator

_TMP_RX = re.compile(r"^\..+\.tmp-\d+-\d+$")


def temp_name(path: str | os.PathLike) -> Path:
    """The temp file for ``path``: hidden, in the same folder, unique per process and thread."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def is_temp_name(name: str) -> bool:
    """True for a name ``temp_name`` makes (a leftover of a crashed write when no writer is running)."""
    return bool(_TMP_RX.match(name))


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename in ``path`` durable. Some filesystems refuse directory fsync; that is not an error."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - filesystem-dependent
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Open a temp file for binary writing; on a clean exit it replaces ``path`` atomically.

    On an exception the temp file is removed and ``path`` is untouched. ``durable=False`` skips the fsyncs
    (caches that can be rebuilt).
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically (see ``atomic_open``)."""
    with atomic_open(path, durable=durable) as f:
        f.write(data)
