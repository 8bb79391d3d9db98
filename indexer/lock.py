"""One writer per index: an advisory ``flock`` on ``<index>/index.lock``.

The kernel releases the lock when the holder dies (even on SIGKILL), so a stale lock file from a dead
process never blocks the next run; the pid written inside only serves the error message.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from imgrag.retrieval.errors import IndexLockedError

LOCK_NAME = "index.lock"


class IndexLock:
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "IndexLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            finally:
                os.close(fd)
            raise IndexLockedError(
                f"index {self.path.parent} is being updated by another imgrag process ({holder}); "
                "wait for it to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "IndexLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
