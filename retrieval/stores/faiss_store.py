"""FAISS store: a faiss index (any factory string, inner product) + metadata and vectors in parquet.

Layout of ``<index>/faiss/``::

    manifest.json            the committed state: list of entries (files), next label, index file
    seg-<gen>.parquet        rows written by one commit: metadata + vector + ``_label`` (faiss id)
    meta-<gen>.parquet       metadata-only row versions (``update_columns``), same ``_label``
    del-<gen>.parquet        ids deleted by one commit
    index-<gen>.faiss        the faiss index saved by ``optimize()``: header + checksum + faiss bytes

Every write (upsert / delete / update_columns) writes one new immutable file (temp file, fsync,
rename) and then replaces ``manifest.json`` atomically (temp file, fsync, ``os.replace``, fsync of
the folder). A crash at any point leaves the old manifest, i.e. exactly the last whole commit; files
no manifest references are ignored and removed by the next :meth:`FaissStore.optimize`. A commit
writes only its own rows, never the collection.

State is replayed from the entries in order: the last version of an ``id`` wins, a delete removes
it. Each stored vector has a unique int64 label (never reused); the faiss index is an
``IndexIDMap2`` over labels. The index file records the labels it covers (``next_label``); rows
committed after it (a crash before ``optimize``, a reader opening mid-run) are added on open, and
labels it holds that are no longer live are filtered out of every search.

Every file is validated before its bytes reach faiss/arrow (sizes against the manifest, parquet
magic + imgrag marker + schema, index header + blake2b checksum), so a truncated or foreign file
raises :class:`CorruptIndexError` instead of crashing the process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgrag.retrieval.errors import CorruptIndexError, ImgragError, IndexMismatchError
from imgrag.retrieval.stores.base import (META_COLUMNS, META_FIELDS, Filters, Hit, VectorStore, check_columns,
                                          conform_rows, row_schema, update_table, vectors_of)

FORMAT = "imgrag-faiss"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCKFILE = ".write.lock"
LABEL = "_label"
INDEX_MAGIC = b"IMGRAGFX"
_HDR = struct.Struct("<8sIQ16s")  # magic, format version, payload length, blake2b-128 of payload
_PQ_MARK = b"imgrag"
_FILE_RX = re.compile(r"^(seg|meta|del)-\d+\.parquet$|^index-\d+\.faiss$")
_ROW_GROUP = 8192
_BRUTE_CHUNK = 32768


# ------------------------------------------------------------------------------------------------
# small utilities
# ------------------------------------------------------------------------------------------------
class _RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self):
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self):
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class _FileLock:
    """Exclusive ``flock`` on a file (no-op where fcntl does not exist): serialises writer processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the index-level lock is all there is
            return self
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class _Missing(Exception):
    """A file the manifest lists is gone (another process compacted meanwhile): re-read and retry."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems refuse directory fsync
        pass


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


def _write_parquet(path: Path, batches: Iterator[pa.RecordBatch] | pa.Table, schema: pa.Schema, kind: str) -> tuple[int, int]:
    """Write a parquet file atomically (temp, fsync, rename); returns (bytes, rows)."""
    schema = schema.with_metadata({_PQ_MARK: f"faiss-{kind}/{FORMAT_VERSION}".encode()})
    compression = {f.name: ("NONE" if f.name == "vector" else "SNAPPY") for f in schema}
    tmp = _tmp_name(path)
    rows = 0
    try:
        with open(tmp, "wb") as f:
            with pq.ParquetWriter(f, schema, compression=compression,
                                  use_dictionary=[c for c in schema.names if c != "vector"]) as w:
                if isinstance(batches, pa.Table):
                    batches = batches.to_batches(_ROW_GROUP)
                for b in batches:
                    if b.num_rows:
                        w.write_table(pa.Table.from_batches([b]).cast(schema), row_group_size=_ROW_GROUP)
                        rows += b.num_rows
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return os.stat(path).st_size, rows


def _factory_min_rows(factory: str, dim: int) -> int:
    """Rows needed to train ``factory`` well (0 = needs no training)."""
    import faiss

    idx = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if idx.is_trained:
        return 0
    need = 1
    m = re.search(r"IVF(\d+)", factory)
    if m:
        need = max(need, 39 * int(m.group(1)))  # faiss warns below 39 points per centroid
    for pm in re.finditer(r"PQ(\d+)(?:x(\d+))?", factory):
        nbits = int(pm.group(2)) if pm.group(2) else 8
        need = max(need, 39 * (1 << nbits))
    if need == 1 and re.search(r"(RQ|LSQ|PRQ|PLSQ|ITQ|OPQ)", factory):
        need = 39 * 256
    return need


def _new_manifest(dim: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "dim": dim, "generation": 0, "next_label": 0,
            "entries": [], "index": None}


class _State:
    """Everything a reader needs, swapped/mutated only under the write side of the RW lock."""

    def __init__(self, man: dict[str, Any], key: Any) -> None:
        self.man = man
        self.key = key  # stat of manifest.json this state reflects
        self.meta = _META_LBL_SCHEMA.empty_table()  # row versions (META + _label)
        self.lab = np.zeros(0, dtype=np.int64)  # label of each position
        self.gen = np.zeros(0, dtype=np.int64)  # entry generation each position came from
        self.live = np.zeros(0, dtype=bool)
        self.pos: dict[str, int] = {}  # id -> live position
        self.label_pos = np.full(0, -1, dtype=np.int64)  # label -> live position or -1
        self.index = None  # faiss IndexIDMap2
        self.base = None  # the index inside the id map (downcast)
        self.fallback = False  # True: exact Flat stands in for a factory index not trained yet
        self.trained_rows = 0
        self.dead_in_index: set[int] = set()
        self.note: str | None = None
        self.gpu_index = None
        self.gpu_error: str | None = None

    @property
    def n(self) -> int:
        return len(self.pos)

    def ensure_labels(self, upto: int) -> None:
        if upto > len(self.label_pos):
            grow = np.full(max(upto, 2 * len(self.label_pos)) - len(self.label_pos), -1, dtype=np.int64)
            self.label_pos = np.concatenate([self.label_pos, grow])

    def append(self, tbl: pa.Table, gen: int, kind: str, track_index: bool) -> np.ndarray:
        """Apply one entry's rows (kind rows/meta) or ids (kind del); returns labels newly live with vectors."""
        base = self.meta.num_rows
        if kind == "del":
            for i in tbl["id"].to_pylist():
                old = self.pos.pop(i, None)
                if old is None:
                    continue
                self.live[old] = False
                lab = int(self.lab[old])
                self.label_pos[lab] = -1
                if track_index:
                    self.dead_in_index.add(lab)
            return np.zeros(0, dtype=np.int64)
        n = tbl.num_rows
        ids = tbl["id"].to_pylist()
        labels = np.asarray(tbl[LABEL].to_numpy(zero_copy_only=False), dtype=np.int64)
        if n:
            self.ensure_labels(int(labels.max()) + 1)
        newlive = np.ones(n, dtype=bool)
        for j, (i, lab) in enumerate(zip(ids, labels.tolist())):
            old = self.pos.get(i)
            if kind == "meta":  # a new metadata version of the live row with this label
                if old is None or int(self.lab[old]) != lab:
                    newlive[j] = False
                    continue
                self.live[old] = False
            elif old is not None:  # a new vector replaces the old one
                self.live[old] = False
                ol = int(self.lab[old])
                if self.label_pos[ol] == old:
                    self.label_pos[ol] = -1
                    if track_index:
                        self.dead_in_index.add(ol)
            self.pos[i] = base + j
            self.label_pos[lab] = base + j
        self.meta = pa.concat_tables([self.meta, tbl.select(_META_LBL_SCHEMA.names).cast(_META_LBL_SCHEMA)])
        if self.meta.num_rows > 64 and len(self.meta.column(0).chunks) > 64:
            self.meta = self.meta.combine_chunks()
        self.lab = np.concatenate([self.lab, labels])
        self.gen = np.concatenate([self.gen, np.full(n, gen, dtype=np.int64)])
        self.live = np.concatenate([self.live, newlive])
        return labels[newlive] if kind == "rows" else np.zeros(0, dtype=np.int64)

    def shrink(self) -> None:
        """Drop dead row versions from memory (positions change)."""
        keep = np.flatnonzero(self.live)
        if len(keep) == len(self.live):
            return
        self.meta = self.meta.take(pa.array(keep, pa.int64())).combine_chunks()
        self.lab, self.gen = self.lab[keep], self.gen[keep]
        self.live = np.ones(len(keep), dtype=bool)
        ids = self.meta["id"].to_pylist()
        self.pos = {i: p for p, i in enumerate(ids)}
        self.label_pos[:] = -1
        if len(keep):
            self.label_pos[self.lab] = np.arange(len(keep), dtype=np.int64)

    def live_labels(self) -> np.ndarray:
        return self.lab[self.live]


