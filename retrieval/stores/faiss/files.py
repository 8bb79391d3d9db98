"""The FAISS store's files: the manifest, the parquet entries and the saved index, each checked before use.

Every file is written under a temp name and renamed into place (:mod:`imgrag.retrieval.atomic`); the
manifest is replaced last, so a commit is whole or absent. Every file is validated before its bytes reach
faiss/arrow (sizes against the manifest, parquet magic + imgrag marker + schema, index header + blake2b
checksum), so a truncated or foreign file raises :class:`CorruptIndexError` instead of crashing the process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgrag.retrieval import atomic
from imgrag.retrieval.errors import CorruptIndexError, IndexMismatchError
from imgrag.retrieval.stores.base import META_FIELDS, row_schema, vectors_of

FORMAT = "imgrag-faiss"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCKFILE = ".write.lock"
LABEL = "_label"
INDEX_MAGIC = b"IMGRAGFX"
_HDR = struct.Struct("<8sIQ16s")  # magic, format version, payload length, blake2b-128 of payload
_PQ_MARK = b"imgrag"
_FILE_RX = re.compile(r"^(seg|meta|del)-\d+\.parquet$|^index-\d+\.faiss$")
#: temp names of writers before the shared rule of imgrag.retrieval.atomic (``.manifest.json.tmp-<pid>``):
#: still recognised so that leftovers in existing indexes are cleaned
_OLD_TMP_RX = re.compile(r"^\..+\.tmp-\d+$")
_TMP_MAX_AGE_S = 600  # a temp file this old belongs to a crashed writer, not a running one
ROW_GROUP = 8192
_PREFIX = {"rows": "seg", "meta": "meta", "del": "del"}

#: metadata row versions in memory and in ``meta-*.parquet``: the row schema without ``vector``, plus the label
META_LBL_SCHEMA = pa.schema([*META_FIELDS, pa.field(LABEL, pa.int64(), nullable=False)])


class Missing(Exception):
    """A file the manifest lists is gone (another process compacted meanwhile): re-read and retry."""


class FileLock:
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


def is_leftover_temp(name: str) -> bool:
    """A temp file of an interrupted write (current or old naming rule)."""
    return atomic.is_temp_name(name) or bool(_OLD_TMP_RX.match(name))


def new_manifest(dim: int) -> dict[str, Any]:
    return {"format": FORMAT, "version": FORMAT_VERSION, "dim": dim, "generation": 0, "next_label": 0,
            "entries": [], "index": None}


def entry_name(kind: str, gen: int) -> str:
    """File name of the entry of ``kind`` (rows/meta/del) or of the saved index (index) for generation ``gen``."""
    if kind == "index":
        return f"index-{gen:08d}.faiss"
    return f"{_PREFIX[kind]}-{gen:08d}.parquet"


def vector_array(v: np.ndarray, dim: int) -> pa.FixedSizeListArray:
    """The ``vector`` column for an (n, dim) float32 array."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(v, np.float32).reshape(-1)), dim)


