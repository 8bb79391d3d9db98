"""Reduced decoding of huge images (scans, posters) with bounded memory where the format allows.

Only used for images over :data:`imgrag.retrieval.imageio.REDUCE_ABOVE_PIXELS` (accepted only when the
user raises ``max_pixels`` / ``--max-megapixels``). The result is at most :data:`REDUCED_MAX_PIXELS`,
an integer box reduction (``Image.reduce``) of what a full strict decode would give. Peak memory
beyond the file's own bytes, per format:

- JPEG: decoded at a DCT scale (``Image.draft``, 1/2 … 1/8 per side): at most w × h / 64 × 3 bytes
  at 1/8, then reduced further if still too large.
- PNG, 8 bits per channel, not interlaced (scans, posters, most screenshots): decoded in strips of
  about :data:`STRIP_BYTES` of raw rows, each reduced on the fly: a few × ``STRIP_BYTES`` plus the
  reduced result, whatever the image size. Each strip is a small PNG that Pillow decodes strictly
  (its filters need only the previous row, which the strip carries as an unfiltered first row).
- Everything else (16-bit or interlaced PNG, TIFF, WebP, BMP, GIF): Pillow has no reduced decode;
  the full frame is decoded (w × h × bands bytes, 4 per pixel for RGB) and then reduced.

Errors are the same strict :class:`~imgrag.retrieval.imageio.ImageDecodeError` reasons as a full decode.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from typing import Any

from PIL import Image

from imgrag.retrieval.pixels import ImageDecodeError, strict_load, to_rgb

#: The largest reduced result (pixels): plenty for any model input, thumbnail or page view.
REDUCED_MAX_PIXELS = 16_000_000
#: Raw (decompressed, filtered) PNG bytes decoded at a time.
STRIP_BYTES = 16 << 20

_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type -> samples per pixel


def reduction_factor(w: int, h: int, target: int = REDUCED_MAX_PIXELS) -> int:
    """Smallest integer f with ceil(w/f) × ceil(h/f) <= target."""
    f = max(1, int(math.sqrt(w * h / target)))
    while math.ceil(w / f) * math.ceil(h / f) > target:
        f += 1
    return f


def decode_reduced(img: Image.Image, data: bytes, draft_size: int | None) -> Image.Image:
    """The reduced RGB image (EXIF orientation not applied) of an opened, not yet loaded huge image."""
    w, h = img.size
    f = reduction_factor(w, h)
    if img.format == "JPEG":
        want = (int(draft_size),) * 2 if draft_size and draft_size > 0 else (math.ceil(w / f), math.ceil(h / f))
        img.draft("RGB", want)  # reads no pixel data: the strict load below sees every error
        strict_load(img)
        return _shrink(to_rgb(img))
    if img.format == "PNG" and _png_strippable(data):
        return _png_in_strips(data, f)
    strict_load(img)
    if img.mode in ("L", "RGB"):  # reduce before the RGB copy: 1/f² of the memory for that step
        return to_rgb(img.reduce(f))
    return to_rgb(img).reduce(f)


def _shrink(rgb: Image.Image) -> Image.Image:
    f = reduction_factor(*rgb.size)
    return rgb.reduce(f) if f > 1 else rgb


def png_exif(img: Image.Image) -> Any:
    # Never img.getexif() here: for a PNG it loads the whole image. An eXIf chunk before the image
    # data is in img.info already; one after it is not read (no capture date for such a file).
    raw = img.info.get("exif")
    if not raw:
        return None
    try:
        exif = Image.Exif()
        exif.load(raw[6:] if raw.startswith(b"Exif\x00\x00") else raw)
        return exif
    except Exception:  # noqa: BLE001 - corrupt EXIF means "no EXIF"
        return None


def _png_strippable(data: bytes) -> bool:
    if len(data) < 33 or data[12:16] != b"IHDR":
        return False
    depth, ctype, _comp, _filt, interlace = struct.unpack(">BBBBB", data[24:29])
    return depth == 8 and ctype in _PNG_CHANNELS and interlace == 0


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_chunks(data: bytes):
    """(type, payload memoryview) of each chunk up to IEND; a chunk running off the end is truncation."""
    view = memoryview(data)
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise ImageDecodeError("truncated PNG")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if pos + 12 + length > len(data):
            raise ImageDecodeError("truncated PNG")
        yield kind, view[pos + 8:pos + 8 + length]
        if kind == b"IEND":
            return
        pos += 12 + length


def _png_in_strips(data: bytes, f: int) -> Image.Image:
    """Decode a non-interlaced 8-bit PNG strip by strip, each reduced by ``f``; see the module doc."""
    ihdr = data[16:29]
    w, h = struct.unpack(">II", ihdr[:8])
    stride = 1 + w * _PNG_CHANNELS[ihdr[9]]
    rows = f * max(1, STRIP_BYTES // (stride * f))  # strips are whole reduction blocks
    side = b"".join(_chunk(k, bytes(p)) for k, p in _png_chunks(data) if k in (b"PLTE", b"tRNS"))
    out = Image.new("RGB", (math.ceil(w / f), math.ceil(h / f)))
    z = zlib.decompressobj()
    pending = bytearray()
    prev: bytes | None = None  # the row above the next strip, unfiltered, as a filter-0 row
    y = 0

    def emit(n: int) -> None:
        nonlocal prev, y
        raw = bytes(pending[:n * stride])
        del pending[:n * stride]
        top = 1 if prev is not None else 0
        png = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">II", w, n + top) + ihdr[8:]) + side
               + _chunk(b"IDAT", zlib.compress((prev or b"") + raw, 0)) + _chunk(b"IEND", b""))
        strip = Image.open(io.BytesIO(png))
        strict_load(strip)
        if top:
            strip = strip.crop((0, 1, w, n + 1))
        prev = b"\x00" + strip.crop((0, n - 1, w, n)).tobytes()
        out.paste(to_rgb(strip).reduce(f), (0, y // f))
        y += n

    for kind, payload in _png_chunks(data):
        if kind != b"IDAT" or y >= h:
            continue
        buf = bytes(payload)
        while buf and y < h:
            want = min(rows, h - y) * stride
            try:
                pending += z.decompress(buf, max(want - len(pending), 1))
            except zlib.error as e:
                raise ImageDecodeError(f"corrupt PNG ({e})") from e
            buf = z.unconsumed_tail
            if len(pending) >= want:
                emit(want // stride)
            elif z.eof:
                break
    try:
        pending += z.flush()
    except zlib.error as e:
        raise ImageDecodeError(f"corrupt PNG ({e})") from e
    while y < h and len(pending) >= min(rows, h - y) * stride:  # rows still buffered
        emit(min(rows, h - y))
    if y < h:
        raise ImageDecodeError("truncated PNG")
    return out
