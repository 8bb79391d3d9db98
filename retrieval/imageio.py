"""Robust image decoding for the indexer: bytes → upright RGB PIL image + capture metadata.

Rules (each one has a test in tests/test_imageio.py):

- The declared size is read from the header and checked against ``max_pixels`` *before* any pixel
  is decoded (decompression bombs never allocate). Default: :data:`DEFAULT_MAX_PIXELS` ≈ 179 MP,
  Pillow's own decompression-bomb error threshold (2 × ``Image.MAX_IMAGE_PIXELS``): enough for
  108 MP phone captures, and a larger ``max_pixels`` only helps if the application also raises
  ``Image.MAX_IMAGE_PIXELS`` (Pillow refuses first otherwise, with the same kind of reason).
- JPEGs are decoded at a reduced DCT scale when ``draft_size`` is given; both sides stay
  ≥ ``draft_size`` so the model's resize never upsamples a drafted image.
- EXIF orientation is applied; width/height are the full-resolution size after orientation (not the
  drafted size). Corrupt EXIF is ignored (the image is still indexed, without EXIF metadata).
- Alpha (RGBA, LA, PA, palette/RGB with a transparency key) is composited on white; CMYK, 16-bit
  and float greyscale, palette and bilevel images become 8-bit RGB; animations give their first frame.
- Decoding is strict: the pixel data (first frame of an animation) must decode completely without a
  decoder error, exactly as Pillow's ``Image.open(f).load()`` with ``LOAD_TRUNCATED_IMAGES`` off;
  truncated or corrupt data fails with a reason, never as a partly blank picture. The strict load
  is the first read of the pixels (nothing before it may swallow a decoder error), and it stays
  strict even if some library switched ``ImageFile.LOAD_TRUNCATED_IMAGES`` on (tests/test_fuzz_decode.py).
- Huge images: ``max_pixels`` above the default accepts them; over :data:`REDUCE_ABOVE_PIXELS` they
  are decoded reduced (JPEG at a DCT scale, non-interlaced 8-bit PNG in strips) — see
  :mod:`imgrag.retrieval.reduced` for the memory bound of each format.
- Tiny images (1×1) and extreme strips (20000×10) decode normally; the embedder's transform copes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from PIL import Image, UnidentifiedImageError

from imgrag.retrieval.pixels import ImageDecodeError, _short, strict_load, to_rgb

__all__ = ["DecodedImage", "ImageDecodeError", "content_hash", "decode_image", "is_supported", "to_rgb",
           "strict_load", "pixel_limit"]

#: Refuse images whose declared width × height exceeds this (pixels). Same as Pillow's hard limit
#: (2 × the default ``Image.MAX_IMAGE_PIXELS``) and the indexer's default.
DEFAULT_MAX_PIXELS = 178_956_970

#: Images with more pixels than this (only accepted with a larger ``max_pixels``, e.g. huge scans)
#: are decoded reduced, with bounded memory where the format allows (:mod:`imgrag.retrieval.reduced`).
#: Everything up to the default limit decodes at full resolution, exactly as Pillow decodes it.
REDUCE_ABOVE_PIXELS = DEFAULT_MAX_PIXELS

_BASE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def _optional_extensions() -> set[str]:
    exts: set[str] = set()
    try:
        import pillow_heif  # type: ignore[import-not-found]

        pillow_heif.register_heif_opener()
        exts |= {".heic", ".heif"}
    except Exception:  # noqa: BLE001 - optional plugin, any import failure means "not available"
        pass
    try:
        from PIL import features

        if features.check("avif"):
            exts.add(".avif")
    except Exception:  # noqa: BLE001  # pragma: no cover
        pass
    return exts


#: Lower-case file suffixes (with the dot) the indexer should try to decode.
SUPPORTED_EXTENSIONS: frozenset[str] = frozenset(_BASE_EXTENSIONS | _optional_extensions())

# EXIF tag numbers
_TAG_ORIENTATION = 0x0112
_IFD_EXIF = 0x8769
_IFD_GPS = 0x8825
_TAG_DATETIME_ORIGINAL = 0x9003
_TAG_DATETIME_DIGITIZED = 0x9004
_GPS_LAT_REF, _GPS_LAT, _GPS_LON_REF, _GPS_LON = 1, 2, 3, 4


@dataclass
class DecodedImage:
    """A decoded, upright RGB image and its capture metadata."""

    #: Upright RGB image; smaller than width × height when a JPEG draft was used.
    image: Image.Image
    #: Full-resolution size after EXIF orientation.
    width: int
    height: int
    #: EXIF DateTimeOriginal (fallback DateTimeDigitized) as a naive datetime, else None.
    taken_at: datetime | None = None
    #: Decimal degrees (south/west negative), else None.
    gps_lat: float | None = None
    gps_lon: float | None = None
    #: Pillow format name ("JPEG", "PNG", …).
    format: str | None = None


def pixel_limit(megapixels: float | None) -> int:
    """The ``max_pixels`` for a ``--max-megapixels N`` setting (None: :data:`DEFAULT_MAX_PIXELS`)."""
    return DEFAULT_MAX_PIXELS if megapixels is None else int(megapixels * 1_000_000)


def content_hash(data: bytes) -> str:
    """Content identity of a file's bytes (32 hex chars)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def is_supported(path: str) -> bool:
    """Whether a file name has one of :data:`SUPPORTED_EXTENSIONS`."""
    dot = path.rfind(".")
    return dot >= 0 and path[dot:].lower() in SUPPORTED_EXTENSIONS


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"))


