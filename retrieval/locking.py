"""One writer per index: the lock every write takes, whoever calls it (CLI, web UI or Python).

**Policy.** Every library call that changes an index takes its writer lock itself: indexing and pruning
(``build_index``, ``build_index_ray``), creating an index or a rebuild's draft (``Index.create_or_open``),
the rebuild's switch and garbage collection (``Index.publish`` / ``collect_garbage``), the skip list
(``Index.write_skipped``), label write-back (``classify_index(write=True)``) and the tuned adapter
(``tune_index``, ``save_adapter``, ``reset_adapter``). A second writer — another process, or another thread
of this one — fails at once with :class:`IndexLockedError` before it changes anything; it never waits.
Readers take no lock (LanceDB versions and the FAISS manifest give them a consistent state). Writes made
directly through ``index.store`` (``upsert``, ``delete``, ``update_columns``, ``optimize``, ``commit_staged``)
take it too, each for its own call (``retrieval/index.py: _guard_writes``); ``with index.writing():`` around
a series of them holds it once for all.

**Re-entrancy.** A lock taken with ``outer=True`` (``Index.writing()``, and every library writer) may be
taken again by the *same thread* while it is held: ``imgrag index`` locks before loading a model or making
a draft, ``build_index`` locks again inside, and ``publish`` inside that. Another thread is refused, and
so is anyone while a plain (``outer=False``) lock is held.

Two guards, one registry of what this process holds:

- a local folder: :class:`IndexLock`, a POSIX record lock (``fcntl.lockf``) on ``<index>/index.lock``.
  Not ``flock``: a ``flock`` belongs to the open file description, which every forked child (the indexer's
  DataLoader decode workers) shares, so after a SIGKILL of the indexer its orphaned workers would keep
  the index locked. A POSIX lock belongs to the *process*: not inherited by ``fork``, dropped by the kernel
  the moment the holder dies. The pid written in the file only serves messages; a file naming a dead
  process is a stale lock and is simply taken over.
- object storage (``s3://``, ``gs://``, ``az://``): :class:`ObjectLease`, a small JSON object
  ``<index>/index.lease`` naming the writer and when its lease expires. Taking it is a create-if-absent PUT
  (S3 ``If-None-Match: *``; needs boto3); an expired lease (its writer died) is taken over with ``If-Match``
  on its ETag, so two writers racing for it cannot both win. The holder renews it every ``ttl/3`` seconds
  and deletes it when done. On stores without conditional writes it is best effort (write, read back).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrag.retrieval.errors import IndexLockedError
from imgrag.retrieval.location import Location, is_uri

LOCK_NAME = "index.lock"
LEASE_NAME = "index.lease"
DEFAULT_TTL_S = 120.0
log = logging.getLogger("imgrag.locking")


@dataclass
class _Hold:
    thread: int
    depth: int
    outer: bool
    guard: "_Guard"


_held: dict[str, _Hold] = {}  # what this process holds: registry key -> holder
_held_guard = threading.Lock()


def _me() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


class _Guard:
    """The process-wide part: a second acquire in this process is refused, or nests (``outer``)."""

    def __init__(self, outer: bool) -> None:
        self.outer = outer
        self._key: str | None = None
        self._nested_in: _Guard | None = None  # the holder, when this acquire nested in it
        self._holding = False

    # the kind-specific part
    def _registry_key(self) -> str: raise NotImplementedError
    def _take(self) -> None: raise NotImplementedError
    def _give_back(self) -> None: raise NotImplementedError
    def _refuse(self, holder: str) -> IndexLockedError: raise NotImplementedError

    def acquire(self) -> "_Guard":
        key = self._registry_key()
        with _held_guard:
            hold = _held.get(key)
            if hold is not None:
                if not (hold.outer and hold.thread == threading.get_ident()):
                    raise self._refuse(f"{_me()}, this process")
                hold.depth += 1  # the holding thread again: re-entrant
                self._key, self._nested_in = key, hold.guard
                return self
            _held[key] = _Hold(threading.get_ident(), 1, self.outer, self)  # reserved while we take it
        try:
            self._take()
        except BaseException:
            with _held_guard:
                _held.pop(key, None)
            raise
        self._key, self._holding = key, True
        return self

    def release(self) -> None:
        if self._nested_in is not None:
            with _held_guard:
                hold = _held.get(self._key)
                if hold is not None:
                    hold.depth -= 1
            self._nested_in = self._key = None
            return
        if not self._holding:
            return
        try:
            self._give_back()
        finally:
            with _held_guard:
                _held.pop(self._key, None)
            self._holding, self._key = False, None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def held_here(root: Path | str) -> bool:
    """True when this process holds the writer lock of the index at ``root``."""
    with _held_guard:
        return (f"lease:{Location(root).root}" if is_uri(str(root)) else
                os.path.realpath(Path(root) / LOCK_NAME)) in _held


# ------------------------------------------------------------------------------------------------
# a local folder: kernel lock
# ------------------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_holder(path: Path) -> str:
    """The text the current (or last) holder wrote: ``"pid N on HOST"``, or ``""``."""
    try:
        return Path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def stale_holder(text: str) -> int | None:
    """The pid named in a lock file's text when that process is gone on this host, else None."""
    parts = text.split()
    if len(parts) >= 4 and parts[0] == "pid" and parts[2] == "on" and parts[1].isdigit():
        if parts[3] == socket.gethostname() and not _pid_alive(int(parts[1])):
            return int(parts[1])
    return None


