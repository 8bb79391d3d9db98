"""Safe file access for the web UI: indexed files read only when their hash still matches, MIME sniffing
from magic bytes, and uploads refused over their byte or pixel limit before any pixel is decoded.

Safety rules, each with a test (tests/test_ui_core.py):

- Only indexed items are ever read from disk, and only when the file's current bytes still have the
  content hash recorded at indexing time (:func:`read_indexed`). A path that is not an ``id`` in the
  store — ``../``, absolute, URL-encoded, SQL-ish — is never touched; an indexed file that was swapped
  for a symlink to something else, or edited, no longer matches its hash and is refused.
- Uploads: the byte size is checked first, then the declared width × height from the header, before
  any pixel is decoded (:func:`load_upload`).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

from imgrag.retrieval.errors import BadQueryError, ImgragError
from imgrag.retrieval.paths import to_fs

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Upload limits (override with ``imgrag serve --max-upload-mb / --max-upload-mp``).
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000


class NotServable(ImgragError):
    """A file the UI refuses to read (not indexed, changed since indexing, not a regular file)."""


def read_indexed(row: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """The bytes of an indexed item's file, only if they still hash to the indexed content hash.

    ``row`` must come from the store (never from a request). The file is opened once and checked on
    that descriptor: a regular file, the indexed size, the indexed BLAKE2b hash. So a file replaced by
    a symlink to a secret, a FIFO or an edited file is refused instead of served.
    """
    from imgrag.retrieval.imageio import content_hash

    path = row.get("path")
    expected = row.get("hash")
    size = row.get("size")
    if not path or not expected:
        raise NotServable("item has no recorded content hash; re-index it")
    try:
        fd = os.open(to_fs(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise NotServable(f"file is no longer readable ({e.strerror or e}); re-index to update") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotServable("not a regular file any more; re-index to update")
        if size is not None and st.st_size != size:
            raise NotServable("file changed since it was indexed; re-index to update")
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotServable("file too large to serve")
        chunks = []
        remaining = st.st_size + 1  # read one byte more than expected to notice growth
        while remaining > 0:
            b = os.read(fd, min(remaining, 1 << 20))
            if not b:
                break
            chunks.append(b)
            remaining -= len(b)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if content_hash(data) != expected:
        raise NotServable("file changed since it was indexed; re-index to update")
    return data


def image_mime(data: bytes) -> str | None:
    """MIME type of an image from its magic bytes (None for anything else)."""
    sigs = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
            (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))
    for sig, mime in sigs:
        if data.startswith(sig):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heif", b"avif"):
        return "image/avif" if data[8:12] == b"avif" else "image/heic"
    if data.startswith(b"%PDF"):
        return "application/pdf"
    return None


def load_upload(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> "Image.Image":
    """Decode an uploaded image, refusing it *before decoding* if it is over the byte or pixel limit.

    The byte size comes from ``stat``; the pixel count from the header (:func:`decode_image` checks it
    before loading pixels), so a decompression bomb never allocates its pixels.
    """
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    try:
        n = os.stat(path).st_size
    except OSError as e:
        raise BadQueryError(f"the upload could not be read ({e.strerror or e}); try again") from e
    if n > max_bytes:
        raise BadQueryError(f"upload too large: {n / 1e6:.1f} MB > {max_bytes / 1e6:.0f} MB limit")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    try:
        return decode_image(data, draft_size=None, max_pixels=max_pixels).image
    except ImageDecodeError as e:
        raise BadQueryError(f"upload refused: {e}") from e
