"""The vector store interface, the row schema and metadata filters shared by every store.

A store holds one row per indexed item (an image file, or one page of a document) keyed by ``id``.
Writes are *committed* when the call returns: a crash afterwards never loses them, a crash during
the call leaves the store as it was before the call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# the row schema and the hit live in a leaf module (textsearch needs them too); re-exported from here
from imgrag.retrieval.stores.schema import (META_COLUMNS, META_FIELDS, SCHEMA_VERSION, Hit,  # noqa: F401
                                            make_rows, row_schema)


def conform_rows(rows: pa.Table, dim: int) -> pa.Table:
    """Validate rows for :meth:`VectorStore.upsert` and cast them to :func:`row_schema` ``(dim)``.

    Missing optional metadata columns become null; of rows repeating an ``id`` the last one wins.
    Raises :class:`ImgragError` for unknown columns, a missing key/path/vector, a vector of the
    wrong length or with NaN/inf values.
    """
    from imgrag.retrieval.errors import ImgragError

    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    schema = row_schema(dim)
    unknown = [c for c in rows.column_names if schema.get_field_index(c) < 0]
    if unknown:
        raise ImgragError(f"unknown store columns {unknown}; rows must follow row_schema() (build them with make_rows)")
    for c in ("id", "path", "vector"):
        if c not in rows.column_names:
            raise ImgragError(f"rows lack the {c!r} column; build them with make_rows()")
    n = rows.num_rows
    cols = []
    for f in schema:
        col = rows[f.name] if f.name in rows.column_names else pa.nulls(n, f.type)
        if f.name == "vector":
            vt = col.type
            if not (pa.types.is_fixed_size_list(vt) or pa.types.is_list(vt) or pa.types.is_large_list(vt)):
                raise ImgragError(f"the vector column must be a list of floats, not {vt}")
            if pa.types.is_fixed_size_list(vt) and vt.list_size != dim:
                raise ImgragError(f"vectors have {vt.list_size} dimensions, this index holds {dim}; use the index's model")
            if not pa.types.is_fixed_size_list(vt):
                lens = pc.list_value_length(col)
                if n and (pc.min(lens).as_py() != dim or pc.max(lens).as_py() != dim):
                    raise ImgragError(f"vectors must have {dim} dimensions, this index's model size")
        try:
            col = col.cast(f.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
            raise ImgragError(f"column {f.name!r} cannot be stored as {f.type}: {e}") from e
        if (not f.nullable or f.name == "vector") and col.null_count:
            raise ImgragError(f"column {f.name!r} has nulls; every row needs one")
        cols.append(col)
    out = pa.Table.from_arrays(cols, schema=schema)
    if n:
        if not np.isfinite(vectors_of(out["vector"], dim)).all():
            raise ImgragError("vectors contain NaN or infinite values; re-embed those items")
        ids = out["id"].to_pylist()
        if len(set(ids)) != n:
            last = {k: i for i, k in enumerate(ids)}
            out = out.take(pa.array(sorted(last.values()), pa.int64()))
    return out


def vectors_of(col: pa.ChunkedArray | pa.Array, dim: int) -> np.ndarray:
    """(n, dim) float32 numpy array from a fixed-size-list ``vector`` column."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if len(col) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    flat = col.flatten()
    return np.asarray(flat, dtype=np.float32).reshape(len(col), dim)