class StoreFiles:
    """The folder of one FAISS store: reads and validates its files, writes them atomically.

    It also counts the scans reading entry files in this process, so that :meth:`cleanup` never deletes a
    file one of them may still open.
    """

    def __init__(self, root: Path, dim: int) -> None:
        self.root = Path(root)
        self.dim = dim
        self._scan_lock = threading.Lock()
        self._active_scans = 0

    def schema(self, kind: str) -> pa.Schema:
        if kind == "rows":
            return pa.schema([*row_schema(self.dim), pa.field(LABEL, pa.int64(), nullable=False)])
        if kind == "meta":
            return META_LBL_SCHEMA
        return pa.schema([pa.field("id", pa.string(), nullable=False)])

    # --- manifest ------------------------------------------------------------------------------
    def stat_key(self):
        """What identifies the manifest's current version (changes with every commit)."""
        try:
            s = os.stat(self.root / MANIFEST)
        except FileNotFoundError:
            return None
        return (s.st_ino, s.st_mtime_ns, s.st_size)

    def read_manifest(self) -> tuple[dict[str, Any], Any]:
        """The committed manifest (validated) and its stat key; an empty one when there is none yet."""
        p = self.root / MANIFEST
        key = self.stat_key()
        if key is None:
            return new_manifest(self.dim), None
        try:
            man = json.loads(p.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return new_manifest(self.dim), None
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

    def commit_manifest(self, man: dict[str, Any]) -> Any:
        """Replace the manifest atomically (the commit point); returns its new stat key."""
        # looked up on the module at call time: the crash tests swap in a non-atomic writer there
        atomic.atomic_write_bytes(self.root / MANIFEST, json.dumps(man, separators=(",", ":")).encode())
        return self.stat_key()

    # --- parquet entries -----------------------------------------------------------------------
    def write_parquet(self, name: str, batches: Iterator[pa.RecordBatch] | pa.Table, kind: str) -> tuple[int, int]:
        """Write an entry file atomically; returns (bytes, rows)."""
        schema = self.schema(kind).with_metadata({_PQ_MARK: f"faiss-{kind}/{FORMAT_VERSION}".encode()})
        compression = {f.name: ("NONE" if f.name == "vector" else "SNAPPY") for f in schema}
        path = self.root / name
        rows = 0
        with atomic.atomic_open(path) as f:
            with pq.ParquetWriter(f, schema, compression=compression,
                                  use_dictionary=[c for c in schema.names if c != "vector"]) as w:
                if isinstance(batches, pa.Table):
                    batches = batches.to_batches(ROW_GROUP)
                for b in batches:
                    if b.num_rows:
                        w.write_table(pa.Table.from_batches([b]).cast(schema), row_group_size=ROW_GROUP)
                        rows += b.num_rows
        return os.stat(path).st_size, rows

    def check_file(self, e: dict) -> Path:
        """The path of an entry's file after checking its name and size against the manifest."""
        name = str(e.get("file", ""))
        if not _FILE_RX.match(name):
            raise CorruptIndexError(f"faiss store manifest in {self.root} names a bad file {name!r}; rebuild with --rebuild")
        p = self.root / name
        try:
            size = os.stat(p).st_size
        except FileNotFoundError:
            raise Missing(name) from None
        if size != e.get("bytes"):
            raise CorruptIndexError(f"{p} is {size} bytes, the manifest recorded {e.get('bytes')}: the file is "
                                    "truncated or was replaced; rebuild the index with --rebuild")
        return p

    def parquet(self, e: dict, kind: str) -> pq.ParquetFile:
        """An entry's parquet file, checked: magic bytes, imgrag marker, schema and row count."""
        p = self.check_file(e)
        try:
            with open(p, "rb") as f:
                head = f.read(4)
                f.seek(-4, os.SEEK_END)
                tail = f.read(4)
        except FileNotFoundError:
            raise Missing(e["file"]) from None
        except OSError as ex:
            raise CorruptIndexError(f"{p} is unreadable ({ex}); rebuild the index with --rebuild") from ex
        if head != b"PAR1" or tail != b"PAR1":
            raise CorruptIndexError(f"{p} is not a parquet file (truncated or overwritten); rebuild the index with --rebuild")
        try:
            pf = pq.ParquetFile(p)
        except FileNotFoundError:
            raise Missing(e["file"]) from None
        except Exception as ex:
            raise CorruptIndexError(f"{p} is a damaged parquet file ({str(ex)[:160]}); rebuild the index with --rebuild") from ex
        mark = (pf.schema_arrow.metadata or {}).get(_PQ_MARK, b"").decode("utf-8", "replace")
        if mark != f"faiss-{kind}/{FORMAT_VERSION}":
            raise CorruptIndexError(f"{p} is not an imgrag faiss {kind} file (a foreign parquet file?); "
                                    "rebuild the index with --rebuild")
        sch = pf.schema_arrow
        for f in self.schema(kind):
            i = sch.get_field_index(f.name)
            if i < 0 or not sch.field(i).type.equals(f.type):
                raise CorruptIndexError(f"{p} has no column {f.name}: {f.type}; rebuild the index with --rebuild")
        if pf.metadata.num_rows != e.get("rows"):
            raise CorruptIndexError(f"{p} holds {pf.metadata.num_rows} rows, the manifest recorded {e.get('rows')}; "
                                    "rebuild the index with --rebuild")
        return pf

    def read_entry(self, e: dict) -> pa.Table:
        """An entry's metadata rows (rows/meta, with labels) or deleted ids (del)."""
        kind = e.get("kind")
        if kind not in ("rows", "meta", "del"):
            raise CorruptIndexError(f"faiss store manifest in {self.root} has an entry of unknown kind {kind!r}")
        pf = self.parquet(e, kind)
        try:
            return pf.read(columns=["id"] if kind == "del" else META_LBL_SCHEMA.names)
        except FileNotFoundError:
            raise Missing(e["file"]) from None
        except Exception as ex:
            raise CorruptIndexError(f"{self.root / e['file']} is damaged ({str(ex)[:160]}); rebuild with --rebuild") from ex

    def iter_entry_vectors(self, e: dict, min_label: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, vectors) batches of a rows entry, only labels >= ``min_label``."""
        pf = self.parquet(e, "rows")
        try:
            for b in pf.iter_batches(batch_size=ROW_GROUP, columns=[LABEL, "vector"]):
                lab = np.asarray(b.column(0).to_numpy(zero_copy_only=False), dtype=np.int64)
                v = vectors_of(b.column(1), self.dim)
                if min_label:
                    sel = lab >= min_label
                    lab, v = lab[sel], v[sel]
                if len(lab):
                    yield lab, v
        except FileNotFoundError:
            raise Missing(e["file"]) from None
        except (OSError, pa.ArrowException) as ex:
            raise CorruptIndexError(f"{self.root / e['file']} is damaged ({str(ex)[:160]}); rebuild with --rebuild") from ex

    def read_entry_vectors(self, e: dict) -> tuple[np.ndarray, np.ndarray]:
        labs, vecs = [], []
        for lab, v in self.iter_entry_vectors(e):
            labs.append(lab)
            vecs.append(v)
        if not labs:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(labs), np.concatenate(vecs)

    def iter_vectors(self, man: dict, min_label: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(labels, vectors) batches of every rows entry of ``man``, only labels >= ``min_label``."""
        for e in man["entries"]:
            if e["kind"] == "rows" and e.get("rows") and int(e.get("max_label", -1)) >= min_label:
                yield from self.iter_entry_vectors(e, min_label)

    def vectors_for(self, man: dict, labels: np.ndarray) -> np.ndarray:
        """The stored vectors of ``labels``, in that order (read from the entry files)."""
        out = np.zeros((len(labels), self.dim), dtype=np.float32)
        where = {int(l): i for i, l in enumerate(labels.tolist())}
        lo, hi = int(labels.min()), int(labels.max())
        found = 0
        with self.scanning():
            for e in man["entries"]:
                if e["kind"] != "rows" or not e.get("rows") or e["max_label"] < lo or e["min_label"] > hi:
                    continue
                for lab, v in self.iter_entry_vectors(e, lo):
                    for j in np.flatnonzero(np.isin(lab, labels)):
                        out[where[int(lab[j])]] = v[j]
                        found += 1
        if found < len(labels):
            raise CorruptIndexError(f"faiss store {self.root}: vectors of {len(labels) - found} rows are missing; "
                                    "rebuild the index with --rebuild")
        return out

    # --- the saved faiss index -----------------------------------------------------------------
    def read_index(self, ie: dict):
        """The saved faiss index of manifest entry ``ie``, after checking header, checksum and kind."""
        import faiss

        p = self.check_file(ie)
        try:
            with open(p, "rb") as f:
                buf = f.read()
        except FileNotFoundError:
            raise Missing(ie["file"]) from None
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

    def write_index(self, name: str, payload: np.ndarray) -> tuple[int, str]:
        """Write serialized faiss bytes under our header atomically; returns (bytes, digest hex)."""
        digest = hashlib.blake2b(memoryview(payload), digest_size=16).digest()
        path = self.root / name
        with atomic.atomic_open(path) as f:
            f.write(_HDR.pack(INDEX_MAGIC, FORMAT_VERSION, len(payload), digest))
            f.write(memoryview(payload))
        return os.stat(path).st_size, digest.hex()

    # --- housekeeping --------------------------------------------------------------------------
    @contextlib.contextmanager
    def scanning(self):
        """Held while entry files are read outside the writer lock (cleanup waits for the next optimize)."""
        with self._scan_lock:
            self._active_scans += 1
        try:
            yield
        finally:
            with self._scan_lock:
                self._active_scans -= 1

    def cleanup(self, man: dict) -> None:
        """Delete files ``man`` does not reference (replaced ones, leftovers of crashes)."""
        with self._scan_lock:
            if self._active_scans:
                return  # a scan in this process may still read them; next optimize removes them
            keep = {e["file"] for e in man["entries"]}
            if man.get("index"):
                keep.add(man["index"]["file"])
            now = time.time()
            for name in os.listdir(self.root):
                p = self.root / name
                try:
                    if _FILE_RX.match(name) and name not in keep:
                        p.unlink()
                    elif is_leftover_temp(name) and now - p.stat().st_mtime > _TMP_MAX_AGE_S:
                        p.unlink()  # a temp file of a crashed writer
                except OSError:
                    pass

    def disk_size(self) -> int:
        total = 0
        for name in os.listdir(self.root):
            try:
                total += os.lstat(self.root / name).st_size
            except OSError:
                pass
        return total
