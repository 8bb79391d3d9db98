"""The FAISS :class:`VectorStore`: commits entry files, keeps the replayed state current, answers queries.

Writers (one process at a time: the folder's flock; one thread: a mutex) write one new file per commit,
then replace the manifest. Readers in any process pick up new manifests on their next call (one stat when
nothing changed): appended entries are applied in place, anything else (a compaction, a new saved index)
means a fresh replay.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa

from imgrag.retrieval.errors import CorruptIndexError, ImgragError
from imgrag.retrieval.stores.base import (META_COLUMNS, Filters, Hit, VectorStore, check_columns, conform_rows,
                                          row_schema, update_table, vectors_of)
from imgrag.retrieval.stores.faiss.ann import Ann, exact_storage
from imgrag.retrieval.stores.faiss.files import (LABEL, LOCKFILE, FileLock, Missing, StoreFiles, entry_name,
                                                 vector_array)
from imgrag.retrieval.stores.faiss.state import RWLock, State, positions


def _ann_setting(name: str) -> property:
    return property(lambda self: getattr(self.ann, name), lambda self, v: setattr(self.ann, name, v))


class FaissStore(VectorStore):
    """FAISS-backed :class:`VectorStore`.

    Options:

    - ``factory``: faiss index factory string, built with ``METRIC_INNER_PRODUCT`` and wrapped in
      an id map: ``"Flat"`` (default, exact), ``"HNSW32"``, ``"HNSW32,SQ8"``, ``"IVF4096,SQ8"``,
      ``"IVF1024,PQ64"`` … Indexes that need training search exactly (Flat) until ``optimize()``
      sees enough rows (39 per IVF list / PQ centroid); ``describe()`` says so.
    - ``nprobe`` (IVF lists searched; default ``max(16, nlist/64)``, at most nlist), ``ef_search`` (HNSW, default 256:
      recall@10 0.95 on 1M clustered vectors with HNSW32,SQ8 where 128 gives 0.94; see BENCHMARKS.md).
    - ``exact_filter_rows``: an approximate index answers a filter matching at most this many rows
      by exact search over them (default 20 000).
    - ``gpu``: ``None`` (default: use a GPU when faiss-gpu sees one), ``True``/``False`` (False = ``cpu``).
    - ``search_device``: ``auto`` (faiss-gpu on every GPU, else exact torch search on CUDA, else CPU),
      ``cpu``, ``faiss-gpu``, ``torch``, ``torch:cuda[:N]``, ``torch:cpu``; ``$IMGRAG_SEARCH_DEVICE`` wins
      (:mod:`.gpu`). ``search_precision``: ``fp32`` (default) or ``fp16`` for the torch copy.
    - ``train_min_rows``: override the rows needed before training.
    - ``max_segments``: ``optimize()`` merges files once a store has more (default 16).
    """

    kind = "faiss"

    def __init__(self, root: Path, dim: int, *, factory: str = "Flat", nprobe: int | None = None,
                 ef_search: int = 256, exact_filter_rows: int = 20_000, gpu: bool | None = None,
                 train_min_rows: int | None = None, max_segments: int = 16, search_device: str = "auto",
                 search_precision: str = "fp32", **unknown: Any) -> None:
        super().__init__(root, dim)
        if unknown:
            raise ImgragError(f"unknown faiss store option(s) {sorted(unknown)}; known: factory, nprobe, ef_search, "
                              "exact_filter_rows, gpu, train_min_rows, max_segments, search_device, search_precision")
        import faiss  # noqa: F401  (fail early if missing)

        self.files = StoreFiles(self.root, dim)
        self.ann = Ann(self.files, factory, nprobe=nprobe, ef_search=ef_search, exact_filter_rows=exact_filter_rows,
                       gpu=gpu, train_min_rows=train_min_rows, search_device=search_device,
                       search_precision=search_precision)
        self.max_segments = max(2, int(max_segments))
        self._rw = RWLock()
        self._wmutex = threading.RLock()  # serialises writers (and state reloads) in this process
        self.root.mkdir(parents=True, exist_ok=True)
        self._st: State | None = None
        with self._wmutex:
            self._sync_locked()

    # the settings live on the index part (ann.Ann); the store keeps them as its own attributes
    factory = _ann_setting("factory")
    nlist = _ann_setting("nlist")
    nprobe = _ann_setting("nprobe")
    ef_search = _ann_setting("ef_search")
    exact_filter_rows = _ann_setting("exact_filter_rows")
    gpu = _ann_setting("gpu")
    search_device = _ann_setting("search_device")

    # --- keeping the state current -------------------------------------------------------------
    def _maybe_refresh(self) -> None:
        """Pick up commits made by another process (cheap: one stat when nothing changed)."""
        st = self._st
        if st is not None and self.files.stat_key() == st.key:
            return
        with self._wmutex:
            self._sync_locked()

    def _sync_locked(self) -> None:
        st = self._st
        if st is not None and self.files.stat_key() == st.key:
            return
        last_err: Exception | None = None
        for attempt in range(8):
            man, key = self.files.read_manifest()
            try:
                if st is not None and man.get("generation") == st.man.get("generation"):
                    st.key = key
                    return
                if st is not None and _can_extend(st.man, man):
                    self._extend(st, man, key)
                else:
                    new = State.replay(self.files, man, key)
                    self.ann.attach(new)
                    with self._rw.write():
                        self._st = new
                return
            except Missing as e:  # files deleted by a concurrent compaction: the manifest moved on
                last_err = e
                time.sleep(0.02 * (attempt + 1))
        raise CorruptIndexError(f"faiss store {self.root}: file {last_err} listed in the manifest is missing; "
                                "rebuild the index with --rebuild")

    def _extend(self, st: State, man: dict, key: Any) -> None:
        """Apply entries another process appended (reads files first, then swaps under the lock)."""
        loaded = [(e, self.files.read_entry(e)) for e in man["entries"][len(st.man["entries"]):]]
        vecs = {e["file"]: self.files.read_entry_vectors(e) for e, _t in loaded if e["kind"] == "rows"}
        with self._rw.write():
            try:
                for e, t in loaded:
                    newl = st.append(t, e["gen"], e["kind"], track_index=True)
                    if e["kind"] == "rows" and len(newl):
                        lab, v = vecs[e["file"]]
                        sel = np.isin(lab, newl)
                        self.ann.add(st, v[sel], lab[sel])
                st.man, st.key = man, key
            except BaseException:
                self._st = None
                raise

    # --- writing -------------------------------------------------------------------------------
    @contextmanager
    def _writing(self):
        with self._wmutex, FileLock(self.root / LOCKFILE):
            self._sync_locked()  # another writer may have committed
            yield self._st

    def _commit(self, st: State, kind: str, tbl: pa.Table, **entry: Any) -> tuple[dict, Any, int]:
        """Write ``tbl`` as the next entry of ``kind`` and commit the manifest; returns (manifest, key, gen)."""
        man = st.man
        gen = int(man["generation"]) + 1
        name = entry_name(kind, gen)
        nbytes, nrows = self.files.write_parquet(name, tbl, kind)
        e = {"gen": gen, "kind": kind, "file": name, "bytes": nbytes, "rows": nrows, **entry}
        new = {**man, "generation": gen, "entries": [*man["entries"], e]}
        if kind == "rows":
            new["next_label"] = int(entry["max_label"]) + 1
        return new, self.files.commit_manifest(new), gen

    def upsert(self, rows: pa.Table) -> None:
        rows = conform_rows(rows, self.dim)
        n = rows.num_rows
        if n == 0:
            return
        vecs = vectors_of(rows["vector"], self.dim)
        with self._writing() as st:
            first = int(st.man["next_label"])
            labels = np.arange(first, first + n, dtype=np.int64)
            tbl = rows.append_column(pa.field(LABEL, pa.int64(), nullable=False), pa.array(labels, pa.int64()))
            new, key, gen = self._commit(st, "rows", tbl, min_label=first, max_label=first + n - 1)
            self._apply(st, new, key, tbl.drop_columns(["vector"]), gen, "rows", vecs, labels)

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(str(i) for i in ids))
        if not ids:
            return
        with self._writing() as st:
            present = [i for i in ids if i in st.pos]
            if not present:
                return
            tbl = pa.table({"id": pa.array(present, pa.string())}, schema=self.files.schema("del"))
            new, key, gen = self._commit(st, "del", tbl)
            self._apply(st, new, key, tbl, gen, "del")

    def update_columns(self, ids: Sequence[str], values: dict[str, Sequence[Any]]) -> None:
        src = update_table(ids, values)
        if src is None:
            return
        with self._writing() as st:
            keep = [j for j, i in enumerate(src["id"].to_pylist()) if i in st.pos]
            if not keep:
                return
            src = src.take(pa.array(keep, pa.int64()))
            pos = np.array([st.pos[i] for i in src["id"].to_pylist()], dtype=np.int64)
            cur = st.meta.take(pa.array(pos, pa.int64()))
            for c in src.column_names:
                if c != "id":
                    cur = cur.set_column(cur.schema.get_field_index(c), cur.schema.field(c), src[c])
            new, key, gen = self._commit(st, "meta", cur)
            self._apply(st, new, key, cur, gen, "meta")

    def _apply(self, st: State, man: dict, key: Any, tbl: pa.Table, gen: int, kind: str,
               vecs: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        """Update memory after a commit is durable; on failure force a reload from disk."""
        with self._rw.write():
            try:
                st.append(tbl, gen, kind, track_index=True)
                if vecs is not None and len(vecs):
                    self.ann.add(st, vecs, labels)
                st.man, st.key = man, key
                if len(st.live) > 4096 and st.n < 0.5 * len(st.live):
                    st.shrink()
            except BaseException:
                self._st = None  # memory no longer matches disk: reload on next use
                raise

    # --- optimize ------------------------------------------------------------------------------
    def optimize(self) -> None:
        with self._writing() as st:
            entries = st.man["entries"]
            stored = sum(int(e["rows"]) for e in entries if e["kind"] in ("rows", "meta"))
            garbage = stored - st.n + sum(int(e["rows"]) for e in entries if e["kind"] == "del")
            if len(entries) > 1 and (garbage > 0.25 * max(1, st.n) or len(entries) > self.max_segments):
                self._compact_locked(st)
            self._refresh_index_locked(st)
            self.files.cleanup(self._st.man)

    def compact(self) -> None:
        """Rewrite all live rows into one file (drops replaced/deleted versions from disk)."""
        with self._writing() as st:
            if st.man["entries"]:
                self._compact_locked(st)
            self.files.cleanup(self._st.man)

    def _compact_locked(self, st: State) -> None:
        man = st.man
        gen = int(man["generation"]) + 1
        name = entry_name("rows", gen)
        labs_written: list[int] = []

        def batches() -> Iterator[pa.RecordBatch]:
            for lab, v in self.files.iter_vectors(man):
                p = st.positions(lab)
                sel = p >= 0
                if not sel.any():
                    continue
                t = st.rows_at(p[sel]).append_column("vector", vector_array(v[sel], self.dim)).append_column(
                    pa.field(LABEL, pa.int64(), nullable=False), pa.array(lab[sel], pa.int64()))
                labs_written.extend((int(lab[sel].min()), int(lab[sel].max())))
                yield from t.to_batches()

        new_entries = []
        if st.n:
            nbytes, nrows = self.files.write_parquet(name, batches(), "rows")
            if nrows != st.n:
                (self.root / name).unlink()
                raise CorruptIndexError(f"faiss store {self.root}: {st.n - nrows} live rows have no stored vector; "
                                        "rebuild the index with --rebuild")
            new_entries = [{"gen": gen, "kind": "rows", "file": name, "bytes": nbytes, "rows": nrows,
                            "min_label": min(labs_written), "max_label": max(labs_written)}]
        new = {**man, "generation": gen, "entries": new_entries}
        key = self.files.commit_manifest(new)
        with self._rw.write():
            st.gen[:] = gen
            st.man, st.key = new, key
            st.shrink()

    def _refresh_index_locked(self, st: State) -> None:
        """Train/rebuild the index when due, then save it if it covers rows the saved one lacks."""
        rebuild, train = self.ann.due(st)
        if rebuild:
            tmp = st.beside()  # build beside the live state; readers keep searching
            self.ann.build(tmp, train=train)
            with self._rw.write():
                st.index, st.base, st.fallback = tmp.index, tmp.base, tmp.fallback
                st.trained_rows, st.dead_in_index, st.gpu_index = tmp.trained_rows, set(), None
                st.torch_exact = None  # rebuilt on the next search without the rows the new index dropped
                st.note = tmp.note
        ie = st.man.get("index") or {}
        if not rebuild and ie and ie.get("factory") == self.factory and ie.get("next_label") == st.man["next_label"] \
                and ie.get("ntotal") == st.index.ntotal:
            return  # the saved index is current
        self._save_index_locked(st)

    def _save_index_locked(self, st: State) -> None:
        import faiss

        man = st.man
        gen = int(man["generation"]) + 1
        name = entry_name("index", gen)
        with self._rw.read():
            payload = faiss.serialize_index(st.index)
            ntotal = int(st.index.ntotal)
        nbytes, digest = self.files.write_index(name, payload)
        ie = {"file": name, "bytes": nbytes, "digest": digest, "factory": self.factory,
              "fallback": st.fallback, "trained_rows": st.trained_rows, "next_label": int(man["next_label"]),
              "ntotal": ntotal}
        new = {**man, "generation": gen, "index": ie}
        key = self.files.commit_manifest(new)
        with self._rw.write():
            st.man, st.key = new, key

    # --- reading -------------------------------------------------------------------------------
    @contextmanager
    def _reading(self):
        """The current state, up to date with disk, under the read lock."""
        for _ in range(5):
            self._maybe_refresh()
            with self._rw.read():
                st = self._st
                if st is not None:
                    yield st
                    return
        raise CorruptIndexError(f"faiss store {self.root} could not be loaded; rebuild the index with --rebuild")

    @contextmanager
    def _reading_files(self, what: str):
        """Entry files read outside the lock; one compacted away meanwhile means: try the command again."""
        with self.files.scanning():
            try:
                yield
            except Missing as e:
                raise ImgragError(f"another process compacted {self.root} {what} (file {e} is gone); "
                                  "run the command again") from e

    def count(self) -> int:
        with self._reading() as st:
            return st.n

    def search(self, queries: np.ndarray, k: int, filters: Filters | None = None,
               exclude_ids: Sequence[str] = ()) -> list[list[Hit]]:
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ImgragError(f"query vectors must have {self.dim} dimensions, got shape {tuple(q.shape)}")
        nq = q.shape[0]
        with self._reading() as st:
            if k <= 0 or nq == 0 or st.n == 0:
                return [[] for _ in range(nq)]
            allowed = None
            if filters is not None and not filters.is_empty():
                allowed = st.live & filters.mask(st.meta)
            excl = [st.pos[i] for i in dict.fromkeys(str(x) for x in exclude_ids) if i in st.pos]
            if excl:
                allowed = st.live.copy() if allowed is None else allowed
                allowed[excl] = False
            n_allowed = st.n if allowed is None else int(allowed.sum())
            kk = min(int(k), n_allowed)
            if kk == 0:
                return [[] for _ in range(nq)]
            D, I = self.ann.search(st, q, kk, allowed, n_allowed)
            P = positions(st.label_pos, I.reshape(-1)).reshape(I.shape)  # labels -> rows
            uniq = np.unique(P[P >= 0])
            rows = st.rows_at(uniq).to_pylist() if len(uniq) else []
        by_pos = dict(zip(uniq.tolist(), rows))
        out: list[list[Hit]] = []
        for qi in range(nq):
            hits = [Hit(by_pos[p]["id"], by_pos[p]["path"], float(s), by_pos[p])
                    for s, p in zip(D[qi].tolist(), P[qi].tolist()) if p >= 0]
            hits.sort(key=lambda h: -h.score)
            out.append(hits[:k])
        return out

    def scan(self, columns: Sequence[str] | None = None, filters: Filters | None = None,
             batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        cols = list(columns) if columns else [*META_COLUMNS, "vector"]
        check_columns(cols)
        batch_size = max(1, int(batch_size))
        with self._reading() as st:
            allowed = st.live & filters.mask(st.meta) if filters is not None and not filters.is_empty() else st.live
            where = np.flatnonzero(allowed)
            meta, man = st.meta, st.man
            meta_cols = [c for c in cols if c != "vector"]
            if "vector" in cols:
                label_pos = np.full(len(st.label_pos), -1, dtype=np.int64)
                label_pos[st.lab[where]] = where
        if "vector" not in cols:
            for off in range(0, len(where), batch_size):
                t = meta.take(pa.array(where[off:off + batch_size], pa.int64())).select(cols).combine_chunks()
                yield from t.to_batches()
            return
        schema = pa.schema([row_schema(self.dim).field(c) for c in cols])
        pending: list[pa.Table] = []
        npend = 0
        with self._reading_files("during the scan"):
            for lab, v in self.files.iter_vectors(man):
                p = positions(label_pos, lab)
                sel = np.flatnonzero(p >= 0)
                for off in range(0, len(sel), batch_size):
                    s = sel[off:off + batch_size]
                    t = meta.take(pa.array(p[s], pa.int64())).select(meta_cols)
                    t = t.append_column(schema.field("vector"), vector_array(v[s], self.dim)).select(cols)
                    pending.append(t)
                    npend += t.num_rows
                    while npend >= batch_size:
                        allt = pa.concat_tables(pending).combine_chunks()
                        yield from allt.slice(0, batch_size).cast(schema).to_batches()
                        rest = allt.slice(batch_size)
                        pending, npend = ([rest] if rest.num_rows else []), rest.num_rows
            if npend:
                yield from pa.concat_tables(pending).combine_chunks().cast(schema).to_batches()

    def get(self, ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        cols = list(columns) if columns else [*META_COLUMNS, "vector"]
        check_columns(cols)
        schema = pa.schema([row_schema(self.dim).field(c) for c in cols])
        with self._reading() as st:
            pos = [st.pos[i] for i in dict.fromkeys(str(x) for x in ids) if i in st.pos]
            if not pos:
                return schema.empty_table()
            t = st.meta.take(pa.array(pos, pa.int64())).select([c for c in cols if c != "vector"])
            if "vector" not in cols:
                return t.cast(schema)
            labels = st.lab[np.asarray(pos, dtype=np.int64)]
            vecs = None
            if exact_storage(st.base):
                vecs = st.index.reconstruct_batch(np.ascontiguousarray(labels))
            man = st.man
        if vecs is None:
            with self._reading_files("meanwhile"):
                vecs = self.files.vectors_for(man, labels)
        return t.append_column(schema.field("vector"), vector_array(vecs, self.dim)).select(cols).cast(schema)

    def disk_size(self) -> int:
        return self.files.disk_size()

    def describe(self) -> dict[str, Any]:
        with self._reading() as st:
            return {"kind": self.kind, **self.ann.describe(st)}

    def close(self) -> None:
        with self._rw.write():
            if self._st is not None:
                self._st.gpu_index = self._st.torch_exact = None


def _can_extend(old: dict, new: dict) -> bool:
    """True when ``new`` only appends entries to ``old`` (same files, same saved index)."""
    oe, ne = old["entries"], new["entries"]
    return (len(ne) >= len(oe) and [e["file"] for e in ne[:len(oe)]] == [e["file"] for e in oe]
            and (old.get("index") or {}).get("file") == (new.get("index") or {}).get("file"))
