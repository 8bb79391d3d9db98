"""Vector stores: LanceDB (embedded default) and FAISS, behind one interface."""

from __future__ import annotations

from pathlib import Path

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.stores.base import (META_COLUMNS, SCHEMA_VERSION, Filters, Hit, VectorStore,
                                          make_rows, row_schema)

STORES = ("lancedb", "faiss")

__all__ = ["Filters", "Hit", "VectorStore", "open_store", "make_rows", "row_schema", "META_COLUMNS",
           "SCHEMA_VERSION", "STORES"]


def open_store(kind: str, root: Path, dim: int, **options) -> VectorStore:
    """Open (creating if needed) the store of ``kind`` under ``root``."""
    if kind == "lancedb":
        from imgrag.retrieval.stores.lance import LanceStore

        return LanceStore(root, dim, **options)
    if kind == "faiss":
        from imgrag.retrieval.stores.faiss import FaissStore

        return FaissStore(root, dim, **options)
    raise ImgragError(f"unknown store {kind!r}; available: {', '.join(STORES)}")
