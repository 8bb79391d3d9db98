"""Layout-preserving views of document pages for embedding.

A photo goes through the model's own preprocessing (resize + centre crop). A page must not: a centre
crop of a portrait page cuts its header and footer, and small text needs resolution. A page is
turned into several square *views*:

- the whole page, padded with white to a square (aspect ratio kept, nothing cut), and
- for tall or wide pages, ``ceil(long/short)`` (at most ``max_tiles``) overlapping square tiles
  along the long side, each at a higher effective resolution than the whole-page view;
- for *dense* pages (at least :data:`DENSE_CHARS_PER_SQIN` non-space characters of text layer or OCR
  text per square inch of page, whatever the aspect ratio), a 2×2 grid of overlapping tiles instead
  (AnyRes-style): each quarter of the page at about twice the whole-page resolution, for small text.

Each view goes through the model's ordinary transform; the views' vectors are averaged and
re-normalised into the page's one stored vector (mean pooling; ``bench/docs_retrieval.py`` compares
mean with max pooling and with centre cropping). Photos are untouched: this is only used for pages.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: Default number of tiles besides the whole-page view (0 = whole page only).
DEFAULT_MAX_TILES = 2
#: Pages whose long/short side ratio is at least this are tiled.
TILE_MIN_ASPECT = 1.15
#: Pages with at least this many non-space text characters per square inch are *dense*: they get a
#: 2×2 grid of tiles. A full page of 10-pt body text (R manuals: 2,200–2,500 characters on a US Letter
#: page, 93.5 in²) is 24–27; a title page or a figure with a caption is below 3.
DENSE_CHARS_PER_SQIN = 15.0
#: Each grid tile spans this fraction of the page's width and height (so neighbours overlap by 10 %
#: and a line of text on the middle seam is whole in one of them).
GRID_TILE_FRACTION = 0.55


def pad_to_square(image: "Image.Image", crop_fraction: float = 1.0, fill=(255, 255, 255)) -> "Image.Image":
    """Centre ``image`` on a white square big enough that a centre crop keeping ``crop_fraction`` of
    the side (the model's own preprocessing) keeps all of the image."""
    from PIL import Image

    w, h = image.size
    side = int(math.ceil(max(w, h) / max(1e-6, min(1.0, crop_fraction))))
    if side == w == h:
        return image
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image.convert("RGB"), ((side - w) // 2, (side - h) // 2))
    return canvas


def tile_boxes(width: int, height: int, max_tiles: int = DEFAULT_MAX_TILES) -> list[tuple[int, int, int, int]]:
    """Square crop boxes (left, top, right, bottom) along the long side, evenly spaced, overlapping;
    empty for near-square pages or ``max_tiles < 2``."""
    short, long = min(width, height), max(width, height)
    if max_tiles < 2 or short <= 0 or long < TILE_MIN_ASPECT * short:
        return []
    n = min(max_tiles, int(math.ceil(long / short)))
    if n < 2:
        return []
    step = (long - short) / (n - 1)
    boxes = []
    for i in range(n):
        off = int(round(i * step))
        boxes.append((0, off, width, off + short) if height >= width else (off, 0, off + short, height))
    return boxes


def text_density(text: str | None, width: int, height: int, dpi: float) -> float:
    """Non-space characters of ``text`` per square inch of a page rendered at ``width``×``height``
    pixels and ``dpi``."""
    if not text or width <= 0 or height <= 0 or dpi <= 0:
        return 0.0
    area = (width / float(dpi)) * (height / float(dpi))
    return sum(1 for ch in text if not ch.isspace()) / area


def is_dense(text: str | None, width: int, height: int, dpi: float) -> bool:
    """Whether a page's text is dense enough for grid tiles (:data:`DENSE_CHARS_PER_SQIN`)."""
    return text_density(text, width, height, dpi) >= DENSE_CHARS_PER_SQIN


def grid_boxes(width: int, height: int, frac: float = GRID_TILE_FRACTION) -> list[tuple[int, int, int, int]]:
    """The 2×2 grid of overlapping crop boxes (left, top, right, bottom): top-left, top-right,
    bottom-left, bottom-right, each ``frac`` of the page's width and height."""
    tw, th = int(math.ceil(width * frac)), int(math.ceil(height * frac))
    return [(0, 0, tw, th), (width - tw, 0, width, th), (0, height - th, tw, height),
            (width - tw, height - th, width, height)]


def view_boxes(width: int, height: int, max_tiles: int = DEFAULT_MAX_TILES,
               dense: bool = False) -> list[tuple[int, int, int, int]]:
    """Crop boxes of a page's tiles (the whole-page view not included): the 2×2 grid for dense pages
    when tiling is on (``max_tiles >= 2``), else :func:`tile_boxes`."""
    if dense and max_tiles >= 2 and min(width, height) > 0:
        return grid_boxes(width, height)
    return tile_boxes(width, height, max_tiles=max_tiles)


def page_views(image: "Image.Image", crop_fraction: float = 1.0, max_tiles: int = DEFAULT_MAX_TILES,
               dense: bool = False) -> list["Image.Image"]:
    """The whole page padded to a square, then its tiles (each padded for the model's crop)."""
    views = [pad_to_square(image, crop_fraction)]
    for box in view_boxes(*image.size, max_tiles=max_tiles, dense=dense):
        views.append(pad_to_square(image.crop(box), crop_fraction))
    return views


class PageTransform:
    """Picklable: page image → (views, 3, H, W) tensor with the model's own per-view transform."""

    def __init__(self, base: Callable, crop_fraction: float = 1.0, max_tiles: int = DEFAULT_MAX_TILES) -> None:
        self.base = base
        self.crop_fraction = float(crop_fraction)
        self.max_tiles = int(max_tiles)

    def __call__(self, image: "Image.Image", text: str | None = None, dpi: float | None = None) -> "torch.Tensor":
        """``text`` (the page's text layer or OCR) and ``dpi`` (its render resolution) decide whether
        the page is dense (:func:`is_dense`); without them it is not."""
        import torch

        dense = bool(text) and bool(dpi) and is_dense(text, image.width, image.height, float(dpi))
        views = page_views(image, self.crop_fraction, self.max_tiles, dense=dense)
        return torch.stack([self.base(v) for v in views])

    def __repr__(self) -> str:
        return f"PageTransform(crop_fraction={self.crop_fraction}, max_tiles={self.max_tiles}, base={self.base!r})"


def crop_fraction_of(embedder) -> float:
    """Fraction of a square's side the embedder's preprocessing keeps (lite: 224/256; open_clip: 1)."""
    return float(getattr(embedder, "crop_fraction", 1.0) or 1.0)


def pool_views(vectors: np.ndarray, owners: list[int], how: str = "mean") -> tuple[np.ndarray, list[int]]:
    """Pool consecutive rows with the same owner into one L2-normalised row.

    ``vectors`` (n, d) and ``owners`` (n,) as produced by the decode collate function; returns the
    pooled (m, d) array and the m distinct owners in order. Rows of single-view items pass unchanged.
    """
    if len(owners) == 0 or len(set(owners)) == len(owners):
        return vectors, list(owners)
    out, own = [], []
    start = 0
    for i in range(1, len(owners) + 1):
        if i == len(owners) or owners[i] != owners[start]:
            block = vectors[start:i]
            if how == "max":
                v = block.max(axis=0)
            else:
                v = block.mean(axis=0)
            n = float(np.linalg.norm(v))
            out.append(v / n if n > 1e-12 and np.isfinite(n) else np.full_like(v, np.nan))
            own.append(owners[start])
            start = i
    return np.stack(out).astype(np.float32), own
