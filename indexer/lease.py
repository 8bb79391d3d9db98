"""Moved: the object-storage lease lives in :mod:`imgrag.retrieval.locking` with the kernel lock and the
policy (:func:`writer_lock`). Re-exported for existing imports."""

from imgrag.retrieval.locking import DEFAULT_TTL_S, LEASE_NAME, ObjectLease, writer_lock

__all__ = ["DEFAULT_TTL_S", "LEASE_NAME", "ObjectLease", "writer_lock"]