def update_table(ids: Sequence[str], values: dict[str, Sequence[Any]]) -> pa.Table | None:
    """``id`` + the given metadata columns, typed per the row schema; None when nothing to do."""
    from imgrag.retrieval.errors import ImgragError

    schema = row_schema(1)
    ids = [str(i) for i in ids]
    bad = [c for c in values if c in ("id", "vector") or schema.get_field_index(c) < 0]
    if bad:
        raise ImgragError(f"cannot update columns {bad}; updatable: {', '.join(c for c in META_COLUMNS if c != 'id')}")
    for c, v in values.items():
        if len(v) != len(ids):
            raise ImgragError(f"update of {c!r} has {len(v)} values for {len(ids)} ids")
    if not ids or not values:
        return None
    arrays = {"id": pa.array(ids, pa.string())}
    for c, v in values.items():
        f = schema.field(c)
        try:
            arrays[c] = pa.array(list(v) if not isinstance(v, (pa.Array, pa.ChunkedArray)) else v.to_pylist(),
                                 type=f.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise ImgragError(f"values for {c!r} cannot be stored as {f.type}: {e}") from e
        if not f.nullable and arrays[c].null_count:
            raise ImgragError(f"column {c!r} cannot be null")
    t = pa.table(arrays)
    if len(set(ids)) != len(ids):  # the last value for an id wins
        last = {k: i for i, k in enumerate(ids)}
        t = t.take(pa.array(sorted(last.values()), pa.int64()))
    return t


def check_columns(cols: Sequence[str]) -> None:
    """Raise for column names that are neither metadata nor ``vector``."""
    from imgrag.retrieval.errors import ImgragError

    bad = [c for c in cols if c not in META_COLUMNS and c != "vector"]
    if bad:
        raise ImgragError(f"unknown columns {bad}; available: {', '.join([*META_COLUMNS, 'vector'])}")


@dataclass(frozen=True)
class Filters:
    """Metadata filters; every store applies them *before* top-k so results stay exact.

    ``path_glob`` is a glob over the whole absolute path: ``*`` matches any run of characters,
    across folders too (``"*/2019/*"``, ``"*.png"``), ``?`` matches one character, every other
    character (``[``, ``%``, ``_``, ``\\`` …) matches itself; case-sensitive. Dates compare with EXIF
    capture time (naive local time; an aware datetime is converted to local time, a ``date`` means
    its midnight); items without one never match a date filter. ``to_sql`` and ``mask`` select
    exactly the same rows.
    """

    path_glob: str | None = None
    taken_after: datetime | None = None
    taken_before: datetime | None = None
    min_width: int | None = None
    min_height: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    label: str | None = None
    kind: str | None = None  # "photo" (a whole image file) or "page" (a document page); None: both

    def __post_init__(self) -> None:
        if self.kind not in (None, "photo", "page"):
            raise ValueError(f"kind must be 'photo' or 'page', not {self.kind!r}")

    def is_empty(self) -> bool:
        return all(v is None for v in self.__dict__.values())

    def to_sql(self) -> str | None:
        """SQL predicate (DataFusion dialect, as LanceDB uses) or None when empty."""
        parts: list[str] = []
        if self.path_glob:
            parts.append(f"path LIKE '{_glob_to_like(self.path_glob)}' ESCAPE '\\'")
        if self.taken_after is not None:
            parts.append(f"taken_at >= CAST('{_naive(self.taken_after).isoformat(sep=' ')}' AS TIMESTAMP)")
        if self.taken_before is not None:
            parts.append(f"taken_at <= CAST('{_naive(self.taken_before).isoformat(sep=' ')}' AS TIMESTAMP)")
        for col, op, val in (("width", ">=", self.min_width), ("height", ">=", self.min_height),
                             ("size", ">=", self.min_bytes), ("size", "<=", self.max_bytes)):
            if val is not None:
                parts.append(f"{col} {op} {int(val)}")
        if self.label is not None:
            parts.append("label = '" + self.label.replace("'", "''") + "'")
        if self.kind is not None:
            parts.append("page IS NULL" if self.kind == "photo" else "page IS NOT NULL")
        return " AND ".join(parts) if parts else None

    def mask(self, table: pa.Table) -> np.ndarray:
        """Boolean mask over ``table`` rows (which must hold the referenced columns)."""
        n = table.num_rows
        m = np.ones(n, dtype=bool)
        if n == 0:
            return m
        if self.path_glob:
            m &= np.asarray(pc.match_substring_regex(table["path"], _glob_to_regex(self.path_glob)).fill_null(False))

        def cmp(col: str, fn, val) -> np.ndarray:
            arr = table[col]
            if pa.types.is_integer(arr.type):  # compare as int64 so big thresholds never overflow int32
                arr, val = pc.cast(arr, pa.int64()), int(val)
            return np.asarray(fn(arr, pa.scalar(val, type=arr.type)).fill_null(False))
        if self.taken_after is not None:
            m &= cmp("taken_at", pc.greater_equal, _naive(self.taken_after))
        if self.taken_before is not None:
            m &= cmp("taken_at", pc.less_equal, _naive(self.taken_before))
        for col, fn, val in (("width", pc.greater_equal, self.min_width), ("height", pc.greater_equal, self.min_height),
                             ("size", pc.greater_equal, self.min_bytes), ("size", pc.less_equal, self.max_bytes)):
            if val is not None:
                m &= cmp(col, fn, val)
        if self.label is not None:
            m &= cmp("label", pc.equal, self.label)
        if self.kind is not None:
            nulls = np.asarray(pc.is_null(table["page"]))
            m &= nulls if self.kind == "photo" else ~nulls
        return m


def _naive(v: datetime | date) -> datetime:
    """Filter dates as naive local datetimes (what ``taken_at`` holds)."""
    if not isinstance(v, datetime):
        v = datetime.combine(v, time.min)
    if v.tzinfo is not None:
        v = v.astimezone().replace(tzinfo=None)
    return v


def _glob_to_regex(glob: str) -> str:
    """RE2 pattern (pyarrow) with exactly the semantics of :func:`_glob_to_like` under ``LIKE``."""
    out = ["(?s)^"]
    for ch in glob:
        if ch == "*":
            out.append(".*")
        elif ch == "?":
            out.append(".")
        elif ch.isalnum() or ord(ch) > 127:
            out.append(ch)
        else:
            out.append("\\x{%x}" % ord(ch))
    out.append("$")
    return "".join(out)


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

    # --- rows written by worker processes (the Ray engine) -------------------------------------------
    def staged_writer(self) -> Callable[[pa.Table], str]:
        """A picklable ``writer(rows) -> token`` for worker processes: it stores rows whose ids the store
        does not hold yet where no reader sees them. :meth:`commit_staged` makes them visible; rows staged
        and never committed stay invisible (the store's cleanup removes their files)."""
        from imgrag.retrieval.errors import ImgragError

        raise ImgragError(f"the {self.kind} store cannot take rows written by worker processes; "
                          "use the local engine or a LanceDB index")

    def commit_staged(self, tokens: Sequence[str]) -> None:
        """Make the rows behind ``tokens`` (from :meth:`staged_writer` writers) visible in one atomic commit."""
        from imgrag.retrieval.errors import ImgragError

        raise ImgragError(f"the {self.kind} store cannot take rows written by worker processes")

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

    def text_search(self, query: str, k: int, filters: Filters | None = None,
                    exclude_ids: Sequence[str] = ()) -> list[Hit]:
        """Top-k rows by BM25 keyword relevance of ``text`` (page text, OCR), best first; ``score``
        is the BM25 score. Default: an exact scan (:func:`imgrag.retrieval.textsearch.bm25_search`);
        LanceDB overrides it with its full-text index."""
        from imgrag.retrieval.textsearch import bm25_search

        return bm25_search(self, query, k, filters=filters, exclude_ids=exclude_ids)

    def has_text(self) -> bool:
        """Whether any row holds text (so keyword / hybrid search can help)."""
        for b in self.scan(columns=["text"], batch_size=4096):
            if b.column("text").null_count < b.num_rows:
                return True
        return False

    @abstractmethod
    def disk_size(self) -> int:
        """Bytes used on disk."""

    def describe(self) -> dict[str, Any]:
        """Store-specific facts for ``imgrag info`` (index type, parameters)."""
        return {"kind": self.kind}

    def close(self) -> None:
        """Release file handles (optional)."""
