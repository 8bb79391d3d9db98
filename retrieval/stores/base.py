"""The vector store interface, the row schema and metadata filters shared by every store.

A store holds one row per indexed item (an image file, or one page of a document) keyed by ``id``.
Writes are *committed* when the call returns: a crash afterwards never loses them, a crash during
the call leaves the store as it was before the call.
"""

from __future__ import annotations

import fnmatch
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass(frozen=True)
class Filters:
    """Metadata filters; every store applies them *before* top-k so results stay exact.

    ``path_glob`` is fnmatch-style over the absolute path, ``*`` matching across folders
    (``"*/2019/*"``, ``"*.png"``). Dates compare with EXIF capture time; items without one never
    match a date filter.
    """

    path_glob: str | None = None
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    min_width: int | None = None
    min_height: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    label: str | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in self.__dict__.values())

    def to_sql(self) -> str | None:
        """SQL predicate (DataFusion dialect, as LanceDB uses) or None when empty."""
        parts: list[str] = []
        if self.path_glob:
            parts.append(f"path LIKE '{_glob_to_like(self.path_glob)}' ESCAPE '\\'")
        if self.taken_after:
            parts.append(f"taken_at >= CAST('{self.taken_after.isoformat(sep=' ')}' AS TIMESTAMP)")
        if self.taken_before:
            parts.append(f"taken_at <= CAST('{self.taken_before.isoformat(sep=' ')}' AS TIMESTAMP)")
        for col, op, val in (("width", ">=", self.min_width), ("height", ">=", self.min_height),
                             ("size", ">=", self.min_bytes), ("size", "<=", self.max_bytes)):
            if val is not None:
                parts.append(f"{col} {op} {int(val)}")
        if self.label is not None:
            parts.append("label = '" + self.label.replace("'", "''") + "'")
        return " AND ".join(parts) if parts else None

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean mask over ``table`` rows (which must hold the referenced columns)."""
        n = table.num_rows
        m = np.ones(n, dtype=bool)
        if self.path_glob:
            rx = fnmatch.translate(self.path_glob)
            m &= np.asarray(pc.match_substring_regex(table["path"], "^" + rx).fill_null(False))
        def cmp(col: str, fn, val) -> np.ndarray:
            return np.asarray(fn(table[col], pa.scalar(val, type=table.schema.field(col).type)).fill_null(False))
        if self.taken_after:
            m &= cmp("taken_at", pc.greater_equal, self.taken_after)
        if self.taken_before:
            m &= cmp("taken_at", pc.less_equal, self.taken_before)
        for col, fn, val in (("width", pc.greater_equal, self.min_width), ("height", pc.greater_equal, self.min_height),
                             ("size", pc.greater_equal, self.min_bytes), ("size", pc.less_equal, self.max_bytes)):
            if val is not None:
                m &= cmp(col, fn, val)
        if self.label is not None:
            m &= cmp("label", pc.equal, self.label)
        return m


def _glob_to_like(glob: str) -> str:
    out = []
    for ch in glob:
        if ch in "%_\\":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch == "'":
            out.append("''")
        else:
            out.append(ch)
    return "".join(out)


class VectorStore(ABC):
    """Vectors + metadata rows keyed by ``id``. Implementations: LanceDB (default) and FAISS.

    Vectors are L2-normalised float32; scores are inner products (= cosine similarity).
    """

    kind: str  # "lancedb" | "faiss"

    def __init__(self, root: Path, dim: int) -> None:
        self.root = Path(root)
        self.dim = dim

    # --- writing -------------------------------------------------------------------------------
    @abstractmethod
    def upsert(self, rows: pa.Table) -> None:
        """Insert rows (schema :func:`row_schema`), replacing existing rows with the same ``id``.

        Atomic and durable: when it returns the rows are committed; if the process dies during the
        call, the store holds exactly what it held before.
        """

    @abstractmethod
    def delete(self, ids: Sequence[str]) -> None:
        """Remove rows by id (missing ids are ignored). Atomic like :meth:`upsert`."""

    @abstractmethod
    def update_columns(self, ids: Sequence[str], values: dict[str, Sequence[Any]]) -> None:
        """Set metadata columns (e.g. ``label``, ``label_score``) for existing rows. Atomic."""

    def optimize(self) -> None:
        """Called once at the end of an indexing run: build/refresh the ANN index, compact files."""

    # --- reading -------------------------------------------------------------------------------
    @abstractmethod
    def count(self) -> int:
        """Number of rows."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None,
               exclude_ids: Sequence[str] = ()) -> list[list[Hit]]:
        """Top-k rows by inner product for each query row of the (q, d) array, best first.

        Filters are applied before ranking (the result is the exact top-k of the matching rows when
        the store searches exactly). ``exclude_ids`` are never returned (e.g. the query image).
        """

    @abstractmethod
    def scan(self, columns: Sequence[str] | None = None, filters: Filters | None = None,
             batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        """Stream rows (optionally only some columns, optionally filtered) in bounded batches."""

    @abstractmethod
    def get(self, ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        """Rows for the given ids (missing ids are absent from the result; order not guaranteed)."""

    def file_states(self) -> pa.Table:
        """``id, path, size, mtime_ns, hash`` of every row, for change detection."""
        batches = list(self.scan(columns=["id", "path", "size", "mtime_ns", "hash"]))
        if not batches:
            return pa.table({"id": pa.array([], pa.string()), "path": pa.array([], pa.string()),
                             "size": pa.array([], pa.int64()), "mtime_ns": pa.array([], pa.int64()),
                             "hash": pa.array([], pa.string())})
        return pa.Table.from_batches(batches)

    @abstractmethod
    def disk_size(self) -> int:
        """Bytes used on disk."""

    def describe(self) -> dict[str, Any]:
        """Store-specific facts for ``imgrag info`` (index type, parameters)."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release file handles (optional)."""
