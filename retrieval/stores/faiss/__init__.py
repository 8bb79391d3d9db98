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

Modules: :mod:`.files` (the files and their checks), :mod:`.state` (the entries replayed in memory),
:mod:`.ann` (the faiss index: factory rules, build, search paths), :mod:`.store` (:class:`FaissStore`).

(This package is ``imgrag.retrieval.stores.faiss``; ``import faiss`` inside it is an absolute import and
still means the faiss library.)
"""

from imgrag.retrieval.stores.faiss.files import (FORMAT, FORMAT_VERSION, INDEX_MAGIC, LABEL, LOCKFILE,
                                                 MANIFEST)
from imgrag.retrieval.stores.faiss.store import FaissStore

__all__ = ["FaissStore", "FORMAT", "FORMAT_VERSION", "INDEX_MAGIC", "LABEL", "LOCKFILE", "MANIFEST"]
