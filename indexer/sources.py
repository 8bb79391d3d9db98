"""What an indexing run lists: local folders and files (:func:`~imgrag.indexer.scan.scan`) and
object-storage prefixes or objects (``s3://bucket/photos/`` through :mod:`pyarrow.fs`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from imgrag.indexer.scan import FileEntry, Skip, normalize_roots, scan
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.location import filesystem_for, is_uri
from imgrag.retrieval.paths import to_fs


def supported_extensions() -> frozenset[str]:
    """Images and documents (without pypdfium2 a PDF is still listed, then skipped saying why)."""
    from imgrag.retrieval import pdf

    return image_extensions() | pdf.PDF_EXTENSIONS


def image_extensions() -> frozenset[str]:
    from imgrag.retrieval.imageio import SUPPORTED_EXTENSIONS

    return frozenset(SUPPORTED_EXTENSIONS)


def list_sources(sources: Sequence[str | Path], exts: frozenset[str], exclude: Sequence[str | Path] = (),
                 include_hidden: bool = False) -> tuple[list[str], Iterator[FileEntry | Skip]]:
    """``(normalised roots, entries)`` for local folders/files and object-storage prefixes/objects.

    The entries are a generator (a 100M-file listing is never held as Python objects)."""
    local = normalize_roots([s for s in sources if not is_uri(s)])
    for r in local:
        if not os.path.exists(to_fs(r)):
            raise ImgragError(f"path not found: {r}")
    uris = [str(s).rstrip("/") for s in sources if is_uri(s)]
    return local + uris, _iter_sources(local, uris, exts, exclude, include_hidden)


def _iter_sources(local: list[str], uris: list[str], exts: frozenset[str], exclude, include_hidden: bool):
    if local:
        yield from scan(local, exts, exclude=exclude, include_hidden=include_hidden)
    for uri in uris:
        yield from _iter_objects(uri, exts, include_hidden)


def _iter_objects(uri: str, exts: frozenset[str], include_hidden: bool) -> Iterator[FileEntry]:
    import pyarrow.fs as pfs

    fs, base = filesystem_for(uri)
    scheme = uri.split("://", 1)[0]
    info = fs.get_file_info(base)
    if info.type == pfs.FileType.NotFound:
        raise ImgragError(f"path not found: {uri}")
    infos = [info] if info.type == pfs.FileType.File else fs.get_file_info(pfs.FileSelector(base, recursive=True))
    for fi in sorted(infos, key=lambda f: f.path):
        if fi.type != pfs.FileType.File:
            continue
        rel = fi.path[len(base):].lstrip("/")
        if not include_hidden and any(part.startswith(".") for part in rel.split("/")[:-1]):
            continue
        if os.path.splitext(fi.path)[1].lower() not in exts:
            continue
        mtime_ns = int(fi.mtime_ns) if fi.mtime_ns is not None else 0
        yield FileEntry(f"{scheme}://{fi.path}", int(fi.size or 0), mtime_ns)
