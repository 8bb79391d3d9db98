"""An index directory: manifest + store + the embedder that made its vectors.

Layout of ``<index>/``::

    imgrag.json      manifest: schema version, model spec + fingerprint, dim, store kind, data folder
    lancedb/ | faiss/   the store's own files (a ``data: ""`` manifest: every index until its first --rebuild)
    skipped.jsonl    files that could not be indexed, with reasons (rewritten atomically)
    gen-<id>/        instead of the two above once the index was rebuilt: ``data: "gen-<id>"`` names it;
                     ``<store kind>/`` + ``skipped.jsonl`` inside (+ ``draft.json`` while it is being built)
    index.lock       held (POSIX lock) by the one process writing the index (retrieval/locking.py)
    index.lease      instead of index.lock on object storage: the writer's lease (retrieval/locking.py)

The manifest pins the model: opening an index with another model fails instead of mixing vectors.

A rebuild is built beside the index it replaces (:mod:`imgrag.retrieval.generations`): the new generation
folder gets its own draft manifest and skipped list, searches keep reading the old one, and the switch is
one atomic replace of ``imgrag.json`` once the new generation is complete; the old generation is deleted
after that. A failed, interrupted or killed rebuild leaves the old index intact; the next ``--rebuild``
with the same model and store resumes the draft, anything else discards it.

The root may also be an object-storage URI (``s3://bucket/prefix``, ``gs://…``, ``az://…``): the same
files live under that prefix (:class:`~imgrag.retrieval.location.Location`), each small file written with
one atomic PUT.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgrag.retrieval import generations
from imgrag.retrieval.errors import CorruptIndexError, ImgragError, IndexMismatchError, IndexNotFoundError
from imgrag.retrieval.location import Location, is_uri
from imgrag.retrieval.locking import writer_lock
from imgrag.retrieval.stores import SCHEMA_VERSION, STORES, VectorStore, open_store

MANIFEST = generations.MANIFEST
SKIPPED = "skipped.jsonl"
#: on object storage, how often an open Index re-reads imgrag.json to follow a rebuild's switch
REMOTE_RECHECK_S = 5.0
log = logging.getLogger("imgrag.index")


def default_index_dir() -> Path | str:
    """``$IMGRAG_INDEX`` (a folder or an ``s3://``-style URI), else ``$XDG_DATA_HOME/imgrag/index``
    (``~/.local/share/imgrag/index``)."""
    env = os.environ.get("IMGRAG_INDEX")
    if env:
        return env.rstrip("/") if is_uri(env) else Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "imgrag" / "index"


@dataclass
class Manifest:
    model: str
    dim: int
    store: str
    fingerprint: dict[str, Any]
    schema_version: int = SCHEMA_VERSION
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    store_options: dict[str, Any] = field(default_factory=dict)
    #: the folder holding the store and the skipped list ("" = the index root itself: indexes never rebuilt)
    data: str = ""

    @classmethod
    def load(cls, root: Path | str | Location) -> "Manifest":
        loc = Location(root)
        p = loc.join(MANIFEST)
        raw = loc.read_bytes(MANIFEST)
        if raw is None:
            raise IndexNotFoundError(f"no imgrag index at {root}; build one with `imgrag index PATH --index {root}`")
        try:
            d = json.loads(raw.decode())
            m = cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})
        except (ValueError, TypeError, KeyError) as e:
            raise CorruptIndexError(f"index manifest {p} is unreadable ({e}); rebuild the index") from e
        if m.schema_version != SCHEMA_VERSION:
            raise IndexMismatchError(
                f"index {root} has schema version {m.schema_version}, this imgrag reads version {SCHEMA_VERSION}; "
                f"rebuild it with `imgrag index ... --index {root} --rebuild`")
        return m

    @staticmethod
    def exists(root: Path | str | Location) -> bool:
        return Location(root).exists(MANIFEST)

    def save(self, root: Path | str | Location, name: str = MANIFEST) -> None:
        Location(root).write_bytes(name, self.to_bytes())

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode()

    def same_build(self, other: "Manifest") -> bool:
        """True when ``other`` makes the same vectors into the same kind of store (a draft to resume)."""
        return (self.model, self.fingerprint, self.dim, self.store, self.store_options, self.schema_version) == (
            other.model, other.fingerprint, other.dim, other.store, other.store_options, other.schema_version)


class Index:
    """Opens an index directory; the store and the embedder are created lazily on first use.

    A reader whose index is rebuilt meanwhile re-opens on the new manifest at its next use of
    :attr:`store` or :attr:`embedder` (one ``stat`` of ``imgrag.json`` per use locally, a read at most every
    :data:`REMOTE_RECHECK_S` seconds on object storage). An embedder the caller passed in that does not
    match the new model raises :class:`IndexMismatchError`; one the index loaded itself is reloaded.
    """

    def __init__(self, root: Path | str, manifest: Manifest, device: str = "auto", precision: str = "auto",
                 embedder=None, embedder_factory=None, draft: bool = False) -> None:
        self.location = Location(root)
        self.root = self.location.root  # a Path for a local folder, the URI string for object storage
        self.manifest = manifest
        #: True for a rebuild not yet switched to: :meth:`publish` makes it the index
        self.draft = draft
        self._device = device
        self._precision = precision
        self._store: VectorStore | None = None
        self._embedder = embedder
        self._embedder_given = embedder is not None
        # create_or_open with a factory: built and checked against the manifest on first use
        self._embedder_factory = embedder_factory
        self._stamp = None if draft else self._manifest_stamp()

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def open(cls, root: Path | str | None = None, device: str = "auto", precision: str = "auto",
             embedder=None) -> "Index":
        root = Location(root if root is not None else default_index_dir()).root
        manifest = Manifest.load(root)
        if embedder is not None:
            check_compatible(manifest, embedder, root)
        return cls(root, manifest, device=device, precision=precision, embedder=embedder)

    @classmethod
    def create_or_open(cls, root: Path | str | None, embedder, store: str = "lancedb",
                       store_options: dict[str, Any] | None = None, rebuild: bool = False) -> "Index":
        """Open the index at ``root`` checking it matches ``embedder``; create it if absent.

        ``embedder`` is an embedder or a zero-argument callable that builds one. With a callable and an
        existing index, the embedder is built and checked against the manifest only when something
        needs embedding (:attr:`embedder`), so a re-run with nothing new never loads the model.

        ``rebuild=True`` on an existing index deletes nothing: it returns a *draft* index (a new
        generation beside the published one, or the unfinished draft of an earlier rebuild with the
        same model and store, resumed); the indexer publishes it when it is complete. The model is
        built and the store opened (its options checked) before anything is written.
        """
        factory = embedder if callable(embedder) and not hasattr(embedder, "fingerprint") else None
        loc = Location(root if root is not None else default_index_dir())
        root = loc.root
        if store not in STORES:
            raise ImgragError(f"unknown store {store!r}; available: {', '.join(STORES)}")
        if loc.remote and store != "lancedb":
            raise ImgragError(f"the {store} store needs a local folder; use --store lancedb for an index on {loc.scheme}://")
        options = dict(store_options or {})
        if rebuild and loc.exists(MANIFEST):
            emb = factory() if factory is not None else embedder  # the model loads before the lock is taken
            with writer_lock(root, outer=True):  # a draft is written (or an unfinished one resumed)
                return cls._draft(loc, emb, store, options)
        if loc.exists(MANIFEST):
            manifest = Manifest.load(root)
            if manifest.store != store:
                raise IndexMismatchError(
                    f"index {root} uses the {manifest.store} store, not {store}; "
                    f"use --store {manifest.store}, another --index, or --rebuild")
            if factory is not None:
                return cls(root, manifest, embedder_factory=factory)
            check_compatible(manifest, embedder, root)
            return cls(root, manifest, embedder=embedder)
        if factory is not None:
            embedder = factory()
        with writer_lock(root, outer=True):
            if loc.exists(MANIFEST):  # another process created it meanwhile: open it, checked
                return cls.create_or_open(root, embedder, store, store_options)
            return cls._create(loc, embedder, store, options)

    @classmethod
    def _create(cls, loc: Location, embedder, store: str, options: dict[str, Any]) -> "Index":
        """A new, empty index (the caller holds the writer lock)."""
        root = loc.root
        loc.mkdir()
        manifest = Manifest(model=embedder.model_id, dim=embedder.dim, store=store,
                            fingerprint=embedder.fingerprint(), store_options=options)
        index = cls(root, manifest, embedder=embedder, draft=True)
        index.store  # noqa: B018 - bad store options fail here, before the manifest names the index
        manifest.save(root)
        index.draft, index._stamp = False, index._manifest_stamp()
        return index

    @classmethod
    def _draft(cls, loc: Location, embedder, store: str, options: dict[str, Any]) -> "Index":
        """The generation a rebuild writes into: an unfinished one with the same settings, or a new one."""
        want = Manifest(model=embedder.model_id, dim=embedder.dim, store=store, fingerprint=embedder.fingerprint(),
                        store_options=options)
        published = generations.published_data(loc)
        for name in generations.generation_folders(loc):
            d = generations.read_draft(loc, name)
            if name == published or d is None:
                continue
            try:
                have = Manifest(**{k: d[k] for k in Manifest.__dataclass_fields__ if k in d})
            except TypeError:
                continue
            if have.same_build(want) and have.data == name:
                log.info("resuming the unfinished rebuild in %s", loc.join(name))
                return cls(loc.root, have, embedder=embedder, draft=True)
        want.data = generations.new_name()
        index = cls(loc.root, want, embedder=embedder, draft=True)
        try:
            index.store  # noqa: B018 - bad store options fail here, before the draft manifest exists
        except BaseException:
            generations.remove(loc, want.data)
            raise
        want.save(index.data_location, generations.DRAFT)
        return index

    # -- writing --------------------------------------------------------------------------------
    def writing(self):
        """``with index.writing():`` — hold this index's writer lock (re-entrant on this thread): every
        library writer takes it itself; hold it around direct ``index.store`` writes or a series of writes.
        Raises :class:`IndexLockedError` at once when another process or thread holds it."""
        return writer_lock(self.root, outer=True)

    # -- generations ----------------------------------------------------------------------------
    @property
    def data_location(self) -> Location:
        """Where the store and the skipped list of this index's generation live."""
        return Location(self.location.join(self.manifest.data)) if self.manifest.data else self.location

    def publish(self) -> list[str]:
        """Make a complete rebuild the index: one atomic replace of ``imgrag.json`` (the switch), then the
        old generation is deleted, under the writer lock. Returns :meth:`collect_garbage`'s lines."""
        if not self.draft:
            return []
        with self.writing():
            self.manifest.save(self.location)  # the switch: readers see the old manifest or the new one
            self.draft, self._stamp = False, self._manifest_stamp()
            return self.collect_garbage()

    def collect_garbage(self) -> list[str]:
        """Delete what no generation in use needs: older generations, unfinished rebuilds other than this
        draft, temp files, an adapter trained for another model; under the writer lock.
        Returns one line per unfinished rebuild discarded (for the user)."""
        with self.writing():
            published = generations.published_data(self.location)
            if published is None:  # no readable manifest: nothing is known to be garbage
                return []
            said = generations.collect(self.location, published, self.manifest.data if self.draft else None)
            if not self.draft:
                self._drop_foreign_adapter()
            return said

    def _drop_foreign_adapter(self) -> None:
        from imgrag.retrieval.tune.adapter import ADAPTER_FILE, load_adapter

        if not self.location.exists(ADAPTER_FILE):
            return
        try:
            load_adapter(self)
        except (IndexMismatchError, CorruptIndexError):  # trained on a generation of another model
            self.location.delete(ADAPTER_FILE)

    def _manifest_stamp(self) -> Any:
        if self.location.local:
            try:
                st = os.stat(Path(self.root) / MANIFEST)
            except OSError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        return time.monotonic()

    def _follow_switch(self) -> None:
        """Re-open on the published manifest when a rebuild switched the index since we looked."""
        if self.draft:
            return
        if self.location.local:
            stamp = self._manifest_stamp()
            if stamp is None or stamp == self._stamp:
                return
        else:
            if self._stamp is not None and time.monotonic() - self._stamp < REMOTE_RECHECK_S:
                return
            stamp = time.monotonic()
        manifest = Manifest.load(self.root)
        self._stamp = stamp
        if manifest == self.manifest:
            return
        same_model = (manifest.model, manifest.fingerprint, manifest.dim) == (
            self.manifest.model, self.manifest.fingerprint, self.manifest.dim)
        if not same_model and self._embedder is not None:
            if self._embedder_given:
                raise IndexMismatchError(
                    f"index {self.root} was rebuilt with model {manifest.model!r} while open; open it again with "
                    "that model")
            self._embedder = None
        if self._store is not None and hasattr(self._store, "close"):
            self._store.close()
        self._store = None
        self.manifest = manifest

    # -- parts ----------------------------------------------------------------------------------
    @property
    def store(self) -> VectorStore:
        self._follow_switch()
        if self._store is None:
            if self.location.remote and self.manifest.store != "lancedb":
                raise ImgragError(f"the {self.manifest.store} store cannot live on object storage ({self.root})")
            store = open_store(self.manifest.store, self.data_location.join(self.manifest.store),
                               self.manifest.dim, **self.manifest.store_options)
            self._store = _guard_writes(store, self.writing)
        return self._store

    @property
    def embedder(self):
        self._follow_switch()
        if self._embedder is None:
            if self._embedder_factory is not None:
                emb = self._embedder_factory()
                check_compatible(self.manifest, emb, self.root)
                self._embedder = emb
            else:
                from imgrag.retrieval.embedders import load_embedder

                self._embedder = load_embedder(self.manifest.model, device=self._device, precision=self._precision)
        return self._embedder

    # -- skipped files --------------------------------------------------------------------------
    def skipped(self) -> list[dict[str, Any]]:
        """Files that could not be indexed: ``{path, reason, size, mtime_ns}``."""
        raw = self.data_location.read_bytes(SKIPPED)
        if raw is None:
            return []
        out = []
        for line in raw.decode("utf-8", errors="replace").splitlines():
            if line.strip():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out

    def write_skipped(self, records: list[dict[str, Any]]) -> None:
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        with self.writing():
            self.data_location.write_bytes(SKIPPED, data.encode("utf-8", errors="surrogateescape"))

    def info(self) -> dict[str, Any]:
        size = self.location.size()
        return {"index": str(self.root), "model": self.manifest.model, "dim": self.manifest.dim,
                "store": self.manifest.store, "items": self.store.count(), "skipped": len(self.skipped()),
                "disk_bytes": size, "schema_version": self.manifest.schema_version,
                "created_at": self.manifest.created_at, **{f"store_{k}": v for k, v in self.store.describe().items()
                                                          if k != "kind"}}


def check_compatible(manifest: Manifest, embedder, root: Path) -> None:
    """Refuse to mix vectors of different models or preprocessing in one index."""
    if embedder.model_id != manifest.model:
        raise IndexMismatchError(
            f"index {root} was built with model {manifest.model!r}, not {embedder.model_id!r}; "
            f"use --model {manifest.model}, another --index, or --rebuild to re-embed everything")
    fp = embedder.fingerprint()
    if fp != manifest.fingerprint or embedder.dim != manifest.dim:
        raise IndexMismatchError(
            f"index {root} was built with model {manifest.model!r} but different weights or preprocessing "
            f"({manifest.fingerprint} vs {fp}); use another --index or --rebuild")


#: the store methods that change an index; through :attr:`Index.store` each takes the writer lock
WRITE_METHODS = ("upsert", "delete", "update_columns", "optimize", "commit_staged")


def _guard_writes(store: VectorStore, lock) -> VectorStore:
    """Make every write through ``store`` take the index's writer lock (``lock()``: :meth:`Index.writing`),
    so a Python caller who writes to ``index.store`` directly cannot write beside a running indexer. A caller
    that already holds the lock on this thread (every library writer, ``with index.writing():``) nests in it
    at the cost of a dictionary lookup; anyone else takes it for the one call, or gets IndexLockedError."""
    import functools

    for name in WRITE_METHODS:
        method = getattr(store, name)

        @functools.wraps(method)
        def guarded(*args, _method=method, **kwargs):
            with lock():
                return _method(*args, **kwargs)

        setattr(store, name, guarded)
    return store