_META_LBL_SCHEMA = pa.schema([*META_FIELDS, pa.field(LABEL, pa.int64(), nullable=False)])


# ------------------------------------------------------------------------------------------------
# the store
# ------------------------------------------------------------------------------------------------
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
    - ``gpu``: ``None`` (default: use a GPU when faiss-gpu sees one), ``True``/``False``.
    - ``train_min_rows``: override the rows needed before training.
    - ``max_segments``: ``optimize()`` merges files once a store has more (default 16).
    """

    kind = "faiss"

    def __init__(self, root: Path, dim: int, *, factory: str = "Flat", nprobe: int | None = None,
                 ef_search: int = 256, exact_filter_rows: int = 20_000, gpu: bool | None = None,
                 train_min_rows: int | None = None, max_segments: int = 16, **unknown: Any) -> None:
        super().__init__(root, dim)
        if unknown:
            raise ImgragError(f"unknown faiss store option(s) {sorted(unknown)}; known: factory, nprobe, ef_search, "
                              "exact_filter_rows, gpu, train_min_rows, max_segments")
        import faiss  # noqa: F401  (fail early if missing)

        factory = str(factory).strip()
        if not factory or "IDMap" in factory:
            raise ImgragError(f"faiss factory {factory!r} is not usable; give the index part only, e.g. Flat, HNSW32, "
                              "IVF4096,SQ8 (the store adds the id map itself)")
        try:
            self._min_train = _factory_min_rows(factory, dim) if train_min_rows is None else max(1, int(train_min_rows))
        except RuntimeError as e:
            raise ImgragError(f"faiss cannot build index {factory!r} for {dim}-d vectors "
                              f"({str(e).splitlines()[-1][:160]}); see docs/stores.md for factory strings") from e
        self.factory = factory
        m = re.search(r"IVF(\d+)", factory)
        self.nlist = int(m.group(1)) if m else 0
        # 16 lists met recall@10 >= 0.95 with p50 <= 1.1 ms at both 100k (IVF256,SQ8: 0.962) and 1M vectors
        # (IVF1024,SQ8: 0.966, where the old nlist/16 = 64 took 3.7 ms for 0.971); BENCHMARKS.md
        self.nprobe = int(nprobe) if nprobe else (min(self.nlist, max(16, self.nlist // 64)) if self.nlist else 0)
        self.ef_search = max(1, int(ef_search))
        self.exact_filter_rows = int(exact_filter_rows)
        self.gpu = gpu
        self.max_segments = max(2, int(max_segments))
        self._rw = _RWLock()
        self._wmutex = threading.RLock()  # serialises writers (and state reloads) in this process
        self._gpu_lock = threading.Lock()
        self._gpu_res = None
        self._garbage: list[str] = []
        self._active_scans = 0
        self._scan_lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self._st: _State | None = None
        with self._wmutex:
            self._sync_locked()

    # --- manifest & loading --------------------------------------------------------------------
    def _stat_key(self):
        try:
            s = os.stat(self.root / MANIFEST)
        except FileNotFoundError:
            return None
        return (s.st_ino, s.st_mtime_ns, s.st_size)

    def _read_manifest(self) -> tuple[dict[str, Any], Any]:
        p = self.root / MANIFEST
        key = self._stat_key()
        if key is None:
            return _new_manifest(self.dim), None
        try:
            raw = p.read_bytes()
            man = json.loads(raw.decode("utf-8"))
        except FileNotFoundError:
            return _new_manifest(self.dim), None
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptIndexError(f"faiss store manifest {p} is unreadable ({e}); rebuild the index with --rebuild") from e
        if not isinstance(man, dict) or man.get("format") != FORMAT:
            raise CorruptIndexError(f"{p} is not an imgrag faiss manifest; use another --index or --rebuild")
        if man.get("version") != FORMAT_VERSION:
            raise IndexMismatchError(f"faiss store {self.root} has format version {man.get('version')}, this imgrag "
                                     f"reads {FORMAT_VERSION}; rebuild it with --rebuild")
        if man.get("dim") != self.dim:
            raise IndexMismatchError(f"faiss store {self.root} holds {man.get('dim')}-d vectors, the model makes "
                                     f"{self.dim}-d ones; use the index's model or --rebuild")
        ok = isinstance(man.get("generation"), int) and isinstance(man.get("next_label"), int) \
            and isinstance(man.get("entries"), list) and (man.get("index") is None or isinstance(man["index"], dict))
        ok = ok and all(isinstance(e, dict) and isinstance(e.get("gen"), int) and isinstance(e.get("rows"), int)
                        and e.get("kind") in ("rows", "meta", "del") and isinstance(e.get("file"), str)
                        and (e["kind"] != "rows" or isinstance(e.get("max_label", -1), int))
                        for e in man.get("entries") or [])
        if not ok:
            raise CorruptIndexError(f"faiss store manifest {p} is malformed; rebuild the index with --rebuild")
        return man, key

    def _maybe_refresh(self) -> None:
        """Pick up commits made by another process (cheap: one stat when nothing changed)."""
        st = self._st
        if st is not None and self._stat_key() == st.key:
            return
        with self._wmutex:
            self._sync_locked()

    def _sync_locked(self) -> None:
        st = self._st
        if st is not None and self._stat_key() == st.key:
            return
        last_err: Exception | None = None
        for attempt in range(8):
            man, key = self._read_manifest()
            try:
                if st is not None and man.get("generation") == st.man.get("generation"):
                    st.key = key
                    return
                if st is not None and self._can_extend(st.man, man):
                    self._extend(st, man, key)
                else:
                    new = self._load(man, key)
                    with self._rw.write():
                        self._st = new
                return
            except _Missing as e:  # files deleted by a concurrent compaction: the manifest moved on
                last_err = e
                time.sleep(0.02 * (attempt + 1))
        raise CorruptIndexError(f"faiss store {self.root}: file {last_err} listed in the manifest is missing; "
                                "rebuild the index with --rebuild")

    @staticmethod
    def _can_extend(old: dict, new: dict) -> bool:
        oe, ne = old["entries"], new["entries"]
        return (len(ne) >= len(oe) and [e["file"] for e in ne[:len(oe)]] == [e["file"] for e in oe]
                and (old.get("index") or {}).get("file") == (new.get("index") or {}).get("file"))

    def _extend(self, st: _State, man: dict, key: Any) -> None:
        """Apply entries another process appended (reads files first, then swaps under the lock)."""
        new_entries = man["entries"][len(st.man["entries"]):]
        loaded = [(e, self._read_entry(e)) for e in new_entries]
        vecs = {}
        for e, _t in loaded:
            if e["kind"] == "rows":
                vecs[e["file"]] = self._read_entry_vectors(e)
        with self._rw.write():
            try:
                for e, t in loaded:
                    newl = st.append(t, e["gen"], e["kind"], track_index=True)
                    if e["kind"] == "rows" and len(newl):
                        lab, v = vecs[e["file"]]
                        sel = np.isin(lab, newl)
                        st.index.add_with_ids(np.ascontiguousarray(v[sel]), lab[sel])
                        st.gpu_index = None
                st.man, st.key = man, key
            except BaseException:
                self._st = None
                raise

    def _load(self, man: dict, key: Any) -> _State:
        st = _State(man, key)
        for e in man["entries"]:
            st.append(self._read_entry(e), e["gen"], e["kind"], track_index=False)
        st.shrink()
        live = np.sort(st.live_labels())
        ie = man.get("index")
        idx = None
        covered = 0
        if ie and ie.get("factory") == self.factory:
            idx = self._read_index(ie)
            covered = int(ie.get("next_label", 0))
            have = faiss_labels(idx)
            need = live[live < covered]
            if not np.isin(need, have).all():  # index does not match the rows: rebuild it from them
                st.note = "saved index did not match the rows; rebuilt in memory (run optimize to save)"
                idx = None
        if idx is None:
            self._build_index(st, train=False)
        else:
            st.index = idx
            st.base = _base(idx)
            st.fallback = bool(ie.get("fallback"))
            st.trained_rows = int(ie.get("trained_rows", 0))
            tail = live[live >= covered]
            if len(tail):
                for lab, v in self._iter_vectors(man, min_label=covered):
                    sel = np.isin(lab, tail)
                    if sel.any():
                        idx.add_with_ids(np.ascontiguousarray(v[sel]), lab[sel])
            self._setup(st)
        have = faiss_labels(st.index)
        inside = have < len(st.label_pos)
        dead = np.ones(len(have), dtype=bool)
        dead[inside] = st.label_pos[have[inside]] < 0
        st.dead_in_index = set(have[dead].tolist())
        return st

    # --- files ---------------------------------------------------------------------------------
    def _check_file(self, e: dict) -> Path:
        name = str(e.get("file", ""))
        if not _FILE_RX.match(name):
            raise CorruptIndexError(f"faiss store manifest in {self.root} names a bad file {name!r}; rebuild with --rebuild")
        p = self.root / name
        try:
            size = os.stat(p).st_size
        except FileNotFoundError:
            raise _Missing(name) from None
        if size != e.get("bytes"):
            raise CorruptIndexError(f"{p} is {size} bytes, the manifest recorded {e.get('bytes')}: the file is "
                                    "truncated or was replaced; rebuild the index with --rebuild")
        return p

    def _parquet(self, e: dict, kind: str) -> pq.ParquetFile:
        p = self._check_file(e)
        try:
            with open(p, "rb") as f:
                head = f.read(4)
                f.seek(-4, os.SEEK_END)
                tail = f.read(4)
        except FileNotFoundError:
            raise _Missing(e["file"]) from None
        except OSError as ex:
            raise CorruptIndexError(f"{p} is unreadable ({ex}); rebuild the index with --rebuild") from ex
        if head != b"PAR1" or tail != b"PAR1":
            raise CorruptIndexError(f"{p} is not a parquet file (truncated or overwritten); rebuild the index with --rebuild")
        try:
            pf = pq.ParquetFile(p)
        except FileNotFoundError:
            raise _Missing(e["file"]) from None
        except Exception as ex:
            raise CorruptIndexError(f"{p} is a damaged parquet file ({str(ex)[:160]}); rebuild the index with --rebuild") from ex
        mark = (pf.schema_arrow.metadata or {}).get(_PQ_MARK, b"").decode("utf-8", "replace")
        if mark != f"faiss-{kind}/{FORMAT_VERSION}":
            raise CorruptIndexError(f"{p} is not an imgrag faiss {kind} file (a foreign parquet file?); "
                                    "rebuild the index with --rebuild")
        want = self._schema(kind)
        sch = pf.schema_arrow
        for f in want:
            i = sch.get_field_index(f.name)
            if i < 0 or not sch.field(i).type.equals(f.type):
                raise CorruptIndexError(f"{p} has no column {f.name}: {f.type}; rebuild the index with --rebuild")
        if pf.metadata.num_rows != e.get("rows"):
            raise CorruptIndexError(f"{p} holds {pf.metadata.num_rows} rows, the manifest recorded {e.get('rows')}; "
                                    "rebuild the index with --rebuild")
        return pf

    def _schema(self, kind: str) -> pa.Schema:
        if kind == "rows":
            return pa.schema([*row_schema(self.dim), pa.field(LABEL, pa.int64(), nullable=False)])
        if kind == "meta":
            return _META_LBL_SCHEMA
        return pa.schema([pa.field("id", pa.string(), nullable=False)])

    def _read_entry(self, e: dict) -> pa.Table:
        kind = e.get("kind")
        if kind not in ("rows", "meta", "del"):
            raise CorruptIndexError(f"faiss store manifest in {self.root} has an entry of unknown kind {kind!r}")
        pf = self._parquet(e, kind)
        cols = ["id"] if kind == "del" else _META_LBL_SCHEMA.names
        try:
            return pf.read(columns=cols)
        except FileNotFoundError:
            raise _Missing(e["file"]) from None
        except Exception as ex:
            raise CorruptIndexError(f"{self.root / e['file']} is damaged ({str(ex)[:160]}); rebuild with --rebuild") from ex

    def _read_entry_vectors(self, e: dict, min_label: int = 0) -> tuple[np.ndarray, np.ndarray]:
        labs, vecs = [], []
        for lab, v in self._iter_entry_vectors(e, min_label):
            labs.append(lab)
            vecs.append(v)
        if not labs:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(labs), np.concatenate(vecs)

    def _iter_entry_vectors(self, e: dict, min_label: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        pf = self._parquet(e, "rows")
        try:
            for b in pf.iter_batches(batch_size=_ROW_GROUP, columns=[LABEL, "vector"]):
                lab = np.asarray(b.column(0).to_numpy(zero_copy_only=False), dtype=np.int64)
                v = vectors_of(b.column(1), self.dim)
                if min_label:
                    sel = lab >= min_label
                    lab, v = lab[sel], v[sel]
                if len(lab):
                    yield lab, v
        except FileNotFoundError:
            raise _Missing(e["file"]) from None
        except (OSError, pa.ArrowException) as ex:
            raise CorruptIndexError(f"{self.root / e['file']} is damaged ({str(ex)[:160]}); rebuild with --rebuild") from ex

    def _iter_vectors(self, man: dict, min_label: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for e in man["entries"]:
            if e["kind"] == "rows" and e.get("rows") and int(e.get("max_label", -1)) >= min_label:
                yield from self._iter_entry_vectors(e, min_label)

    def _read_index(self, ie: dict):
        import faiss

        p = self._check_file(ie)
        try:
            with open(p, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            raise _Missing(ie["file"]) from None
        if len(buf) < _HDR.size:
            raise CorruptIndexError(f"{p} is truncated ({len(buf)} bytes); run `imgrag index` again or --rebuild")
        magic, ver, n, digest = _HDR.unpack_from(buf, 0)
        if magic != INDEX_MAGIC or ver != FORMAT_VERSION:
            raise CorruptIndexError(f"{p} is not an imgrag faiss index file; rebuild the index with --rebuild")
        payload = memoryview(buf)[_HDR.size:]
        if n != len(payload) or hashlib.blake2b(payload, digest_size=16).digest() != digest \
                or digest.hex() != ie.get("digest"):
            raise CorruptIndexError(f"{p} is truncated or damaged (checksum mismatch); rebuild the index with --rebuild")
        try:
            idx = faiss.deserialize_index(np.frombuffer(payload, dtype=np.uint8))
        except RuntimeError as ex:
            raise CorruptIndexError(f"{p}: faiss cannot read it ({str(ex).splitlines()[-1][:160]}); --rebuild") from ex
        # (no downcast_index here: the returned wrapper owns the index; a downcast copy would not)
        if not isinstance(idx, faiss.IndexIDMap2) or idx.d != self.dim:
            raise CorruptIndexError(f"{p} holds a different kind of faiss index; rebuild the index with --rebuild")
        return idx

    # --- index construction --------------------------------------------------------------------
    def _setup(self, st: _State) -> None:
        """Search-time settings + IVF direct map (so vectors can be reconstructed by label)."""
        import faiss

        st.base = _base(st.index)
        if isinstance(st.base, faiss.IndexIVF):
            if self.nprobe:
                st.base.nprobe = min(self.nprobe, st.base.nlist)
            if st.base.direct_map.type == 0:  # NoMap
                try:
                    st.base.make_direct_map(True)
                except RuntimeError:  # pragma: no cover - exotic IVF variants
                    pass
        if isinstance(st.base, faiss.IndexHNSW):
            st.base.hnsw.efSearch = self.ef_search
        st.gpu_index = None

    def _build_index(self, st: _State, train: bool) -> None:
        """(Re)build ``st.index`` from the live vectors in the files; ``train`` allows training."""
        import faiss

        n = st.n
        trainable = self._min_train > 0
        idx = None
        if trainable and train and n >= self._min_train:
            idx = faiss.IndexIDMap2(faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT))
            sample = self._sample(st, max(self._min_train, min(n, 200_000, 256 * max(self.nlist, 256))))
            try:
                idx.train(sample)
                st.fallback, st.trained_rows = False, n
            except RuntimeError as e:  # e.g. fewer rows than IVF lists with a low train_min_rows
                idx = None
                st.note = f"training {self.factory} failed ({str(e).splitlines()[-1][:120]}); searching exactly"
        elif not trainable:
            idx = faiss.IndexIDMap2(faiss.index_factory(self.dim, self.factory, faiss.METRIC_INNER_PRODUCT))
            st.fallback = False
        if idx is None:  # exact search until the factory can be trained
            idx = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            st.fallback, st.trained_rows = True, 0
        live = st.label_pos
        for lab, v in self._iter_vectors(st.man):
            inside = lab < len(live)
            sel = np.zeros(len(lab), dtype=bool)
            sel[inside] = live[lab[inside]] >= 0
            if sel.any():
                idx.add_with_ids(np.ascontiguousarray(v[sel]), lab[sel])
        st.index = idx
        st.dead_in_index = set()
        self._setup(st)

    def _sample(self, st: _State, size: int) -> np.ndarray:
        rng = np.random.default_rng(12345)
        p = min(1.0, size / max(1, st.n))
        out = []
        for lab, v in self._iter_vectors(st.man):
            inside = lab < len(st.label_pos)
            sel = np.zeros(len(lab), dtype=bool)
            sel[inside] = st.label_pos[lab[inside]] >= 0
            if p < 1.0:
                sel &= rng.random(len(lab)) < p
            if sel.any():
                out.append(v[sel])
        return np.ascontiguousarray(np.concatenate(out) if out else np.zeros((0, self.dim), np.float32))

    # --- writing -------------------------------------------------------------------------------
    @contextmanager
    def _writing(self):
        with self._wmutex, _FileLock(self.root / LOCKFILE):
            self._sync_locked()  # another writer may have committed
            yield self._st

    def _commit_manifest(self, st: _State, man: dict) -> Any:
        from imgrag.retrieval.index import atomic_write_bytes

        atomic_write_bytes(self.root / MANIFEST, json.dumps(man, separators=(",", ":")).encode())
        return self._stat_key()

    def upsert(self, rows: pa.Table) -> None:
        rows = conform_rows(rows, self.dim)
        n = rows.num_rows
        if n == 0:
            return
        vecs = vectors_of(rows["vector"], self.dim)
        with self._writing() as st:
            man = st.man
            gen, first = int(man["generation"]) + 1, int(man["next_label"])
            labels = np.arange(first, first + n, dtype=np.int64)
            tbl = rows.append_column(pa.field(LABEL, pa.int64(), nullable=False), pa.array(labels, pa.int64()))
            name = f"seg-{gen:08d}.parquet"
            nbytes, _ = _write_parquet(self.root / name, tbl, self._schema("rows"), "rows")
            entry = {"gen": gen, "kind": "rows", "file": name, "bytes": nbytes, "rows": n,
                     "min_label": first, "max_label": first + n - 1}
            new = {**man, "generation": gen, "next_label": first + n, "entries": [*man["entries"], entry]}
            key = self._commit_manifest(st, new)
            self._apply(st, new, key, tbl.drop_columns(["vector"]), gen, "rows", vecs, labels)

    def delete(self, ids: Sequence[str]) -> None:
        ids = list(dict.fromkeys(str(i) for i in ids))
        if not ids:
            return
        with self._writing() as st:
            present = [i for i in ids if i in st.pos]
            if not present:
                return
            man = st.man
            gen = int(man["generation"]) + 1
            tbl = pa.table({"id": pa.array(present, pa.string())}, schema=self._schema("del"))
            name = f"del-{gen:08d}.parquet"
            nbytes, _ = _write_parquet(self.root / name, tbl, self._schema("del"), "del")
            entry = {"gen": gen, "kind": "del", "file": name, "bytes": nbytes, "rows": len(present)}
            new = {**man, "generation": gen, "entries": [*man["entries"], entry]}
            key = self._commit_manifest(st, new)
            self._apply(st, new, key, tbl, gen, "del")

    def update_columns(self, ids: Sequence[str], values: dict[str, Sequence[Any]]) -> None:
        src = update_table(ids, values)
        if src is None:
            return
        with self._writing() as st:
            src_ids = src["id"].to_pylist()
            keep = [j for j, i in enumerate(src_ids) if i in st.pos]
            if not keep:
                return
            src = src.take(pa.array(keep, pa.int64()))
            pos = np.array([st.pos[i] for i in src["id"].to_pylist()], dtype=np.int64)
            cur = st.meta.take(pa.array(pos, pa.int64()))
            for c in src.column_names:
                if c != "id":
                    cur = cur.set_column(cur.schema.get_field_index(c), cur.schema.field(c), src[c])
            man = st.man
            gen = int(man["generation"]) + 1
            name = f"meta-{gen:08d}.parquet"
            nbytes, _ = _write_parquet(self.root / name, cur, self._schema("meta"), "meta")
            entry = {"gen": gen, "kind": "meta", "file": name, "bytes": nbytes, "rows": cur.num_rows}
            new = {**man, "generation": gen, "entries": [*man["entries"], entry]}
            key = self._commit_manifest(st, new)
            self._apply(st, new, key, cur, gen, "meta")

    def _apply(self, st: _State, man: dict, key: Any, tbl: pa.Table, gen: int, kind: str,
               vecs: np.ndarray | None = None, labels: np.ndarray | None = None) -> None:
        """Update memory after a commit is durable; on failure force a reload from disk."""
        with self._rw.write():
            try:
                st.append(tbl, gen, kind, track_index=True)
                if vecs is not None and len(vecs):
                    st.index.add_with_ids(np.ascontiguousarray(vecs, dtype=np.float32), labels)
                    st.gpu_index = None
                st.man, st.key = man, key
                if len(st.live) > 4096 and st.n < 0.5 * len(st.live):
                    st.shrink()
            except BaseException:
                self._st = None  # memory no longer matches disk: reload on next use
                raise

    # --- optimize ------------------------------------------------------------------------------
    def optimize(self) -> None:
        with self._writing() as st:
            man = st.man
            entries = man["entries"]
            stored = sum(int(e["rows"]) for e in entries if e["kind"] in ("rows", "meta"))
            garbage = stored - st.n + sum(int(e["rows"]) for e in entries if e["kind"] == "del")
            if len(entries) > 1 and (garbage > 0.25 * max(1, st.n) or len(entries) > self.max_segments):
                self._compact_locked(st)
            self._refresh_index_locked(st)
            self._cleanup_locked()

    def compact(self) -> None:
        """Rewrite all live rows into one file (drops replaced/deleted versions from disk)."""
        with self._writing() as st:
            if st.man["entries"]:
                self._compact_locked(st)
            self._cleanup_locked()

    def _compact_locked(self, st: _State) -> None:
        man = st.man
        gen = int(man["generation"]) + 1
        name = f"seg-{gen:08d}.parquet"
        schema = self._schema("rows")
        label_pos, meta = st.label_pos, st.meta
        labs_written: list[int] = []

        def batches() -> Iterator[pa.RecordBatch]:
            for lab, v in self._iter_vectors(man):
                inside = lab < len(label_pos)
                p = np.full(len(lab), -1, dtype=np.int64)
                p[inside] = label_pos[lab[inside]]
                sel = p >= 0
                if not sel.any():
                    continue
                rows = meta.take(pa.array(p[sel], pa.int64())).drop_columns([LABEL])
                vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v[sel]).reshape(-1)), self.dim)
                t = rows.append_column("vector", vec).append_column(
                    pa.field(LABEL, pa.int64(), nullable=False), pa.array(lab[sel], pa.int64()))
                labs_written.extend((int(lab[sel].min()), int(lab[sel].max())))
                yield from t.to_batches()

        if st.n:
            nbytes, nrows = _write_parquet(self.root / name, batches(), schema, "rows")
            entry = {"gen": gen, "kind": "rows", "file": name, "bytes": nbytes, "rows": nrows,
                     "min_label": min(labs_written), "max_label": max(labs_written)}
            if nrows != st.n:
                os.unlink(self.root / name)
                raise CorruptIndexError(f"faiss store {self.root}: {st.n - nrows} live rows have no stored vector; "
                                        "rebuild the index with --rebuild")
            new_entries = [entry]
        else:
            new_entries = []
        new = {**man, "generation": gen, "entries": new_entries}
        key = self._commit_manifest(st, new)
        self._garbage.extend(e["file"] for e in man["entries"])
        with self._rw.write():
            st.gen[:] = gen
            st.man, st.key = new, key
            st.shrink()

    def _refresh_index_locked(self, st: _State) -> None:
        """Train/rebuild the index when due, then save it if it covers rows the saved one lacks."""
        n = st.n
        ntotal = st.index.ntotal if st.index is not None else 0
        dead = len(st.dead_in_index)
        trainable = self._min_train > 0
        ie = st.man.get("index") or {}
        rebuild = train = False
        if ie and ie.get("factory") != self.factory:
            rebuild = train = True
        if trainable:
            if n >= self._min_train and (st.fallback or n > 8 * max(1, st.trained_rows)):
                rebuild = train = True
            elif dead > 0.3 * max(1, ntotal):
                rebuild, train = True, not st.fallback
        elif dead > 0.2 * max(1, ntotal):
            rebuild = True
        if rebuild:
            tmp = _State(st.man, st.key)  # build beside the live state; readers keep searching
            tmp.meta, tmp.lab, tmp.gen, tmp.live = st.meta, st.lab, st.gen, st.live
            tmp.pos, tmp.label_pos = st.pos, st.label_pos
            tmp.trained_rows = st.trained_rows
            self._build_index(tmp, train=train or not trainable)
            with self._rw.write():
                st.index, st.base, st.fallback = tmp.index, tmp.base, tmp.fallback
                st.trained_rows, st.dead_in_index, st.gpu_index = tmp.trained_rows, set(), None
                st.note = tmp.note
        if not rebuild and ie and ie.get("factory") == self.factory and ie.get("next_label") == st.man["next_label"] \
                and ie.get("ntotal") == st.index.ntotal:
            return  # the saved index is current
        self._save_index_locked(st)

    def _save_index_locked(self, st: _State) -> None:
        import faiss

        man = st.man
        gen = int(man["generation"]) + 1
        name = f"index-{gen:08d}.faiss"
        with self._rw.read():
            payload = faiss.serialize_index(st.index)
            ntotal = int(st.index.ntotal)
        digest = hashlib.blake2b(memoryview(payload), digest_size=16).digest()
        path = self.root / name
        tmp = _tmp_name(path)
        try:
            with open(tmp, "wb") as f:
                f.write(_HDR.pack(INDEX_MAGIC, FORMAT_VERSION, len(payload), digest))
                f.write(memoryview(payload))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        ie = {"file": name, "bytes": os.stat(path).st_size, "digest": digest.hex(), "factory": self.factory,
              "fallback": st.fallback, "trained_rows": st.trained_rows, "next_label": int(man["next_label"]),
              "ntotal": ntotal}
        old = man.get("index")
        new = {**man, "generation": gen, "index": ie}
        key = self._commit_manifest(st, new)
        with self._rw.write():
            st.man, st.key = new, key
        if old and old.get("file"):
            self._garbage.append(old["file"])

    def _cleanup_locked(self) -> None:
        """Delete files no committed manifest references (replaced ones, leftovers of crashes)."""
        with self._scan_lock:
            if self._active_scans:
                return  # a scan in this process may still read them; next optimize removes them
            man = self._st.man
            keep = {e["file"] for e in man["entries"]}
            if man.get("index"):
                keep.add(man["index"]["file"])
            now = time.time()
            for name in os.listdir(self.root):
                p = self.root / name
                try:
                    if _FILE_RX.match(name) and name not in keep:
                        p.unlink()
                    elif name.startswith(".") and ".tmp-" in name and now - p.stat().st_mtime > 600:
                        p.unlink()  # a temp file of a crashed writer
                except OSError:
                    pass
            self._garbage.clear()

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
            allowed = st.live
            restricted = False
            if filters is not None and not filters.is_empty():
                allowed = allowed & filters.mask(st.meta)
                restricted = True
            excl = [st.pos[i] for i in dict.fromkeys(str(x) for x in exclude_ids) if i in st.pos]
            if excl:
                allowed = allowed.copy()
                allowed[excl] = False
                restricted = True
            n_allowed = int(allowed.sum()) if restricted else st.n
            kk = min(int(k), n_allowed)
            if kk == 0:
                return [[] for _ in range(nq)]
            if not restricted and not st.dead_in_index:
                D, I = self._index_search(st, q, kk, None)
            else:
                D, I = self._restricted_search(st, q, kk, allowed, n_allowed)
            # labels -> rows
            ok = I >= 0
            inside = np.zeros_like(ok)
            inside[ok] = I[ok] < len(st.label_pos)
            P = np.full(I.shape, -1, dtype=np.int64)
            P[inside] = st.label_pos[I[inside]]
            uniq = np.unique(P[P >= 0])
            rows = st.meta.take(pa.array(uniq, pa.int64())).drop_columns([LABEL]).to_pylist() if len(uniq) else []
        by_pos = dict(zip(uniq.tolist(), rows))
        out: list[list[Hit]] = []
        for qi in range(nq):
            hits = []
            for s, p in zip(D[qi].tolist(), P[qi].tolist()):
                if p >= 0:
                    r = by_pos[p]
                    hits.append(Hit(r["id"], r["path"], float(s), r))
            hits.sort(key=lambda h: -h.score)
            out.append(hits[:k])
        return out

    def _params(self, st: _State, k: int, sel):
        import faiss

        base = st.base
        if isinstance(base, faiss.IndexIVF):
            p = faiss.SearchParametersIVF()
            p.nprobe = int(base.nprobe)
        elif isinstance(base, faiss.IndexHNSW):
            p = faiss.SearchParametersHNSW()
            p.efSearch = max(self.ef_search, int(k))
        elif sel is None:
            return None
        else:
            p = faiss.SearchParameters()
        if sel is not None:
            p.sel = sel
        return p

    def _index_search(self, st: _State, q: np.ndarray, k: int, sel) -> tuple[np.ndarray, np.ndarray]:
        if sel is None and k <= 2048:
            g = self._gpu_index(st)
            if g is not None:
                with self._gpu_lock:
                    return g.search(q, k)
        params = self._params(st, k, sel)
        if params is None:
            return st.index.search(q, k)
        return st.index.search(q, k, params=params)

    def _restricted_search(self, st: _State, q: np.ndarray, k: int, allowed: np.ndarray,
                           n_allowed: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        allowed_labels = st.lab[allowed]
        if n_allowed <= self.exact_filter_rows and not isinstance(st.base, faiss.IndexFlat):
            return self._brute(st, q, k, allowed_labels)
        ntotal = st.index.ntotal
        if n_allowed <= ntotal // 2:
            inner = faiss.IDSelectorBatch(allowed_labels)
            sel = inner
        else:  # exclude the (fewer) others: disallowed live rows + labels no longer live
            disallowed = np.concatenate([st.lab[st.live & ~allowed],
                                         np.fromiter(st.dead_in_index, dtype=np.int64, count=len(st.dead_in_index))])
            inner = faiss.IDSelectorBatch(disallowed)
            sel = faiss.IDSelectorNot(inner)
        try:
            D, I = self._index_search(st, q, k, sel)
        except RuntimeError:  # this index type takes no selector: exact over the allowed rows
            return self._brute(st, q, k, allowed_labels)
        del inner
        short = (I[:, :k] < 0).any(axis=1)
        if short.any():  # approximate index missed allowed rows: answer those queries exactly
            D2, I2 = self._brute(st, q[short], k, allowed_labels)
            D, I = D.copy(), I.copy()
            D[short], I[short] = D2, I2
        return D, I

    def _brute(self, st: _State, q: np.ndarray, k: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over the vectors of ``labels`` (reconstructed from the index, in chunks)."""
        nq = q.shape[0]
        bestD = np.full((nq, 0), -np.inf, dtype=np.float32)
        bestI = np.full((nq, 0), -1, dtype=np.int64)
        for off in range(0, len(labels), _BRUTE_CHUNK):
            lab = labels[off:off + _BRUTE_CHUNK]
            try:
                v = st.index.reconstruct_batch(np.ascontiguousarray(lab))
            except RuntimeError:  # this index cannot reconstruct: read the stored vectors
                v = self._vectors_from_files(st.man, lab)
            s = q @ v.T
            D = np.concatenate([bestD, s.astype(np.float32)], axis=1)
            I = np.concatenate([bestI, np.broadcast_to(lab, s.shape)], axis=1)
            if D.shape[1] > k:
                part = np.argpartition(-D, k - 1, axis=1)[:, :k]
                D, I = np.take_along_axis(D, part, 1), np.take_along_axis(I, part, 1)
            bestD, bestI = D, I
        order = np.argsort(-bestD, axis=1, kind="stable")
        return np.take_along_axis(bestD, order, 1), np.take_along_axis(bestI, order, 1)

    def _gpu_index(self, st: _State):
        """The index cloned to GPU 0 when faiss-gpu sees a GPU and ``gpu`` is not False; else None."""
        if self.gpu is False or st.gpu_error is not None:
            return None
        if st.gpu_index is not None:
            return st.gpu_index
        with self._gpu_lock:
            if st.gpu_index is not None:
                return st.gpu_index
            try:
                import faiss

                if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() <= 0:
                    st.gpu_error = "faiss has no GPU support or sees no GPU"
                    return None
                if self._gpu_res is None:
                    self._gpu_res = faiss.StandardGpuResources()
                st.gpu_index = faiss.index_cpu_to_gpu(self._gpu_res, 0, st.index)
            except Exception as e:  # e.g. HNSW has no GPU version: search on CPU
                st.gpu_error = str(e).splitlines()[-1][:160] if str(e) else type(e).__name__
                return None
            return st.gpu_index

    @contextmanager
    def _scanning(self):
        with self._scan_lock:
            self._active_scans += 1
        try:
            yield
        finally:
            with self._scan_lock:
                self._active_scans -= 1

    def scan(self, columns: Sequence[str] | None = None, filters: Filters | None = None,
             batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
        cols = list(columns) if columns else [*META_COLUMNS, "vector"]
        check_columns(cols)
        batch_size = max(1, int(batch_size))
        with self._reading() as st:
            allowed = st.live & filters.mask(st.meta) if filters is not None and not filters.is_empty() else st.live
            positions = np.flatnonzero(allowed)
            meta, man = st.meta, st.man
            meta_cols = [c for c in cols if c != "vector"]
            if "vector" in cols:
                label_pos = np.full(len(st.label_pos), -1, dtype=np.int64)
                label_pos[st.lab[positions]] = positions
        if "vector" not in cols:
            for off in range(0, len(positions), batch_size):
                t = meta.take(pa.array(positions[off:off + batch_size], pa.int64())).select(cols).combine_chunks()
                yield from t.to_batches()
            return
        schema = pa.schema([row_schema(self.dim).field(c) for c in cols])
        pending: list[pa.Table] = []
        npend = 0
        with self._scanning():
            try:
                for lab, v in self._iter_vectors(man):
                    inside = lab < len(label_pos)
                    p = np.full(len(lab), -1, dtype=np.int64)
                    p[inside] = label_pos[lab[inside]]
                    sel = np.flatnonzero(p >= 0)
                    for off in range(0, len(sel), batch_size):
                        s = sel[off:off + batch_size]
                        t = meta.take(pa.array(p[s], pa.int64())).select(meta_cols)
                        vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v[s]).reshape(-1)), self.dim)
                        t = t.append_column(schema.field("vector"), vec).select(cols)
                        pending.append(t)
                        npend += t.num_rows
                        while npend >= batch_size:
                            allt = pa.concat_tables(pending).combine_chunks()
                            yield from allt.slice(0, batch_size).cast(schema).to_batches()
                            rest = allt.slice(batch_size)
                            pending, npend = ([rest] if rest.num_rows else []), rest.num_rows
                if npend:
                    yield from pa.concat_tables(pending).combine_chunks().cast(schema).to_batches()
            except _Missing as e:
                raise ImgragError(f"another process compacted {self.root} during the scan (file {e} is gone); "
                                  "run the command again") from e

    def get(self, ids: Sequence[str], columns: Sequence[str] | None = None) -> pa.Table:
        cols = list(columns) if columns else [*META_COLUMNS, "vector"]
        check_columns(cols)
        schema = pa.schema([row_schema(self.dim).field(c) for c in cols])
        with self._reading() as st:
            pos = [st.pos[i] for i in dict.fromkeys(str(x) for x in ids) if i in st.pos]
            if not pos:
                return schema.empty_table()
            parr = pa.array(pos, pa.int64())
            t = st.meta.take(parr).select([c for c in cols if c != "vector"])
            if "vector" not in cols:
                return t.cast(schema)
            labels = st.lab[np.asarray(pos, dtype=np.int64)]
            vecs = None
            if _exact_storage(st.base):
                vecs = st.index.reconstruct_batch(np.ascontiguousarray(labels))
            man = st.man
        if vecs is None:
            try:
                vecs = self._vectors_from_files(man, labels)
            except _Missing as e:
                raise ImgragError(f"another process compacted {self.root} meanwhile (file {e} is gone); "
                                  "run the command again") from e
        vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vecs, np.float32).reshape(-1)), self.dim)
        return t.append_column(schema.field("vector"), vec).select(cols).cast(schema)

    def _vectors_from_files(self, man: dict, labels: np.ndarray) -> np.ndarray:
        out = np.zeros((len(labels), self.dim), dtype=np.float32)
        where = {int(l): i for i, l in enumerate(labels.tolist())}
        lo, hi = int(labels.min()), int(labels.max())
        found = 0
        with self._scanning():
            for e in man["entries"]:
                if e["kind"] != "rows" or not e.get("rows") or e["max_label"] < lo or e["min_label"] > hi:
                    continue
                for lab, v in self._iter_entry_vectors(e, lo):
                    for j in np.flatnonzero(np.isin(lab, labels)):
                        out[where[int(lab[j])]] = v[j]
                        found += 1
        if found < len(labels):
            raise CorruptIndexError(f"faiss store {self.root}: vectors of {len(labels) - found} rows are missing; "
                                    "rebuild the index with --rebuild")
        return out

    def disk_size(self) -> int:
        total = 0
        for name in os.listdir(self.root):
            try:
                total += os.lstat(self.root / name).st_size
            except OSError:
                pass
        return total

    def describe(self) -> dict[str, Any]:
        with self._reading() as st:
            ie = st.man.get("index") or {}
            if st.fallback:
                why = (f"{self.factory} needs >= {self._min_train} rows to train, has {st.n}"
                       if st.n < self._min_train else f"{self.factory} will be trained by the next optimize()")
                index = f"Flat (exact search; {why})"
            else:
                index = self.factory
            d: dict[str, Any] = {"kind": self.kind, "factory": self.factory, "index": index, "rows": st.n,
                                 "exact": bool(st.fallback) or self.factory == "Flat",
                                 "files": len(st.man["entries"]), "index_vectors": int(st.index.ntotal),
                                 "index_saved": bool(ie) and ie.get("next_label") == st.man["next_label"]}
            if self._min_train:
                d["train_min_rows"] = self._min_train
                d["trained_rows"] = st.trained_rows
            if self.nlist:
                d["nprobe"] = self.nprobe
            if "HNSW" in self.factory:
                d["ef_search"] = self.ef_search
            d["gpu"] = st.gpu_index is not None
            if st.gpu_error and self.gpu is not False:
                d["gpu_note"] = st.gpu_error
            if st.note:
                d["note"] = st.note
        return d

    def close(self) -> None:
        with self._rw.write():
            if self._st is not None:
                self._st.gpu_index = None


def faiss_labels(idx) -> np.ndarray:
    import faiss

    return faiss.vector_to_array(faiss.downcast_index(idx).id_map).astype(np.int64, copy=False)


def _base(idx):
    import faiss

    return faiss.downcast_index(faiss.downcast_index(idx).index)


def _exact_storage(base) -> bool:
    """True when reconstructing a vector from the index returns it exactly (Flat storage)."""
    import faiss

    if isinstance(base, faiss.IndexFlat):
        return True
    if isinstance(base, faiss.IndexHNSW):
        return isinstance(faiss.downcast_index(base.storage), faiss.IndexFlat)
    return False
