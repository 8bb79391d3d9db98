"""What the viewer and the first screen need from the index: large previews (a photo or a rendered document
page, longest side :data:`PREVIEW_SIZE`), and the first screen's facts, example queries and sample."""

from __future__ import annotations

import os
import random
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.app.web.thumbs import ThumbCache
from imgrag.app.web.viewer import example_queries, welcome_html

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.app.web.backend import Backend

PREVIEW_SIZE = 1600
_PREVIEW_COLUMNS = ["id", "path", "page", "size", "mtime_ns", "hash"]
_SAMPLE_COLUMNS = ["id", "path", "page", "taken_at", "width", "height", "label"]
_caches: "weakref.WeakKeyDictionary[Backend, ThumbCache]" = weakref.WeakKeyDictionary()


def previews(backend: "Backend") -> ThumbCache:
    """The preview cache beside the thumbnails (same keys and hash checks, a larger size)."""
    c = _caches.get(backend)
    if c is None:
        c = _caches[backend] = ThumbCache(backend.thumbs.root / "preview", size=PREVIEW_SIZE)
    return c


def preview(backend: "Backend", item_id: str) -> Path:
    """A large JPEG of an indexed item; :class:`~.files.NotServable` if it is not one or no longer readable."""
    return previews(backend).get(backend.row(item_id, _PREVIEW_COLUMNS), strict=True)


def sample_rows(backend: "Backend", n: int = 12, scan_limit: int = 5000) -> tuple[list[dict[str, Any]], list[str]]:
    """Up to ``n`` rows spread over the collection (photos first), and the paths seen (for example queries)."""
    rows: list[dict[str, Any]] = []
    for batch in backend.index().store.scan(columns=_SAMPLE_COLUMNS, batch_size=1024):
        rows.extend(batch.to_pylist())
        if len(rows) >= scan_limit:
            break
    rng = random.Random(len(rows))  # the same sample for the same collection size
    photos = [r for r in rows if not r.get("page")]
    pages = [r for r in rows if r.get("page")]
    pick = rng.sample(photos, min(len(photos), n - min(2, len(pages))))
    pick += rng.sample(pages, min(len(pages), n - len(pick)))
    return pick, [r["path"] for r in rows]


def first_screen(backend: "Backend") -> str:
    """The first screen's HTML: count, model, last update, example queries, a sample (clickable)."""
    if not backend.has_index():
        return welcome_html(None, [], [], error="No index yet: add a folder in the Index tab.")
    try:
        info = dict(backend.info())
        sample, paths = sample_rows(backend)
    except Exception as e:  # noqa: BLE001 - the first screen never breaks the page
        from imgrag.app.web.html import error_text

        return welcome_html(None, [], [], error=error_text(e))
    manifest = Path(str(backend.root)) / "imgrag.json"
    if "updated_at" not in info and manifest.exists():
        from datetime import datetime

        info["updated_at"] = datetime.fromtimestamp(os.path.getmtime(manifest)).isoformat(timespec="minutes")
    return welcome_html(info, sample, example_queries(paths))
