"""The thumbnail cache: JPEG thumbnails of indexed items, rendered on first use from hash-checked bytes."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.app.web.files import NotServable, read_indexed
from imgrag.retrieval.atomic import atomic_open
from imgrag.retrieval.errors import ImgragError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger("imgrag.ui")

THUMB_SIZE = 320


def default_thumb_dir(index_root: Path) -> Path:
    """``$XDG_CACHE_HOME/imgrag/thumbs/<hash of the index path>`` (never inside the index itself)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.blake2b(str(Path(index_root).resolve()).encode(), digest_size=8).hexdigest()
    return Path(base) / "imgrag" / "thumbs" / key


class ThumbCache:
    """JPEG thumbnails (longest side :data:`THUMB_SIZE`) keyed by item id + size + mtime + hash.

    A changed file gets a new key, so a stale thumbnail is never shown; unreadable items get a
    placeholder. Files are written atomically (temp file + rename), so concurrent requests are safe.
    """

    def __init__(self, root: Path, size: int = THUMB_SIZE) -> None:
        self.root = Path(root)
        self.size = size
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, row: dict[str, Any]) -> str:
        raw = "\0".join(str(row.get(c)) for c in ("id", "size", "mtime_ns", "hash"))
        return hashlib.blake2b(raw.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def path_for(self, row: dict[str, Any]) -> Path:
        k = self.key(row)
        return self.root / k[:2] / f"{k}.jpg"

    def get(self, row: dict[str, Any], strict: bool = False) -> Path:
        """Thumbnail file for ``row`` (generated on first use). If the file is unreadable or changed:
        the placeholder, or :class:`NotServable` with ``strict``."""
        p = self.path_for(row)
        if p.exists():
            return p
        try:
            img = render_thumbnail(read_indexed(row), self.size, page=row.get("page"))
        except (NotServable, ImgragError) as e:
            if strict:
                raise NotServable(str(e)) from e
            log.info("thumbnail for %r unavailable: %s", row.get("id"), e)
            return self.placeholder()
        self._save(img, p)
        return p

    def prune(self, max_files: int = 50_000) -> int:
        """Keep the cache bounded: delete the least recently written thumbnails beyond ``max_files``."""
        files = []
        for p in self.root.glob("??/*.jpg"):
            try:
                files.append((p.stat().st_mtime, p))
            except OSError:
                continue
        if len(files) <= max_files:
            return 0
        files.sort()
        n = 0
        for _, p in files[: len(files) - max_files]:
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n

    def placeholder(self) -> Path:
        p = self.root / "unavailable.jpg"
        if not p.exists():
            from PIL import Image, ImageDraw

            img = Image.new("RGB", (self.size, self.size * 3 // 4), (230, 230, 230))
            d = ImageDraw.Draw(img)
            d.line((0, 0, img.width, img.height), fill=(190, 190, 190), width=3)
            d.line((0, img.height, img.width, 0), fill=(190, 190, 190), width=3)
            d.text((10, 10), "file changed or missing", fill=(90, 90, 90))
            self._save(img, p)
        return p

    def _save(self, img: "Image.Image", p: Path) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        # a cache: a crash loses at most a thumbnail that is rendered again, so no fsync
        with atomic_open(p, durable=False) as f:
            img.save(f, "JPEG", quality=82, optimize=False)


def render_thumbnail(data: bytes, size: int = THUMB_SIZE, page: int | None = None) -> "Image.Image":
    """Decode ``data`` (reduced-size JPEG decoding) and shrink it to fit ``size``×``size``."""
    from PIL import Image

    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    if page is not None and data.startswith(b"%PDF"):
        img = _render_pdf_page(data, page, size)
    else:
        try:
            img = decode_image(data, draft_size=size).image
        except ImageDecodeError as e:
            raise NotServable(f"cannot decode image: {e}") from e
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    return img


def _render_pdf_page(data: bytes, page: int, size: int) -> "Image.Image":
    try:
        import pypdfium2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as e:
        raise NotServable("rendering document pages needs pypdfium2") from e
    from imgrag.retrieval.pdf import render_to_fit  # PDFium is not thread-safe: it holds a lock

    try:
        return render_to_fit(data, page, size)
    except Exception as e:  # noqa: BLE001 - any PDF problem means "no thumbnail"
        raise NotServable(f"cannot render page {page}: {e}") from e
