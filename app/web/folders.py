"""The indexed folders of the web UI's Index tab: which folders the index holds (with item counts), removing
one (its rows pruned under the writer lock), and the rule that keeps indexing from the UI inside the folders
given at start (``imgrag serve --roots DIR…``).

The index does not record the folders it was built from, so the list is: folders added from the UI (kept
in a small file beside the thumbnail cache), plus, for items under none of them, the top-most folders that
hold indexed files. Plain Python, no gradio import (tests/test_ui_journeys.py, tests/test_http_api.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from imgrag.retrieval.errors import BadQueryError, ImgragError
from imgrag.retrieval.paths import display, from_display

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.app.web.backend import Backend

_FILE = "folders.json"


def _record(backend: "Backend") -> Path:
    return Path(backend.thumbs.root) / _FILE


def remembered(backend: "Backend") -> list[str]:
    """Folders added from the UI (stored form), newest last."""
    try:
        data = json.loads(_record(backend).read_text("utf-8"))
        return [str(x) for x in data if isinstance(x, str)]
    except (OSError, ValueError, TypeError):
        return []


def _save(backend: "Backend", roots: list[str]) -> None:
    from imgrag.retrieval.atomic import atomic_open

    with atomic_open(_record(backend), durable=False) as f:
        f.write(json.dumps(sorted(set(roots)), ensure_ascii=False).encode("utf-8", "surrogateescape"))


def remember(backend: "Backend", folder: str) -> None:
    roots = remembered(backend)
    if folder not in roots:
        _save(backend, roots + [folder])


def forget(backend: "Backend", folder: str) -> None:
    roots = remembered(backend)
    if folder in roots:
        _save(backend, [r for r in roots if r != folder])


def _under(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def folder_counts(backend: "Backend") -> list[tuple[str, int]]:
    """``(folder in stored form, items under it)``, folders sorted by path; items are rows (a PDF page is one)."""
    if not backend.has_index():
        return []
    known = sorted(remembered(backend), key=len, reverse=True)  # the deepest known folder wins
    counts: dict[str, int] = {}
    loose: dict[str, int] = {}
    for batch in backend.index().store.scan(columns=["path"]):
        for p in batch.column("path").to_pylist():
            root = next((r for r in known if _under(p, r)), None)
            if root is not None:
                counts[root] = counts.get(root, 0) + 1
            else:
                parent = p.rsplit("/", 1)[0] or "/"
                loose[parent] = loose.get(parent, 0) + 1
    # folders of files under no known folder: merged into their top-most indexed ancestor
    for parent in sorted(loose, key=len):
        top = next((t for t in counts if t not in known and _under(parent, t)), parent)
        counts[top] = counts.get(top, 0) + loose[parent]
    return sorted(counts.items())


def check_allowed(backend: "Backend", folder: str | os.PathLike) -> None:
    """Refuse a folder outside ``UIConfig.allowed_roots`` (None: any folder; empty: none), symlinks resolved."""
    allowed = getattr(backend.config, "allowed_roots", None)
    if allowed is None:
        return
    if not allowed:
        raise BadQueryError("indexing from the UI is off on this server (it listens beyond this machine); "
                            "restart it with --roots DIR to allow folders under DIR")
    real = os.path.realpath(folder)
    for r in allowed:
        rr = os.path.realpath(r)
        if real == rr or real.startswith(rr.rstrip(os.sep) + os.sep):
            return
    raise BadQueryError("only folders under " + ", ".join(display(str(r)) for r in allowed)
                        + " can be indexed from here (imgrag serve --roots)")


def resolve_listed(backend: "Backend", shown: str) -> str:
    """The stored form of a folder shown in the list; refused when it is not one of the listed folders."""
    listed = {display(f): f for f, _ in folder_counts(backend)}
    folder = listed.get(shown) or (from_display(shown) if from_display(shown) in listed.values() else None)
    if folder is None:
        raise BadQueryError("pick a folder from the list of indexed folders")
    return folder


def remove_folder(backend: "Backend", folder: str) -> int:
    """Delete every row under ``folder`` (stored form) under the index's writer lock; returns how many."""
    if backend.jobs.busy():
        raise ImgragError(f"a background job is running ({backend.jobs.status.title}); wait for it, then remove")
    index = backend.index()
    with index.writing():  # one writer: a running `imgrag index` makes this fail at once
        ids = [i for batch in index.store.scan(columns=["id", "path"])
               for i, p in zip(batch.column("id").to_pylist(), batch.column("path").to_pylist()) if _under(p, folder)]
        for s in range(0, len(ids), 2000):
            index.store.delete(ids[s:s + 2000])
        skipped = index.skipped()
        kept = [r for r in skipped if not _under(str(r.get("path", "")), folder)]
        if len(kept) != len(skipped):
            index.write_skipped(kept)
    forget(backend, folder)
    return len(ids)


def add_folder(backend: "Backend", folder: str):
    """Index ``folder`` in the background (:meth:`Backend.start_indexing`, which applies :func:`check_allowed`)
    and remember it for the folder list."""
    from imgrag.retrieval.paths import to_stored

    st = backend.start_indexing(folder)
    remember(backend, to_stored(os.path.realpath(os.path.expanduser(folder.strip()))))
    return st
