"""LanceDB store (the default): one table ``images`` in a LanceDB database at ``<index>/lancedb``.

- Upserts are one ``merge_insert("id")`` each: a single atomic commit (a new table version).
  Readers always query one committed version, so they never see half a write.
- Search is exact (flat, inner product via ``distance_type("dot")``) until :meth:`optimize` finds
  the table large enough (``ann_min_rows``) and builds an ANN index (``ann``). Filters are pushed
  down as SQL and applied before ranking (prefilter).
- :meth:`optimize` compacts small files, folds new rows into the ANN index and deletes versions
  older than ``keep_versions_s`` so the folder does not grow forever.

LanceDB reports ``_distance = 1 - dot`` for ``distance_type("dot")``; scores returned here are
``1 - _distance`` = the inner product (cosine similarity for normalised vectors).

The root may be an object-storage URI (``s3://bucket/prefix/lancedb``, ``gs://``, ``az://``): LanceDB
opens it with ``storage_options`` built from the environment (:mod:`imgrag.retrieval.location`). Each
commit writes a new manifest version with a conditional PUT, so readers in other processes (``imgrag
search``/``serve``) keep reading a consistent version while one writer appends.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from imgrag.retrieval.errors import CorruptIndexError, ImgragError, IndexMismatchError
from imgrag.retrieval.stores.base import (META_COLUMNS, Filters, Hit, VectorStore, check_columns, conform_rows,
                                          row_schema, update_table)

TABLE = "images"
FTS_INDEX = "text_fts"
ANN_TYPES = ("ivf_pq", "ivf_hnsw_sq", "none")
#: Lance error texts that mean a file of the table is damaged or missing (not a bad query)
_DAMAGE_MARKERS = ("LanceError(IO)", "Not found: ", "does not appear to be a Lance file", "invalid magic")
_ID_CHUNK = 4096  # ids per ``id IN (...)`` predicate when reading


def _sql_str(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def _where(filters: Filters | None, exclude_ids: Sequence[str]) -> str | None:
    """SQL predicate for a search: the filters, and no row whose id is excluded; None when unrestricted."""
    clauses = []
    if filters is not None and not filters.is_empty():
        clauses.append(filters.to_sql())
    excl = list(dict.fromkeys(str(i) for i in exclude_ids))
    if excl:
        clauses.append("NOT " + _in_list(excl))
    return " AND ".join(f"({c})" for c in clauses) if clauses else None


def _in_list(ids: Sequence[str]) -> str:
    return "id IN (" + ", ".join(_sql_str(i) for i in ids) + ")"


def _sub_vectors(dim: int) -> int:
    """PQ sub-vectors: 8 dimensions each when possible (LanceDB's SIMD path), always a divisor of dim."""
    target = max(1, dim // 8)
    for s in range(target, 0, -1):
        if dim % s == 0:
            return s
    return 1


class LanceStore(VectorStore):
    """LanceDB-backed :class:`VectorStore`.

    Options (the index manifest's ``store_options``):

    - ``ann``: ``"ivf_hnsw_sq"`` (default: on 1M clustered 512-d vectors recall@10 0.989 at 3.2 ms
      per query, 687 MiB; bench/search_scale.py), ``"ivf_pq"`` (compact, exact re-ranking of
      candidates, but recall@10 0.66 at 1M with the same data) or ``"none"`` (always exact).
    - ``ann_min_rows``: build the ANN index in :meth:`optimize` once the table has this many rows
      (default 50 000; below that exact search is fast enough).
    - ``nprobes`` (IVF partitions searched, default 20; more are searched automatically when a
      filter leaves too few candidates), ``refine_factor`` (re-rank ``k * refine_factor``
      candidates with exact vectors; default 10 for ivf_pq, 2 for ivf_hnsw_sq), ``ef`` (HNSW
      candidate list, default ``max(64, 2k)``).
    - ``exact_filter_rows``: with an ANN index, a filter matching at most this many rows is
      answered by exact search over those rows (default 20 000).
    - ``keep_versions_s``: :meth:`optimize` deletes table versions older than this (default 600 s;
      0 keeps only the latest, only safe when no other process reads the index).
    - ``consistency_s``: how stale a reader may be w.r.t. commits of another process (default 1 s;
      0 checks on every read).
    """

    kind = "lancedb"

    def __init__(self, root: Path | str, dim: int, *, ann: str = "ivf_hnsw_sq", ann_min_rows: int = 50_000,
                 nprobes: int = 20, refine_factor: int | None = None, ef: int | None = None,
                 exact_filter_rows: int = 20_000, keep_versions_s: float = 600.0,
                 consistency_s: float | None = 1.0, **unknown: Any) -> None:
        from imgrag.retrieval.location import Location

        self.location = Location(root)
        super().__init__(Path("."), dim)
        self.root = self.location.root  # a Path, or the URI string on object storage
        if unknown:
            raise ImgragError(f"unknown lancedb store option(s) {sorted(unknown)}; known: ann, ann_min_rows, nprobes, "
                              "refine_factor, ef, exact_filter_rows, keep_versions_s, consistency_s")
        ann = str(ann).lower()
        if ann not in ANN_TYPES:
            raise ImgragError(f"unknown lancedb ann index {ann!r}; use one of {', '.join(ANN_TYPES)}")
        self.ann = ann
        self.ann_min_rows = max(256, int(ann_min_rows))  # PQ/SQ training needs a few hundred rows
        self.nprobes = max(1, int(nprobes))
        self.refine_factor = refine_factor if refine_factor is not None else (10 if ann == "ivf_pq" else 2)
        self.ef = ef
        self.exact_filter_rows = int(exact_filter_rows)
        self.keep_versions_s = float(keep_versions_s)
        self._idx_cache: tuple[float, Any] | None = None
        self._lock = threading.Lock()  # guards the index-info cache only; LanceDB handles the rest

        import lancedb

        self.location.mkdir()
        rci = None if consistency_s is None else timedelta(seconds=float(consistency_s))
        try:
            so = self.location.storage_options()
            self._db = lancedb.connect(str(self.root), read_consistency_interval=rci,
                                       **({"storage_options": so} if so else {}))
            try:
                self._tbl = self._db.open_table(TABLE)
            except ValueError as e:
                if "not found" not in str(e):
                    raise
                data = os.path.join(str(self.root), f"{TABLE}.lance", "data")
                if self.location.local and os.path.isdir(data) and os.listdir(data):
                    # rows were written, but no table version is readable: never start over silently
                    raise CorruptIndexError(f"the LanceDB table in {self.root} has data but no readable version "
                                            "(its _versions folder is damaged or gone); rebuild the index with "
                                            "--rebuild") from e
                self._tbl = self._db.create_table(TABLE, schema=row_schema(dim), exist_ok=True)
            schema = self._tbl.schema
        except (OSError, RuntimeError, ValueError) as e:
            if self.location.remote:  # far more often access than corruption: say what to check
                raise ImgragError(f"cannot open the LanceDB table at {self.root} ({_short(e)}); check the bucket, "
                                  "the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY …) and the endpoint "
                                  "(AWS_ENDPOINT_URL)") from e
            raise CorruptIndexError(f"cannot open the LanceDB table in {self.root} ({_short(e)}); "
                                    "rebuild the index with --rebuild") from e
        missing = [c for c in [*META_COLUMNS, "vector"] if schema.get_field_index(c) < 0]
        if missing:
            raise CorruptIndexError(f"{self.root} holds a LanceDB table {TABLE!r} without columns {missing}; "
                                    "it was not written by imgrag: use another --index or --rebuild")
        vt = schema.field("vector").type
        if not pa.types.is_fixed_size_list(vt) or vt.list_size != dim:
            have = vt.list_size if pa.types.is_fixed_size_list(vt) else vt
            raise IndexMismatchError(f"the LanceDB table in {self.root} holds {have}-d vectors, the model makes "
                                     f"{dim}-d ones; use the index's model or --rebuild")

    # --- writing -------------------------------------------------------------------------------
    def upsert(self, rows: pa.Table) -> None:
        rows = conform_rows(rows, self.dim)
        if rows.num_rows == 0:
            return
        (self._tbl.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(rows))

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(str(i) for i in ids))
        if ids:
            self._tbl.delete(_in_list(ids))  # one predicate = one commit, whatever the size

    def update_columns(self, ids: Sequence[str], values: dict[str, Sequence[Any]]) -> None:
        src = update_table(ids, values)
        if src is None:
            return
        # Partial-schema merge: only the given columns change; ids not in the table are ignored.
        self._tbl.merge_insert("id").when_matched_update_all().execute(src)

    def optimize(self) -> None:
        older = timedelta(seconds=max(0.0, self.keep_versions_s))
        # Compact fragments, fold rows added since the ANN index was built into it, prune versions.
        self._lance_optimize(older)
        n = self._tbl.count_rows()
        cur = self._vector_index(refresh=True)
        if self.ann == "none":
            if cur is not None:  # switched to exact search: drop the old index
                self._tbl.drop_index(cur.name)
        elif n >= self.ann_min_rows:
            parts = self._partitions(n)
            have = _parts_from_name(cur.name) if cur is not None else None
            if cur is None or have is None or parts >= 2 * have or _ann_from_name(cur.name) != self.ann:
                self._create_index(n, parts, replace_name=cur.name if cur is not None else None)
                self._lance_optimize(older)
        self._ensure_fts()
        with self._lock:
            self._idx_cache = None

    # --- keyword search over ``text`` (page text, OCR) ----------------------------------------------
    def _fts_index(self):
        for ic in self._tbl.list_indices():
            if list(ic.columns) == ["text"] and str(ic.index_type).upper() in ("FTS", "INVERTED"):
                return ic
        return None

    def _ensure_fts(self) -> None:
        """Create the full-text index once rows with text exist; later runs' :meth:`optimize` (the
        ``table.optimize()`` above) folds new and changed rows into it, and rows not yet folded in are
        still searched (flat), so keyword results are never stale."""
        if self._fts_index() is not None or not self._tbl.count_rows("text IS NOT NULL"):
            return
        from lancedb.index import FTS

        self._tbl.create_index("text", config=FTS(with_position=False), name=FTS_INDEX, replace=True)

    def text_search(self, query: str, k: int, filters: Filters | None = None,
                    exclude_ids: Sequence[str] = ()) -> list[Hit]:
        if k <= 0 or not str(query).strip():
            return []
        if self._fts_index() is None:  # no index yet (nothing indexed with text, or an older index)
            return super().text_search(query, k, filters=filters, exclude_ids=exclude_ids)
        sql = _where(filters, exclude_ids)
        qb = (self._tbl.search(str(query), query_type="fts", fts_columns="text")
              .limit(int(k)).select([*META_COLUMNS, "_score"]))
        if sql:
            qb = qb.where(sql, prefilter=True)
        try:
            res = qb.to_arrow()
        except (RuntimeError, ValueError) as e:
            raise ImgragError(f"LanceDB keyword search failed ({_short(e)})") from e
        scores = res["_score"].to_pylist()
        rows = res.select(META_COLUMNS).to_pylist()
        hits = [Hit(r["id"], r["path"], float(sc), r) for r, sc in zip(rows, scores)]
        hits.sort(key=lambda h: (-h.score, h.id))
        return hits

    def has_text(self) -> bool:
        # asked on every auto-mode search: the FTS index answers it for free once it exists; otherwise
        # count (cached for a few seconds, so an image-only index is not scanned per query)
        if self._fts_index() is not None:
            return True
        now = time.monotonic()
        cached = getattr(self, "_has_text_cache", None)
        if cached is not None and now - cached[0] < 5.0:
            return cached[1]
        found = bool(self._tbl.count_rows("text IS NOT NULL"))
        self._has_text_cache = (now, found)
        return found

    def _lance_optimize(self, older: timedelta) -> None:
        with warnings.catch_warnings():  # LanceDB warns about cleanup_older_than=0, which the user asked for
            warnings.simplefilter("ignore", UserWarning)
            self._tbl.optimize(cleanup_older_than=older)

    def _partitions(self, n: int) -> int:
        if self.ann == "ivf_pq":
            return max(1, min(math.isqrt(n), round(n / 4096)))
        return max(1, round(n / 1_000_000))

    def _create_index(self, n: int, parts: int, replace_name: str | None) -> None:
        from lancedb.index import HnswSq, IvfPq

        if self.ann == "ivf_pq":
            cfg = IvfPq(distance_type="dot", num_partitions=parts, num_sub_vectors=_sub_vectors(self.dim))
        else:
            cfg = HnswSq(distance_type="dot", num_partitions=parts)
        name = f"vector_{self.ann}_p{parts}"
        self._tbl.create_index("vector", config=cfg, replace=True, name=name)
        if replace_name and replace_name != name:
            try:
                self._tbl.drop_index(replace_name)
            except Exception:  # pragma: no cover - best effort
                pass

    def _vector_index(self, refresh: bool = False):
        """The ANN index on ``vector`` (``IndexConfig``) or None; cached for a few seconds."""
        with self._lock:
            now = time.monotonic()
            if not refresh and self._idx_cache is not None and now - self._idx_cache[0] < 5.0:
                return self._idx_cache[1]
            found = None
            for ic in self._tbl.list_indices():
                if list(ic.columns) == ["vector"]:
                    found = ic
            self._idx_cache = (now, found)
            return found

    # --- reading -------------------------------------------------------------------------------
    def count(self) -> int:
        return int(self._tbl.count_rows())

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None,
               exclude_ids: Sequence[str] = ()) -> list[list[Hit]]:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ImgragError(f"query vectors must have {self.dim} dimensions, got shape {tuple(q.shape)}")
        nq = q.shape[0]
        if k <= 0 or nq == 0:
            return [[] for _ in range(nq)]
        sql = _where(filters, exclude_ids)
        qb = (self._tbl.search(q if nq > 1 else q[0], vector_column_name="vector")
              .distance_type("dot").limit(int(k)).select([*META_COLUMNS, "_distance"]))
        if sql:
            qb = qb.where(sql, prefilter=True)
        idx = self._vector_index()
        if idx is not None:
            if sql and self._tbl.count_rows(sql) <= self.exact_filter_rows:
                qb = qb.bypass_vector_index()  # a narrow filter: exact over the matching rows
            else:
                qb = qb.minimum_nprobes(self.nprobes).maximum_nprobes(0)
                if self.refine_factor:
                    qb = qb.refine_factor(int(self.refine_factor))
                if self.ann == "ivf_hnsw_sq":
                    qb = qb.ef(max(int(self.ef or 64), 2 * int(k)))
        try:
            res = qb.to_arrow()
        except (RuntimeError, ValueError, OSError) as e:
            if isinstance(e, OSError) or any(m in str(e) for m in _DAMAGE_MARKERS):  # damaged/missing file
                raise CorruptIndexError(f"the LanceDB table in {self.root} is damaged ({_short(e)}); "
                                        "rebuild the index with --rebuild") from e
            raise ImgragError(f"LanceDB search failed ({_short(e)})") from e
        qi = (np.asarray(res["query_index"].to_numpy(zero_copy_only=False), dtype=np.int64)
              if "query_index" in res.column_names else np.zeros(res.num_rows, dtype=np.int64))
        dist = np.asarray(res["_distance"].to_numpy(zero_copy_only=False), dtype=np.float64)
        rows = res.select(META_COLUMNS).to_pylist()
        out: list[list[Hit]] = [[] for _ in range(nq)]
        for i in np.lexsort((dist, qi)):
            r = rows[i]
            out[int(qi[i])].append(Hit(r["id"], r["path"], float(1.0 - dist[i]), r))
        return [h[:k] for h in out]

    def scan(self, columns: Sequence[str] | None = None, filters: Filters | None = None,
             batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        cols = list(columns) if columns else [*META_COLUMNS, "vector"]
        check_columns(cols)
        qb = self._tbl.search().select(cols).limit(None)
        if filters is not None and not filters.is_empty():
            qb = qb.where(filters.to_sql())
        reader = qb.to_batches(max(1, int(batch_size)))
        for b in reader:
            if b.num_rows > batch_size:  # never hand out more than asked for
                for off in range(0, b.num_rows, batch_size):
                    yield b.slice(off, batch_size)
            elif b.num_rows:
                yield b

    def get(self, ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        cols = list(columns) if columns else [*META_COLUMNS, "vector"]
        check_columns(cols)
        ids = list(dict.fromkeys(str(i) for i in ids))
        parts = []
        for off in range(0, len(ids), _ID_CHUNK):
            chunk = ids[off:off + _ID_CHUNK]
            parts.append(self._tbl.search().where(_in_list(chunk)).select(cols).limit(None).to_arrow())
        if not parts:
            schema = self._tbl.schema
            return pa.schema([schema.field(c) for c in cols]).empty_table()
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def disk_size(self) -> int:
        return self.location.size()

    @property
    def table_uri(self) -> str:
        """URI (or path) of the Lance dataset holding the rows, for tools that write fragments directly."""
        return f"{str(self.root).rstrip('/')}/{TABLE}.lance"

    def storage_options(self) -> dict[str, str]:
        return self.location.storage_options()

    # --- rows written by worker processes: Lance fragments, appended in one commit ----------------------
    def staged_writer(self) -> LanceStagedWriter:
        import lance

        so = self.storage_options()
        try:  # new fragments must use the file format version of the fragments lancedb wrote
            version = str(lance.dataset(self.table_uri, storage_options=so or None).data_storage_version)
        except Exception:  # noqa: BLE001 - fall back to pylance's default
            version = None
        return LanceStagedWriter(self.table_uri, so, version, self.dim)

    def commit_staged(self, tokens: Sequence[str]) -> None:
        import json

        import lance
        from lance.fragment import FragmentMetadata

        frags = [FragmentMetadata.from_json(json.dumps(f) if isinstance(f, dict) else f)
                 for t in tokens for f in json.loads(t)]
        if not frags:
            return
        so = self.storage_options() or None
        cur = lance.dataset(self.table_uri, storage_options=so)
        lance.LanceDataset.commit(self.table_uri, lance.LanceOperation.Append(frags), read_version=cur.version,
                                  storage_options=so)
        self._tbl.checkout_latest()  # this handle reads the new version at once

    def describe(self) -> dict[str, Any]:
        idx = self._vector_index(refresh=True)
        d: dict[str, Any] = {"kind": self.kind, "rows": self.count(), "version": int(self._tbl.version),
                             "ann": self.ann, "ann_min_rows": self.ann_min_rows}
        if idx is None:
            d["index"] = "flat (exact)"
        else:
            d["index"] = f"{idx.index_type} ({idx.name})"
            d["nprobes"] = self.nprobes
            d["refine_factor"] = self.refine_factor
            try:
                st = self._tbl.index_stats(idx.name)
                d["indexed_rows"], d["unindexed_rows"] = int(st.num_indexed_rows), int(st.num_unindexed_rows)
            except Exception:  # pragma: no cover - stats are informative only
                pass
        return d

    def close(self) -> None:
        self._tbl = None  # type: ignore[assignment]
        self._db = None


class LanceStagedWriter:
    """Writes rows as fragment files of the table without committing them (picklable: runs in Ray workers).

    The token is the fragments' metadata (JSON); :meth:`LanceStore.commit_staged` appends them in one commit."""

    def __init__(self, table_uri: str, storage_options: dict[str, str], data_storage_version: str | None,
                 dim: int) -> None:
        self.table_uri, self.storage_options = table_uri, storage_options
        self.data_storage_version, self.dim = data_storage_version, dim

    def __call__(self, rows: pa.Table) -> str:
        import json

        from lance.fragment import write_fragments

        rows = conform_rows(rows, self.dim)
        if rows.num_rows == 0:
            return "[]"
        frags = write_fragments(rows, self.table_uri, schema=rows.schema, storage_options=self.storage_options or None,
                                data_storage_version=self.data_storage_version, max_rows_per_file=rows.num_rows)
        return json.dumps([f.to_json() for f in frags])


# --- helpers shared with the FAISS store ------------------------------------------------------------
def _parts_from_name(name: str) -> int | None:
    try:
        return int(name.rsplit("_p", 1)[1])
    except (IndexError, ValueError):
        return None


def _ann_from_name(name: str) -> str | None:
    for a in ANN_TYPES:
        if name.startswith(f"vector_{a}_p"):
            return a
    return None



def _short(e: BaseException) -> str:
    return " ".join(str(e).split())[:300]
