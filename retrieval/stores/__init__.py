"""Vector stores: LanceDB (embedded default) and FAISS, behind one interface."""

from __future__ import annotations

from pathlib import Path

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.stores.base import (META_COLUMNS, SCHEMA_VERSION, Filters, Hit, VectorStore,
                                          make_rows, row_schema)

STORES = ("lancedb", "faiss")

__all__ = ["Filters", "Hit", "VectorStore", "open_store", "make_rows", "row_schema", "META_COLUMNS",
           "SCHEMA_VERSION", "STORES"]

# kind -> "module:Class", imported only when a store of that kind is opened (lancedb and faiss are heavy)
_REGISTRY = {
    "lancedb": "imgrag.retrieval.stores.lance:LanceStore",
    "faiss": "imgrag.retrieval.stores.faiss:FaissStore",
}


def open_store(kind: str, root: Path, dim: int, **options) -> VectorStore:
    """Open (creating if needed) the store of ``kind`` under ``root``."""
    target = _REGISTRY.get(kind)
    if target is None:
        raise ImgragError(f"unknown store {kind!r}; available: {', '.join(STORES)}")
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(root, dim, **options)
