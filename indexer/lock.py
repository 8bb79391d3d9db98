"""Moved: the writer lock lives in :mod:`imgrag.retrieval.locking` (the lock policy sits below the app and
indexer layers, so every writer in retrieval takes it too). Re-exported for existing imports."""

from imgrag.retrieval.locking import LOCK_NAME, IndexLock, read_holder, stale_holder, writer_lock

__all__ = ["LOCK_NAME", "IndexLock", "read_holder", "stale_holder", "writer_lock"]
