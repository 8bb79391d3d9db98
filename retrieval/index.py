"""An index directory: manifest + store + the embedder that made its vectors.

Layout of ``<index>/``::

    imgrag.json      manifest: schema version, model spec + fingerprint, dim, store kind
    lancedb/ | faiss/   the store's own files
    skipped.jsonl    files that could not be indexed, with reasons (rewritten atomically)
    index.lock       held (flock) by the one process writing the index
    index.lease      instead of index.lock on object storage: the writer's lease (see indexer/lease.py)

The manifest pins the model: opening an index with another model fails instead of mixing vectors.

The root may also be an object-storage URI (``s3://bucket/prefix``, ``gs://…``, ``az://…``): the same
files live under that prefix (:class:`~imgrag.retrieval.location.Location`), each small file written with
one atomic PUT.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgrag.retrieval.errors import CorruptIndexError, ImgragError, IndexMismatchError, IndexNotFoundError
from imgrag.retrieval.location import Location, is_uri
from imgrag.retrieval.stores import SCHEMA_VERSION, STORES, VectorStore, open_store

MANIFEST = "imgrag.json"
SKIPPED = "skipped.jsonl"


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

    def save(self, root: Path | str | Location) -> None:
        Location(root).write_bytes(MANIFEST, json.dumps(asdict(self), indent=2).encode())


class Index:
    """Opens an index directory; the store and the embedder are created lazily on first use."""

    def __init__(self, root: Path | str, manifest: Manifest, device: str = "auto", precision: str = "auto",
                 embedder=None, embedder_factory=None) -> None:
        self.location = Location(root)
        self.root = self.location.root  # a Path for a local folder, the URI string for object storage
        self.manifest = manifest
        self._device = device
        self._precision = precision
        self._store: VectorStore | None = None
        self._embedder = embedder
        # create_or_open with a factory: built and checked against the manifest on first use
        self._embedder_factory = embedder_factory

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
        """
        factory = embedder if callable(embedder) and not hasattr(embedder, "fingerprint") else None
        loc = Location(root if root is not None else default_index_dir())
        root = loc.root
        if store not in STORES:
            raise ImgragError(f"unknown store {store!r}; available: {', '.join(STORES)}")
        if loc.remote and store != "lancedb":
            raise ImgragError(f"the {store} store needs a local folder; use --store lancedb for an index on {loc.scheme}://")
        if rebuild and loc.exists(MANIFEST):
            # the manifest goes last: a crash mid-way leaves it naming the old model, so the half-deleted
            # store can never be reopened as an index of the new model (mixing vectors silently)
            for name in sorted(loc.children(), key=lambda n: n == MANIFEST):
                if name in ("index.lock", "index.lease"):
                    continue
                if loc.remote:
                    loc.delete(name)
                else:
                    child = Path(root) / name
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
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
        loc.mkdir()
        manifest = Manifest(model=embedder.model_id, dim=embedder.dim, store=store,
                            fingerprint=embedder.fingerprint(), store_options=dict(store_options or {}))
        manifest.save(root)
        return cls(root, manifest, embedder=embedder)

    # -- parts ----------------------------------------------------------------------------------
    @property
    def store(self) -> VectorStore:
        if self._store is None:
            if self.location.remote and self.manifest.store != "lancedb":
                    raise ImgragError(f"the {self.manifest.store} store cannot live on object storage ({self.root})")
            self._store = open_store(self.manifest.store, self.location.join(self.manifest.store), self.manifest.dim,
                                     **self.manifest.store_options)
        return self._store

    @property
    def embedder(self):
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
        raw = self.location.read_bytes(SKIPPED)
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
        self.location.write_bytes(SKIPPED, data.encode("utf-8", errors="surrogateescape"))

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
