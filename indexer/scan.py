"""Stage 1: find candidate files under the given roots (no file contents are read here).

Paths leave this module in the stored form of :mod:`imgrag.retrieval.paths` (identity for valid UTF-8;
an undecodable byte of a name is kept losslessly as ``NUL hh``), so names that are not valid UTF-8 are
indexed like any other; whoever opens a listed file goes back with ``paths.to_fs``.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from imgrag.retrieval.paths import to_fs, to_stored


@dataclass(frozen=True)
class FileEntry:
    """A file to consider: absolute path in stored form (symlinks not resolved), size in bytes, mtime in ns."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skip:
    """A file that was not indexed and why (listed by ``imgrag info --errors``); ``path`` in stored form."""

    path: str
    reason: str
    size: int | None = None
    mtime_ns: int | None = None

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason, "size": self.size, "mtime_ns": self.mtime_ns}


def scan(roots: Iterable[str | Path], extensions: frozenset[str], exclude: Iterable[str | Path] = (),
         include_hidden: bool = False) -> Iterator[FileEntry | Skip]:
    """Walk ``roots`` recursively, yielding a :class:`FileEntry` per file with a known extension, or a
    :class:`Skip` for a file that matches but cannot be used (broken symlink, loop, no permission).
    ``roots`` may be in file-system or stored form; what is yielded is in stored form. Directory symlinks are not followed (no loops, no escaping the collection); file
    symlinks are. Hidden folders (``.name``) are skipped unless ``include_hidden``.
    """
    excluded = {os.path.abspath(to_fs(os.fspath(p))) for p in exclude}
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = os.path.abspath(to_fs(os.fspath(root)))
        if os.path.isfile(root):
            yield from _entry(root, extensions, explicit=True)
            continue
        stack = [root]
        while stack:
            d = stack.pop()
            if d in excluded:
                continue
            try:
                st = os.stat(d)
                key = (st.st_dev, st.st_ino)
                if key in seen_dirs:
                    continue
                seen_dirs.add(key)
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except PermissionError:
                yield Skip(to_stored(d), "folder not readable (permission denied)")
                continue
            except OSError as e:
                yield Skip(to_stored(d), f"folder not readable ({e.strerror or e})")
                continue
            subdirs = []
            for e in entries:
                if e.name.startswith(".") and not include_hidden:
                    continue
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    subdirs.append(e.path)
                    continue
                if e.is_symlink():
                    try:
                        if os.path.isdir(e.path):
                            continue  # directory symlinks are not followed
                    except OSError:
                        pass
                yield from _entry(e.path, extensions)
            stack.extend(reversed(subdirs))


def _entry(fs_path: str, extensions: frozenset[str], explicit: bool = False) -> Iterator[FileEntry | Skip]:
    path = to_stored(fs_path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in extensions:
        if explicit:
            yield Skip(path, f"unsupported file type {ext or '(no extension)'}")
        return
    try:
        st = os.stat(fs_path)
    except FileNotFoundError:
        if os.path.islink(fs_path):
            yield Skip(path, "broken symlink (target does not exist)")
        else:
            yield Skip(path, "file disappeared before it could be read")
        return
    except OSError as e:
        if e.errno == errno.ELOOP:
            yield Skip(path, "symlink loop")
        elif e.errno == errno.ENAMETOOLONG:
            yield Skip(path, "file name too long")
        else:
            yield Skip(path, f"cannot stat file ({e.strerror or e})")
        return
    if stat.S_ISDIR(st.st_mode):
        return
    if not stat.S_ISREG(st.st_mode):
        yield Skip(path, "not a regular file")
        return
    yield FileEntry(path, st.st_size, st.st_mtime_ns)


def is_under(path: str, roots: Iterable[str]) -> bool:
    """True when ``path`` is one of ``roots`` or inside one of them (both in stored form: it keeps ``/``
    and escapes byte by byte, so a folder's stored form is a prefix of its files')."""
    for r in roots:
        if path == r or path.startswith(r.rstrip(os.sep) + os.sep):
            return True
    return False


def normalize_roots(roots: Iterable[str | Path]) -> list[str]:
    """Absolute roots in stored form (``roots`` in file-system or stored form; check them with ``to_fs``)."""
    return [to_stored(os.path.abspath(os.path.expanduser(to_fs(os.fspath(r))))) for r in roots]
