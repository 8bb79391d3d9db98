"""Background jobs for the web UI: one writing job (indexing, whole-index classification) at a time in a
daemon thread, with a status the page polls (done/total, rate, ETA)."""

from __future__ import annotations

import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from imgrag.retrieval.errors import ImgragError

log = logging.getLogger("imgrag.ui")


@dataclass
class JobStatus:
    kind: str = ""  # "index" | "classify"
    state: str = "idle"  # idle | running | done | failed
    title: str = ""
    done: int = 0
    total: int = 0
    started: float = 0.0
    finished: float = 0.0
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        end = self.finished or time.time()
        return max(0.0, end - self.started) if self.started else 0.0

    @property
    def rate(self) -> float:
        e = self.elapsed
        return self.done / e if e > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        r = self.rate
        if self.state != "running" or r <= 0 or self.total <= 0:
            return None
        return max(0.0, (self.total - self.done) / r)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else (1.0 if self.state == "done" else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state, "title": self.title, "done": self.done,
                "total": self.total, "rate": round(self.rate, 2), "eta_s": self.eta_s,
                "elapsed_s": round(self.elapsed, 2), "message": self.message, "detail": self.detail}


class JobRunner:
    """Runs one background job at a time in a daemon thread; its status is polled by the UI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status = JobStatus()
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        with self._lock:
            return self.status.state == "running"

    def start(self, kind: str, title: str, fn: Callable[[JobStatus], str]) -> JobStatus:
        """Start ``fn(status)`` (it updates ``status.done/total`` and returns a summary message)."""
        with self._lock:
            if self.status.state == "running":
                raise ImgragError(f"a background job is already running ({self.status.title}); "
                                  "wait for it to finish")
            st = JobStatus(kind=kind, state="running", title=title, started=time.time())
            self.status = st

        def run() -> None:
            try:
                msg = fn(st)
                st.message = msg
                st.state = "done"
            except ImgragError as e:
                st.message = str(e)
                st.state = "failed"
            except Exception as e:  # noqa: BLE001 - reported in the UI as one line, logged in full
                log.error("background job %s failed:\n%s", title, traceback.format_exc())
                st.message = f"internal error: {type(e).__name__}: {e}"
                st.state = "failed"
            finally:
                st.finished = time.time()

        self._thread = threading.Thread(target=run, name=f"imgrag-{kind}", daemon=True)
        self._thread.start()
        return st

    def wait(self, timeout: float | None = None) -> JobStatus:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.status


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"
