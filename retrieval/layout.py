"""Layout-preserving views of document pages for embedding.

A photo goes through the model's own preprocessing (resize + centre crop). A page must not: a centre
crop of a portrait page cuts its header and footer, and small text needs resolution. A page is
turned into several square *views*:

- the whole page, padded with white to a square (aspect ratio kept, nothing cut), and
- for tall or wide pages, ``ceil(long/short)`` (at most ``max_tiles``) overlapping square tiles
  along the long side, each at a higher effective resolution than the whole-page view.

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


def page_views(image: "Image.Image", crop_fraction: float = 1.0, max_tiles: int = DEFAULT_MAX_TILES) -> list["Image.Image"]:
    """The whole page padded to a square, then its tiles (each padded for the model's crop)."""
    views = [pad_to_square(image, crop_fraction)]
    for box in tile_boxes(*image.size, max_tiles=max_tiles):
        views.append(pad_to_square(image.crop(box), crop_fraction))
    return views


class PageTransform:
    """Picklable: page image → (views, 3, H, W) tensor with the model's own per-view transform."""

    def __init__(self, base: Callable, crop_fraction: float = 1.0, max_tiles: int = DEFAULT_MAX_TILES) -> None:
        self.base = base
        self.crop_fraction = float(crop_fraction)
        self.max_tiles = int(max_tiles)

    def __call__(self, image: "Image.Image") -> "torch.Tensor":
        import torch

        return torch.stack([self.base(v) for v in page_views(image, self.crop_fraction, self.max_tiles)])

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