class IndexLock(_Guard):
    """The writer lock of an index in a local folder."""

    def __init__(self, root: Path | str, outer: bool = False) -> None:
        super().__init__(outer)
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None
        #: pid named in a stale lock file that :meth:`acquire` took over (None if the file was clean)
        self.cleared_stale: int | None = None

    def _registry_key(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.path.realpath(self.path)

    def _refuse(self, holder: str) -> IndexLockedError:
        return IndexLockedError(
            f"index {self.path.parent} is being updated by another imgrag process ({holder or 'unknown'}); "
            "wait for it to finish or stop it")

    def _take(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            finally:
                os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise self._refuse(holder) from None
            raise
        previous = os.pread(fd, 200, 0).decode(errors="replace").strip()
        self.cleared_stale = stale_holder(previous)
        if self.cleared_stale is not None:
            log.info("cleared a stale lock on %s left by dead process %d", self.path.parent, self.cleared_stale)
        os.ftruncate(fd, 0)
        os.pwrite(fd, _me().encode(), 0)
        self._fd = fd

    def _give_back(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


# ------------------------------------------------------------------------------------------------
# object storage: a lease object
# ------------------------------------------------------------------------------------------------
class ObjectLease(_Guard):
    """The writer lease of an index on object storage."""

    def __init__(self, root: str | Location, ttl_s: float | None = None, outer: bool = False) -> None:
        super().__init__(outer)
        self.location = Location(root)
        self.ttl_s = float(ttl_s if ttl_s is not None else os.environ.get("IMGRAG_LEASE_TTL_S", DEFAULT_TTL_S))
        self.owner = uuid.uuid4().hex
        self.holder = _me()
        self._lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        """Set when another writer took the lease while we held it (we stop renewing)."""
        return self._nested_in.lost if isinstance(self._nested_in, ObjectLease) else self._lost

    def _registry_key(self) -> str:
        return f"lease:{self.location.root}"

    def _refuse(self, holder: str) -> IndexLockedError:
        return IndexLockedError(f"index {self.location.root} is being updated by another imgrag process "
                                f"({holder or 'unknown'}); wait for it to finish or stop it")

    def _body(self) -> bytes:
        now = time.time()
        return json.dumps({"owner": self.owner, "holder": self.holder, "renewed_at": now,
                           "expires_at": now + self.ttl_s}).encode()

    def read(self) -> dict[str, Any] | None:
        raw = self.location.read_bytes(LEASE_NAME)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return {}  # unreadable: treated as expired

    def _take(self) -> None:
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
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew, name="imgrag-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                cur = self.read() or {}
                if cur.get("owner") != self.owner:
                    self._lost = True
                    log.error("the writer lease on %s was taken by %s; stop this indexer", self.location.root,
                              cur.get("holder", "another process"))
                    return
                self.location.write_bytes(LEASE_NAME, self._body())
            except Exception as e:  # noqa: BLE001 - a failed renewal is retried; the lease is long
                log.warning("could not renew the writer lease on %s: %s", self.location.root, e)

    def _give_back(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        try:
            if (self.read() or {}).get("owner") == self.owner:
                self.location.delete(LEASE_NAME)
        except Exception as e:  # noqa: BLE001 - it expires anyway
            log.warning("could not release the writer lease on %s: %s", self.location.root, e)


def writer_lock(root: Path | str | Location, outer: bool = False) -> IndexLock | ObjectLease:
    """The one-writer guard for the index at ``root``: a kernel lock on a local folder, a lease on object
    storage. ``outer=True``: the same thread may take it again while it holds it (see the module doc)."""
    root = root.root if isinstance(root, Location) else root
    if is_uri(str(root)):
        return ObjectLease(root, outer=outer)
    return IndexLock(Path(root), outer=outer)