def _sniff_non_image(data: bytes) -> str:
    head = data[:2048]
    fmt = next((f for sig, f in _SIGNATURES if head.startswith(sig)), None)
    if fmt is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        fmt = "WEBP"
    if fmt is not None and (fmt != "BMP" or len(head) >= 14 and b"\x00" in head[:14]):
        return f"truncated or corrupt {fmt} (its header cannot be read)"
    if head.startswith(b"%PDF"):
        return "not an image (PDF document)"
    if head[:4] in (b"PK\x03\x04",):
        return "not an image (zip archive)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
        return "not an image (HTML page)"
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in text:
        return "not an image (SVG drawing; not supported)"
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
            return "not an image (text file)"
        except UnicodeDecodeError as e:
            if e.start >= len(head) - 4:  # a multibyte char cut at the 2048-byte boundary
                return "not an image (text file)"
    return "not an image (unrecognised format)"


def decode_image(data: bytes, *, draft_size: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode ``data`` into an upright RGB image; raise :class:`ImageDecodeError` with a reason.

    Images over :data:`REDUCE_ABOVE_PIXELS` (only reachable with a ``max_pixels`` above the default)
    come back reduced to at most :data:`~imgrag.retrieval.reduced.REDUCED_MAX_PIXELS`, decoded with
    bounded memory where the format allows (see :mod:`imgrag.retrieval.reduced`).
    """
    if not data:
        raise ImageDecodeError("zero-byte file")
    img = _open(data, max_pixels)
    fmt = img.format
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        raise ImageDecodeError(
            f"image too large: {w}x{h} ({_mp(w * h)} MP > {_mp(max_pixels)} MP limit)"
        )

    if w * h > REDUCE_ABOVE_PIXELS:
        from imgrag.retrieval import reduced

        rgb = reduced.decode_reduced(img, data, draft_size)
        # a PNG decoded in strips was never loaded: its getexif() would load the whole image
        exif = reduced.png_exif(img) if fmt == "PNG" else _read_exif(img)
    else:
        if draft_size and fmt == "JPEG" and draft_size > 0:
            # only reduces the DCT scale while both sides stay >= draft_size; draft() reads no pixel
            # data, so the strict load below still sees every error of the (reduced) decode
            img.draft("RGB", (int(draft_size), int(draft_size)))
        # The strict load comes first, before anything else touches the file: Pillow's PNG getexif()
        # loads the pixels itself, and a load that failed there (error swallowed with the EXIF)
        # leaves a zero-filled image that a second load() returns without complaint.
        strict_load(img)
        exif = _read_exif(img)
        rgb = to_rgb(img)
    orientation = _orientation(exif)

    if orientation and orientation != 1:
        rgb = _apply_orientation(rgb, orientation)
        if orientation in (5, 6, 7, 8):
            w, h = h, w

    taken_at, lat, lon = _exif_metadata(exif)
    return DecodedImage(image=rgb, width=w, height=h, taken_at=taken_at, gps_lat=lat, gps_lon=lon,
                        format=fmt)


@dataclass
class JpegHeader:
    """What a JPEG's header says, read without decoding its pixels (EXIF sits in APP1, before the scan)."""

    mode: str
    bits: int
    width: int  # as stored, before EXIF orientation
    height: int
    orientation: int  # EXIF orientation, 1 when absent or unreadable
    taken_at: datetime | None
    gps_lat: float | None
    gps_lon: float | None


def read_jpeg_header(data: bytes, max_pixels: int) -> JpegHeader | None:
    """The header of a JPEG (None for any other format), with the same open-time checks and reasons as
    :func:`decode_image` (it raises :class:`ImageDecodeError` for an unreadable header). Only for JPEG:
    other formats (PNG) may load their pixels to read EXIF."""
    img = _open(data, max_pixels)
    if img.format != "JPEG":
        return None
    exif = _read_exif(img)
    taken_at, lat, lon = _exif_metadata(exif)
    return JpegHeader(mode=img.mode, bits=int(getattr(img, "bits", 8)), width=img.size[0], height=img.size[1],
                      orientation=_orientation(exif), taken_at=taken_at, gps_lat=lat, gps_lon=lon)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """``Image.open`` (header only) with reasons; Pillow's own bomb limit follows ``max_pixels``."""
    try:
        with warnings.catch_warnings(), _pillow_pixel_limit(max_pixels):
            # our own limit is checked by the caller, before decoding; Pillow's warning would be noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.filterwarnings("ignore", message="Corrupt EXIF data")  # JPEG parses EXIF on open
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(_bomb_reason(e, max_pixels)) from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(_sniff_non_image(data)) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # broken headers
        if "truncated" in str(e).lower() or isinstance(e, EOFError):
            sig = next((f for sig, f in _SIGNATURES if data.startswith(sig)), "image")
            raise ImageDecodeError(f"truncated {sig}") from e
        raise ImageDecodeError(f"unreadable image header ({_short(e)})") from e


_PILLOW_LIMIT_LOCK = threading.Lock()


@contextlib.contextmanager
def _pillow_pixel_limit(max_pixels: int):
    """Raise Pillow's global bomb limit for this open when ``max_pixels`` asks for more (the caller
    checks ``max_pixels`` itself). Pillow refuses in ``Image.open`` at 2 × ``MAX_IMAGE_PIXELS``."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None or max_pixels <= 2 * current:
        yield
        return
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels // 2 + 1
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _mp(pixels: int) -> str:
    v = pixels / 1e6
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def _bomb_reason(e: BaseException, max_pixels: int) -> str:
    """Pillow refused in ``Image.open`` (above its own limit); its message carries the pixel count."""
    import re

    m = re.search(r"\((\d+) pixels\)", str(e))
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
    if m:
        return f"image too large: {_mp(int(m.group(1)))} MP > {_mp(limit)} MP limit"
    return f"image too large (> {_mp(limit)} MP limit)"


def _read_exif(img: Image.Image) -> Any:
    """The image's EXIF, or None when absent or unreadable (corrupt EXIF never fails the image)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" warnings: we ignore such EXIF anyway
            return _parse_exif(img)
    except Exception:  # noqa: BLE001 - any EXIF parsing problem means "no EXIF"
        return None


def _parse_exif(img: Image.Image) -> Any:
    try:
        exif = img.getexif()
        # touch the parts we use so a corrupt IFD fails here, not later
        exif.get(_TAG_ORIENTATION)
        return exif if len(exif) or exif.get_ifd(_IFD_EXIF) or exif.get_ifd(_IFD_GPS) else None
    except Exception:  # noqa: BLE001 - any EXIF parsing problem means "no EXIF"
        return None


def _orientation(exif: Any) -> int:
    if exif is None:
        return 1
    try:
        value = int(exif.get(_TAG_ORIENTATION, 1))
    except Exception:  # noqa: BLE001
        return 1
    return value if 1 <= value <= 8 else 1


_TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """Same mapping as ``ImageOps.exif_transpose``, applied to the already-converted RGB image
    (``exif_transpose`` itself re-parses EXIF, which we already did defensively)."""
    for op in _TRANSPOSE.get(orientation, ()):
        img = img.transpose(op)
    return img


def _exif_metadata(exif: Any) -> tuple[datetime | None, float | None, float | None]:
    if exif is None:
        return None, None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _exif_fields(exif)


def _exif_fields(exif: Any) -> tuple[datetime | None, float | None, float | None]:
    taken_at = None
    try:
        sub = exif.get_ifd(_IFD_EXIF)
        for tag in (_TAG_DATETIME_ORIGINAL, _TAG_DATETIME_DIGITIZED):
            taken_at = _parse_exif_datetime(sub.get(tag))
            if taken_at is not None:
                break
    except Exception:  # noqa: BLE001
        taken_at = None
    lat = lon = None
    try:
        gps = exif.get_ifd(_IFD_GPS)
        if gps:
            lat = _gps_coord(gps.get(_GPS_LAT), gps.get(_GPS_LAT_REF), "NS", 90.0)
            lon = _gps_coord(gps.get(_GPS_LON), gps.get(_GPS_LON_REF), "EW", 180.0)
            if lat is None or lon is None or (lat == 0.0 and lon == 0.0):
                # 0,0 is what cameras write without a fix
                lat = lon = None
    except Exception:  # noqa: BLE001
        lat = lon = None
    return taken_at, lat, lon


def _parse_exif_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore")
    s = str(value).strip().strip("\x00").strip()
    if len(s) < 19:
        return None
    s = s[:19]
    for fmt in ("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y/%m/%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
        try:
            dt = datetime.strptime(s, fmt)
        except ValueError:
            continue
        return dt if dt.year >= 1800 else None
    return None


def _gps_coord(value: Any, ref: Any, refs: str, limit: float) -> float | None:
    if value is None:
        return None
    try:
        parts = [float(v) for v in (value if isinstance(value, (tuple, list)) else (value,))]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not parts or len(parts) > 3 or not all(math.isfinite(p) and p >= 0 for p in parts):
        return None
    deg = parts[0] + (parts[1] / 60.0 if len(parts) > 1 else 0.0) + (parts[2] / 3600.0 if len(parts) > 2 else 0.0)
    if isinstance(ref, bytes):
        ref = ref.decode("ascii", "ignore")
    ref = str(ref or refs[0]).strip().strip("\x00").upper()[:1]
    if ref == refs[1]:
        deg = -deg
    elif ref != refs[0]:
        return None
    if abs(deg) > limit:
        return None
    return round(deg, 7)
