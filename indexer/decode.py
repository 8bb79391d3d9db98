"""Stage 2: read, hash, decode and preprocess files — in DataLoader worker processes.

Each worker reads a file's bytes once, hashes them, and either (a) recognises the hash as content
already in the index (rename or duplicate: no decode, the vector is reused) or (b) decodes the image
(EXIF orientation, alpha on white, JPEG draft decoding) and runs the embedder's own preprocessing.
The collate function stacks the good samples of a batch into one tensor *inside the worker* (one
shared-memory transfer per batch) and passes failures through as skip records, so one bad file never
fails a batch.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from imgrag.indexer.scan import FileEntry

DEFAULT_MAX_PIXELS = 178_956_970  # Pillow's own decompression-bomb error threshold (2x its warning limit)


@dataclass
class DecodeResult:
    """What a worker returns for one file."""

    entry: FileEntry
    meta: dict[str, Any] | None = None  # row metadata (size/mtime as read, hash, width, height, EXIF…)
    reused: bool = False  # content hash already in the index: no pixels, reuse the stored vector
    error: str | None = None
    read_s: float = 0.0
    decode_s: float = 0.0
    preprocess_s: float = 0.0


class DecodeDataset:
    """Map-style dataset over a work list; picklable (sent to worker processes)."""

    def __init__(self, work: Sequence[FileEntry], transform: Callable, draft_size: int | None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, known_hashes: frozenset[str] = frozenset(),
                 page_transform: Callable | None = None, page_options=None, ocr_lang: str | None = None) -> None:
        self.work = work
        self.transform = transform
        self.draft_size = draft_size
        self.max_pixels = max_pixels
        self.known_hashes = known_hashes
        self.page_transform = page_transform  # PDF pages (indexer.documents.PageWork items)
        self.page_options = page_options
        self.ocr_lang = ocr_lang  # OCR images too (``--ocr``)

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, i: int):
        entry = self.work[i]
        try:
            if getattr(entry, "page", None) is not None:  # a PDF page
                from imgrag.indexer.documents import load_page

                return load_page(entry, self.page_transform, self.page_options, self.known_hashes, DecodeResult)
            return self._load(entry)
        except Exception as e:  # noqa: BLE001 - one odd file must never cost the run
            return DecodeResult(entry, error=f"unexpected error: {type(e).__name__}: {e}"), None

    def _load(self, entry: FileEntry):
        t0 = time.perf_counter()
        got = read_entry(entry)
        if isinstance(got, DecodeResult):
            return got, None
        data, st = got
        t1 = time.perf_counter()
        meta, reused = self._hashed(entry, data, st, t1 - t0)
        if reused is not None:
            return reused, None
        return self._decode(entry, data, meta, t1 - t0)

    def _decode(self, entry: FileEntry, data: bytes, meta: dict[str, Any], read_s: float):
        """A new content's (result, payload): here decoded and preprocessed with the model's PIL transform."""
        from imgrag.retrieval.imageio import ImageDecodeError, decode_image

        t1 = time.perf_counter()
        try:
            img = decode_image(data, draft_size=self.draft_size, max_pixels=self.max_pixels)
        except ImageDecodeError as e:
            return DecodeResult(entry, error=str(e), read_s=read_s), None
        t2 = time.perf_counter()
        self._describe(meta, img)
        pixels = self.transform(bound_aspect(img.image))
        t3 = time.perf_counter()
        return DecodeResult(entry, meta=meta, read_s=read_s, decode_s=t2 - t1, preprocess_s=t3 - t2), pixels

    def _hashed(self, entry: FileEntry, data: bytes, st: os.stat_result, read_s: float):
        """(row metadata, the file's result if its content is already in the index — vector reused — else None)."""
        from imgrag.retrieval.imageio import content_hash

        digest = content_hash(data)
        meta: dict[str, Any] = {"id": entry.path, "path": entry.path, "size": st.st_size,
                                "mtime_ns": st.st_mtime_ns, "hash": digest}
        if digest in self.known_hashes:
            return meta, DecodeResult(entry, meta=meta, reused=True, read_s=read_s)
        return meta, None

    def _describe(self, meta: dict[str, Any], img) -> None:
        """Add a decoded image's size and capture metadata (and its OCR text with ``--ocr``) to its row."""
        meta.update(width=img.width, height=img.height, taken_at=img.taken_at, gps_lat=img.gps_lat,
                    gps_lon=img.gps_lon)
        if self.ocr_lang:
            from imgrag.indexer.documents import ocr_photo_text

            meta["text"] = ocr_photo_text(img.image, self.ocr_lang)


def read_entry(entry: FileEntry):
    """(bytes, stat) of a work item's file, or a :class:`DecodeResult` saying why it cannot be read. A file
    whose size or mtime changed while it was read is skipped (retried next run), never half-indexed."""
    from imgrag.retrieval.paths import to_fs

    fs_path = to_fs(entry.path)  # entry.path is the stored form (names that are not UTF-8 are escaped)
    try:
        with open(fs_path, "rb") as f:
            st0 = os.fstat(f.fileno())
            data = f.read()
        st1 = os.stat(fs_path)
    except FileNotFoundError:
        return DecodeResult(entry, error="file disappeared before it could be read")
    except PermissionError:
        return DecodeResult(entry, error="permission denied")
    except IsADirectoryError:
        return DecodeResult(entry, error="is a directory")
    except OSError as e:
        return DecodeResult(entry, error=f"cannot read file ({e.strerror or e})")
    if (st0.st_size, st0.st_mtime_ns) != (st1.st_size, st1.st_mtime_ns) or len(data) != st1.st_size:
        return DecodeResult(entry, error="file changed while being read (will be retried next run)")
    return data, st1


#: Longest side / shortest side kept for the model. A resize-shortest-side transform would blow a
#: 20000×1 strip up to 4.5 M × 224 pixels (3 GB) before cropping the centre; real panoramas stay
#: far below 16:1, and a centre-crop transform only ever keeps the central square anyway.
MAX_ASPECT = 16


def bound_aspect(img):
    """Crop the centre of an extremely elongated image to :data:`MAX_ASPECT`:1 (others unchanged)."""
    w, h = img.size
    if w > MAX_ASPECT * h:
        keep = MAX_ASPECT * h
        left = (w - keep) // 2
        return img.crop((left, 0, left + keep, h))
    if h > MAX_ASPECT * w:
        keep = MAX_ASPECT * w
        top = (h - keep) // 2
        return img.crop((0, top, w, top + keep))
    return img


def collate(samples):
    """(results, stacked pixels or None, index of each stacked row into results).

    A document page brings several views, a (v, 3, H, W) tensor: its v rows share one index, and the
    pipeline pools their vectors into the page's vector (:func:`imgrag.retrieval.layout.pool_views`).
    """
    import torch

    results = [r for r, _ in samples]
    tensors = [(i, p) for i, (_, p) in enumerate(samples) if p is not None]
    if not tensors:
        return results, None, []
    if all(p.ndim == 3 for _, p in tensors):
        return results, torch.stack([p for _, p in tensors]), [i for i, _ in tensors]
    rows = [i for i, p in tensors for _ in range(p.shape[0] if p.ndim == 4 else 1)]
    return results, torch.cat([p if p.ndim == 4 else p.unsqueeze(0) for _, p in tensors]), rows
