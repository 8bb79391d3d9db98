"""One writer per index on object storage: a lease object, ``<index>/index.lease``.

A local index is guarded by a kernel lock (:mod:`imgrag.indexer.lock`); object stores have no locks, so an
index on ``s3://`` (``gs://``, ``az://``) is guarded by a small JSON object naming the writer and when its
lease expires:

- Taking it is a *create-if-absent* PUT (S3 ``If-None-Match: *``; needs boto3, which the ``s3`` extra
  installs). A lease whose expiry has passed (its writer died) is taken over with ``If-Match`` on its ETag,
  so two writers racing for a dead writer's lease cannot both win.
- The holder renews it every ``ttl/3`` seconds from a background thread and deletes it when done.
- On stores without conditional writes (or S3 without boto3) it is best effort: write, then read back.

Readers never look at the lease: Lance commits are versioned, so any number of ``imgrag search``/``serve``
processes read a consistent version while the one writer appends. The rule that matters is *one writer
per index*; the lease enforces it for imgrag processes whose clocks agree within the TTL.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path

from imgrag.retrieval.errors import IndexLockedError
from imgrag.retrieval.location import Location, is_uri

LEASE_NAME = "index.lease"
DEFAULT_TTL_S = 120.0
log = logging.getLogger("imgrag.indexer")


class ObjectLease:
    """Context manager holding the writer lease of an index on object storage."""

    def __init__(self, root: str | Location, ttl_s: float | None = None) -> None:
        self.location = Location(root)
        self.ttl_s = float(ttl_s if ttl_s is not None else os.environ.get("IMGRAG_LEASE_TTL_S", DEFAULT_TTL_S))
        self.owner = uuid.uuid4().hex
        self.holder = f"pid {os.getpid()} on {socket.gethostname()}"
        self.lost = False  #: set when another writer took the lease while we held it (we stop renewing)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "holder": self.holder, "renewed_at": now,
                           "expires_at": now + self.ttl_s}).encode()

    def read(self) -> dict | None:
        raw = self.location.read_bytes(LEASE_NAME)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {}  # unreadable: treated as expired

    def acquire(self) -> "ObjectLease":
        loc = self.location
        if not loc.create_exclusive(LEASE_NAME, self._body()):
            cur = self.read() or {}
            if cur.get("owner") != self.owner and float(cur.get("expires_at") or 0) > time.time():
                left = float(cur["expires_at"]) - time.time()
                raise IndexLockedError(
                    f"index {loc.root} is being updated by another imgrag process ({cur.get('holder', 'unknown')}); "
                    f"its lease expires in {left:.0f}s unless renewed: wait for it to finish or stop it")
            etag = loc.etag(LEASE_NAME)
            if etag is not None:
                if not loc.create_exclusive(LEASE_NAME, self._body(), if_match=etag):
                    raise IndexLockedError(f"index {loc.root}: another imgrag process took over the expired "
                                           "writer lease first; wait for it to finish")
            else:
                loc.write_bytes(LEASE_NAME, self._body())
                if (self.read() or {}).get("owner") != self.owner:
                    raise IndexLockedError(f"index {loc.root}: another imgrag process took the writer lease first")
            log.info("took over an expired writer lease on %s (%s)", loc.root, cur.get("holder", "unknown"))
        self._thread = threading.Thread(target=self._renew, name="imgrag-lease", daemon=True)
        self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                cur = self.read() or {}
                if cur.get("owner") != self.owner:
                    self.lost = True
                    log.error("the writer lease on %s was taken by %s; stop this indexer", self.location.root,
                              cur.get("holder", "another process"))
                    return
                self.location.write_bytes(LEASE_NAME, self._body())
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; the lease is long
                log.warning("could not renew the writer lease on %s: %s", self.location.root, e)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            if (self.read() or {}).get("owner") == self.owner:
                self.location.delete(LEASE_NAME)
        except Exception as e:  # noqa: BLE001 - it expires anyway
            log.warning("could not release the writer lease on %s: %s", self.location.root, e)

    def __enter__(self) -> "ObjectLease":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def writer_lock(root: Path | str):
    """The one-writer guard for an index: a kernel lock on a local folder, a lease on object storage."""
    if is_uri(root):
        return ObjectLease(root)
    from imgrag.indexer.lock import IndexLock

    return IndexLock(Path(root))
