"""Strict pixel loading and conversion to 8-bit RGB (shared by the normal and the reduced decode).

A decode is strict: ``Image.load()`` must decode the whole first frame without a decoder error,
whatever ``ImageFile.LOAD_TRUNCATED_IMAGES`` some other library set; failures become an
:class:`ImageDecodeError` whose reason names the file problem ("truncated PNG", "corrupt JPEG (…)").
"""

from __future__ import annotations

import threading

from PIL import Image, ImageFile


class ImageDecodeError(Exception):
    """An image that cannot be indexed; ``str(e)`` / ``e.reason`` is a short human reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason



_STRICT_LOCK = threading.Lock()


def strict_load(img: Image.Image) -> None:
    """``img.load()`` that fails on any decoder error, with a reason.

    ``ImageFile.LOAD_TRUNCATED_IMAGES`` is a process-wide switch that any imported library may set;
    when it is on, it is turned off for the duration of this load (and restored) so a truncated or
    corrupt file is never indexed as a partly blank picture.
    """
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            with _STRICT_LOCK:
                saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
                try:
                    img.load()
                finally:
                    ImageFile.LOAD_TRUNCATED_IMAGES = saved
        else:
            img.load()
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(_load_reason(img.format, e)) from e
    except MemoryError as e:  # pragma: no cover
        raise ImageDecodeError(f"out of memory decoding {img.size[0]}x{img.size[1]} image") from e


def _short(e: BaseException) -> str:
    s = " ".join(str(e).split()) or type(e).__name__
    return s[:120]


def _load_reason(fmt: str | None, e: BaseException) -> str:
    msg = str(e).lower()
    name = fmt or "image"
    if "truncated" in msg or isinstance(e, EOFError) or "premature end" in msg:
        return f"truncated {name}"
    return f"corrupt {name} ({_short(e)})"


def to_rgb(img: Image.Image) -> Image.Image:
    """A loaded image as 8-bit RGB: alpha on white, CMYK/16-bit/float/palette/bilevel converted."""
    try:
        return _to_rgb(img)
    except ImageDecodeError:
        raise
    except (OSError, ValueError) as e:
        raise ImageDecodeError(_load_reason(img.format, e)) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _high_depth_to_rgb(img)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    if has_alpha:
        try:
            rgba = img.convert("RGBA")
        except (ValueError, OSError):
            rgba = None
        if rgba is not None:
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background
    if mode == "CMYK":
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise ImageDecodeError(f"unsupported colour mode {mode}") from e


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit integer and float greyscale → 8-bit, scaled (not clipped)."""
    import numpy as np

    arr = np.asarray(img)
    if img.mode == "F":
        arr = arr.astype(np.float64)
        finite = np.isfinite(arr)
        if not finite.any():
            arr8 = np.zeros(arr.shape, np.uint8)
        else:
            lo, hi = float(arr[finite].min()), float(arr[finite].max())
            if lo >= 0.0 and hi <= 1.0:
                lo, hi = 0.0, 1.0  # already normalised
            scale = 255.0 / (hi - lo) if hi > lo else 0.0
            arr8 = np.clip(np.nan_to_num((arr - lo) * scale), 0, 255).round().astype(np.uint8)
    else:
        arr = arr.astype(np.int64)
        if img.mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            lo, hi = int(arr.min()), int(arr.max())
            arr8 = ((arr - lo) * 255 // max(hi - lo, 1)).astype(np.uint8)
        else:
            # 16-bit range (I;16*, and "I" as Pillow opens 16-bit PNG/TIFF): 65535 → 255
            arr8 = ((np.clip(arr, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(arr8, mode="L").convert("RGB")
