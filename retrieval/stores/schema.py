"""The row every store holds and the hit every store returns.

A leaf module (nothing from imgrag): the store interface (:mod:`.base`) and the keyword search
(:mod:`imgrag.retrieval.textsearch`) both build on it, so neither has to import the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1

#: Metadata columns, in order, besides ``vector``. ``id`` is the key: the absolute path for an image,
#: ``"<path>#page=<n>"`` for a document page.
META_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("page", pa.int32()),  # 1-based page number for documents, null for images
    pa.field("size", pa.int64()),  # bytes on disk
    pa.field("mtime_ns", pa.int64()),
    pa.field("hash", pa.string()),  # blake2b-128 hex of the file's bytes
    pa.field("width", pa.int32()),  # pixels, after EXIF orientation
    pa.field("height", pa.int32()),
    pa.field("taken_at", pa.timestamp("us")),  # EXIF DateTimeOriginal (naive local time), else null
    pa.field("gps_lat", pa.float64()),
    pa.field("gps_lon", pa.float64()),
    pa.field("text", pa.string()),  # text known about the item (page text / OCR), null if none
    pa.field("label", pa.string()),  # zero-shot top label written back by `classify --write`
    pa.field("label_score", pa.float32()),
    pa.field("indexed_at", pa.timestamp("us")),
]
META_COLUMNS = [f.name for f in META_FIELDS]


def row_schema(dim: int) -> pa.Schema:
    """Arrow schema of a store row: metadata plus a fixed-size float32 ``vector`` of length ``dim``."""
    return pa.schema([*META_FIELDS, pa.field("vector", pa.list_(pa.float32(), dim))])


def make_rows(meta: Sequence[dict[str, Any]], vectors: np.ndarray) -> pa.Table:
    """Build a row table from metadata dicts (missing keys → null) and an (n, d) float32 array."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if len(meta) != n:
        raise ValueError(f"metadata and vectors do not match: rows {len(meta)}, vectors {n}")
    cols = {f.name: pa.array([m.get(f.name) for m in meta], type=f.type) for f in META_FIELDS}
    cols["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    return pa.Table.from_pydict(cols, schema=row_schema(dim))


class Hit(NamedTuple):
    """One search result. ``score`` is cosine similarity (higher is better)."""

    id: str
    path: str
    score: float
    row: dict[str, Any]  # metadata columns (no vector)
