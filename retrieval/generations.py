"""Generations of an index: where a ``--rebuild`` writes, and what is garbage once it has switched.

An index root holds one *published* generation, named by the manifest's ``data`` field (``""``: the store
and skipped list lie in the root itself, the layout of every index until its first rebuild). A rebuild
writes a new generation folder ``gen-<id>/`` (store, skipped list and ``draft.json``, the manifest it will
publish) beside it; the switch is the atomic replace of ``imgrag.json``. Everything else is garbage, removed
by the next writer under the writer lock: older generations (deleted right after a switch, or after a
crash that came between the switch and the deletion), drafts of unfinished rebuilds that are not resumed,
and temp files of interrupted atomic writes.

Only names this module knows are ever deleted; anything else in the root is left alone.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from imgrag.retrieval.atomic import is_temp_name
from imgrag.retrieval.location import Location

GEN_PREFIX = "gen-"
DRAFT = "draft.json"
MANIFEST = "imgrag.json"
#: what the root-level generation (``data: ""``) consists of
ROOT_GENERATION = ("lancedb", "faiss", "skipped.jsonl")


def new_name() -> str:
    return f"{GEN_PREFIX}{uuid.uuid4().hex[:16]}"


def published_data(loc: Location) -> str | None:
    """The ``data`` field of the published manifest; None when there is none or it cannot be read
    (then nothing can be known to be garbage)."""
    try:
        raw = loc.read_bytes(MANIFEST)
        if raw is None:
            return None
        d = json.loads(raw.decode())
        return str(d.get("data") or "") if isinstance(d, dict) else None
    except (ValueError, UnicodeDecodeError):
        return None


def generation_folders(loc: Location) -> list[str]:
    return [n for n in loc.children() if n.startswith(GEN_PREFIX)]


def read_draft(loc: Location, name: str) -> dict | None:
    """The draft manifest of generation ``name`` as a dict; None when absent or unreadable."""
    try:
        raw = loc.read_bytes(f"{name}/{DRAFT}")
        d = json.loads(raw.decode()) if raw is not None else None
    except (ValueError, UnicodeDecodeError):
        return None
    return d if isinstance(d, dict) else None


def remove(loc: Location, name: str) -> None:
    """Delete a file or a folder under the root (absent is fine)."""
    if loc.remote:
        loc.delete(name)
        return
    p = Path(loc.root) / name
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=False)
    else:
        p.unlink(missing_ok=True)


def collect(loc: Location, published: str, draft: str | None = None) -> list[str]:
    """Delete every generation but the ``published`` one (``""`` = the root-level one) and the ``draft``
    being built, and leftover temp files; returns one line per unfinished rebuild discarded (old
    generations are removed silently)."""
    live = {published} | ({draft} if draft is not None else set())
    said: list[str] = []
    for name in loc.children():
        if name.startswith(GEN_PREFIX):
            if name in live:
                continue
            d = read_draft(loc, name)
            remove(loc, name)
            if d is not None:
                said.append(f"discarded the unfinished --rebuild in {loc.join(name)} (model {d.get('model')!r}, "
                            f"store {d.get('store')!r}): another run replaced it")
        elif name in ROOT_GENERATION and "" not in live:
            remove(loc, name)
        elif is_temp_name(name):
            remove(loc, name)
    if published and loc.exists(f"{published}/{DRAFT}"):  # switched: the draft manifest is history
        remove(loc, f"{published}/{DRAFT}")
    return said
