"""One writer per index: a POSIX record lock (``fcntl.lockf``) on ``<index>/index.lock``.

Why a POSIX lock and not ``flock``: a ``flock`` belongs to the open file description, which every
forked child (the indexer's DataLoader decode workers) shares. After a SIGKILL of the indexer its
orphaned workers would keep the index locked for seconds. A POSIX lock belongs to the *process*: it
is not inherited by ``fork`` and the kernel drops it the moment the holder dies, so a lock left by a
dead process never blocks the next run. The pid written inside the file only serves messages; a
file naming a dead process is a stale lock and is simply taken over (and its text replaced).

POSIX locks do not exclude threads or handles of the same process, so a process-wide registry
refuses a second :class:`IndexLock` on the same index from within one process too — except that a
lock taken with ``outer=True`` may be taken again by the same thread: the CLI takes it before loading
a model or wiping an index for ``--rebuild``, and ``build_index`` takes it again inside.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import threading
from pathlib import Path

from imgrag.retrieval.errors import IndexLockedError

LOCK_NAME = "index.lock"
log = logging.getLogger("imgrag.indexer")

_held: dict[str, list] = {}  # lock files held by this process (real path) -> [thread ident, depth, outer]
_held_guard = threading.Lock()


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


class IndexLock:
    def __init__(self, root: Path, outer: bool = False) -> None:
        self.path = Path(root) / LOCK_NAME
        self.outer = outer  # the same thread may take this lock again while it is held
        self._fd: int | None = None
        self._key: str | None = None
        self._nested = False
        #: pid named in a stale lock file that :meth:`acquire` took over (None if the file was clean)
        self.cleared_stale: int | None = None

    def _refuse(self, holder: str) -> IndexLockedError:
        return IndexLockedError(
            f"index {self.path.parent} is being updated by another imgrag process ({holder or 'unknown'}); "
            "wait for it to finish or stop it")

    def acquire(self) -> "IndexLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        with _held_guard:
            if key in _held:
                if not (_held[key][2] and _held[key][0] == threading.get_ident()):
                    raise self._refuse(f"pid {os.getpid()} on {socket.gethostname()}, this process")
                _held[key][1] += 1  # the holding thread again: re-entrant
                self._key, self._nested = key, True
                return self
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
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
            _held[key] = [threading.get_ident(), 1, self.outer]
            self._fd, self._key = fd, key
        return self

    def release(self) -> None:
        with _held_guard:
            if self._nested:
                if self._key in _held:
                    _held[self._key][1] -= 1
                self._nested, self._key = False, None
                return
            if self._fd is not None:
                try:
                    os.ftruncate(self._fd, 0)
                    fcntl.lockf(self._fd, fcntl.LOCK_UN)
                finally:
                    os.close(self._fd)
                    _held.pop(self._key, None)
                    self._fd = self._key = None

    def __enter__(self) -> "IndexLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
