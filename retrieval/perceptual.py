"""Perceptual signatures of images: the second signal that tells a copy from a look-alike.

Embeddings place *similar* images close; a weak model (the lite model, the tiny random test models) places
distinct images as close as copies. A perceptual hash compares the picture itself at low resolution, so a
resized, re-encoded or brightened copy keeps (nearly) the same bits while another photo of the same kind of
thing does not.

- ``phash``: 64 bits, the signs of the 8×8 lowest DCT frequencies (DC left out) of a 32×32 grey image,
  against their median. Robust to scaling, JPEG and brightness/contrast changes (those move the DC term and
  scale the rest); a crop of a few percent flips only some bits.
- ``dhash``: 64 bits, whether each pixel of a 9×8 grey image is brighter than its right neighbour.
- ``ImageHashes.similarity``: normalised correlation of 16×16 grey thumbnails (whole image, or whole vs a
  centre crop of the other). This is what ``imgrag duplicates`` checks: measured on planted copies
  (BENCHMARKS.md, "Duplicates") pHash and dHash bits are noise on line art and move by 20+ bits under a
  5-10 % crop, while the correlation keeps copies high and is blind to brightness and contrast.

Both are computed from a small decode (JPEG DCT scaling, ``draft``), so hashing is cheap: files are read
and hashed in batches by a thread pool (Pillow releases the GIL while decoding).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

HASH_BITS = 64
_DECODE_SIZE = 128  # JPEG draft target: ample for a 32×32 hash of a crop


#: centre crops (fraction cut from each side) hashed besides the whole image, so that a copy cropped by a few
#: percent is compared with the matching part of the original
CROPS = (0.04, 0.08, 0.12)
THUMB = 16  # side of the grey thumbnails compared by normalised correlation


@dataclass(frozen=True, eq=False)
class ImageHashes:
    """The perceptual hashes of one image (64-bit unsigned integers); ``crops``: pHashes of its centre crops."""

    phash: int
    dhash: int
    crops: tuple[int, ...] = ()
    thumbs: np.ndarray | None = None  # (1 + len(CROPS), THUMB²) zero-mean unit-norm grey thumbnails

    def similarity(self, other: "ImageHashes") -> float:
        """Normalised correlation of the grey thumbnails (1 = same picture), the best of whole vs whole and
        whole vs a centre crop of the other. Invariant to brightness and contrast; what decides a pair."""
        a, b = self.thumbs, other.thumbs
        if a is None or b is None:
            return 0.0
        return float(max(a[0] @ b[0], (a[1:] @ b[0]).max(initial=-1.0), (b[1:] @ a[0]).max(initial=-1.0)))

    def distance(self, other: "ImageHashes") -> int:
        """Least pHash Hamming distance (0 = same picture, ~32 = unrelated) between the two whole images, or
        one whole image and a centre crop of the other (a copy cropped by up to ~12 % per side)."""
        d = hamming(self.phash, other.phash)
        for c in self.crops:
            d = min(d, hamming(c, other.phash))
        for c in other.crops:
            d = min(d, hamming(self.phash, c))
        return d


def hamming(a: int, b: int) -> int:
    return int(a ^ b).bit_count()


@lru_cache(maxsize=1)
def _dct_matrix(n: int = 32) -> np.ndarray:
    """Orthonormal DCT-II matrix: ``D @ x @ D.T`` is the 2-D DCT (no scipy needed)."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float64)


def _grey(img: "Image.Image", size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    g = img.convert("L") if img.mode != "L" else img
    return np.asarray(g.resize(size, Image.Resampling.BOX if min(g.size) >= max(size) else Image.Resampling.BILINEAR),
                      dtype=np.float64)


def _bits(mask: np.ndarray) -> int:
    return int.from_bytes(np.packbits(mask.astype(np.uint8).reshape(-1)).tobytes(), "big")


def phash(img: "Image.Image") -> int:
    """64-bit DCT hash of an image (see the module docstring)."""
    d = _dct_matrix(32)
    coeffs = (d @ _grey(img, (32, 32)) @ d.T)[:8, :8].reshape(-1)
    ac = coeffs[1:]
    return _bits(np.concatenate([[False], ac > np.median(ac)]))


def dhash(img: "Image.Image") -> int:
    """64-bit gradient hash of an image (see the module docstring)."""
    g = _grey(img, (9, 8))
    return _bits(g[:, 1:] > g[:, :-1])


def _thumb(img: "Image.Image") -> np.ndarray:
    a = _grey(img, (THUMB, THUMB)).reshape(-1)
    a = a - a.mean()
    n = np.linalg.norm(a)
    return (a / n if n > 1e-6 else a).astype(np.float32)  # a flat image correlates with nothing


def image_hashes(img: "Image.Image") -> ImageHashes:
    w, h = img.size
    cropped = [img.crop((round(w * f), round(h * f), w - round(w * f), h - round(h * f))) for f in CROPS]
    return ImageHashes(phash(img), dhash(img), tuple(phash(c) for c in cropped),
                       np.stack([_thumb(img), *(_thumb(c) for c in cropped)]))


def hash_file(path: str) -> ImageHashes | None:
    """Hashes of an image file, decoded small and upright; None when it cannot be read or decoded."""
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    try:
        with open(path, "rb") as f:
            data = f.read()
        return image_hashes(decode_image(data, draft_size=_DECODE_SIZE).image)
    except (OSError, ImageDecodeError, ValueError):
        return None


def hash_files(paths: Sequence[str], workers: int | None = None) -> dict[str, ImageHashes | None]:
    """Hashes of many files (None for unreadable ones), read and decoded by a small thread pool."""
    import os

    unique = list(dict.fromkeys(paths))
    if not unique:
        return {}
    n = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n <= 1 or len(unique) < 4:
        return {p: hash_file(p) for p in unique}
    with ThreadPoolExecutor(max_workers=n) as pool:
        return dict(zip(unique, pool.map(hash_file, unique)))


def hamming_many(a: Iterable[int], b: Iterable[int]) -> np.ndarray:
    """Element-wise Hamming distances of two sequences of 64-bit hashes."""
    x = np.fromiter(a, dtype=np.uint64) ^ np.fromiter(b, dtype=np.uint64)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1).astype(np.int64)
