"""One model replica per device for the local engine, fed round-robin, harvested in order.

The local engine's main thread reads decoded batches, keeps the run's bookkeeping and commits. With
several devices (every visible GPU, or ``--devices cuda:0,cuda:1`` / ``cpu,cpu``) each device gets its
own :class:`~imgrag.retrieval.embedders.base.Embedder` and its own thread: batch *i* goes to replica
*i mod n*, and results come back in submission order (:meth:`ReplicaPool.run`). torch releases the GIL
while a model runs, so the replicas compute at once while the writer stays single: the commit order
and row bookkeeping are exactly those of one replica. With one replica nothing is threaded.

An exception in a replica's thread comes back to the main thread as :class:`ReplicaError` when its
batch's turn comes; batches queued behind it are cancelled, and nothing of that batch or any later
one reaches the committer (the store keeps its last whole commit).
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from imgrag.retrieval.errors import ImgragError

log = logging.getLogger("imgrag.indexer")

J = TypeVar("J")
R = TypeVar("R")

#: Batches in flight per replica: one computing, one queued (keeps each device busy between harvests
#: while memory stays bounded by the loader's prefetch plus this).
DEPTH = 2


class ReplicaError(ImgragError):
    """A model replica failed on a batch; the message names its device and the cause."""


def parse_devices(text: str) -> tuple[str, ...]:
    """``--devices`` → device names: ``all`` (every visible GPU) or a comma list such as ``cuda:0,cuda:1``
    or ``cpu,cpu`` (one replica per entry). Checked without importing torch."""
    items = tuple(s.strip() for s in str(text).split(",") if s.strip())
    if not items:
        raise ImgragError("--devices needs a device list such as cuda:0,cuda:1 or cpu,cpu, or 'all'")
    if items == ("all",):
        return items
    for d in items:
        kind, _, num = d.partition(":")
        if kind not in ("cpu", "cuda", "mps") or (num and (kind != "cuda" or not num.isdigit())):
            raise ImgragError(f"--devices: unknown device {d!r}; use cpu, cuda, cuda:N or mps (or 'all')")
    return items


def gpu_count() -> int:
    """Visible CUDA GPUs (0 when torch has no CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_devices(requested: Sequence[str] | None, model_device: str,
                    count: Callable[[], int] = gpu_count) -> list[str]:
    """The devices to run replicas on.

    - ``requested`` given: those (``("all",)`` → ``cuda:0 … cuda:N-1``), each checked against ``count()``;
    - else a model on plain ``cuda`` (``--device auto`` or ``cuda`` on a GPU machine): every visible GPU;
    - else the model's own device (``cuda:1``, ``cpu``, ``mps``: one replica, as asked).
    """
    model_device = str(model_device)
    if requested:
        if tuple(requested) == ("all",):
            n = count()
            if n == 0:
                raise ImgragError("--devices all: no CUDA GPU is visible; use --devices cpu or leave it out")
            return [f"cuda:{i}" for i in range(n)]
        n = None
        for d in requested:
            if d.startswith("cuda"):
                n = count() if n is None else n
                if n == 0 or int(d.partition(":")[2] or 0) >= n:
                    raise ImgragError(f"--devices: {d} is not visible here ({n} CUDA GPU(s)); "
                                      "check CUDA_VISIBLE_DEVICES or the list")
        return list(requested)
    if model_device == "cuda":
        n = count()
        if n > 1:
            return [f"cuda:{i}" for i in range(n)]
    return [model_device]


def same_device(a: str, b: str) -> bool:
    """``cuda`` is ``cuda:0`` (torch's default device) for this purpose."""
    norm = lambda d: "cuda:0" if str(d) == "cuda" else str(d)  # noqa: E731
    return norm(a) == norm(b)


def build_replicas(primary: Any, devices: Sequence[str], make: Callable[[str], Any]) -> list[Any]:
    """One embedder per entry of ``devices``: ``primary`` (already loaded) for the first entry on its own
    device, ``make(device)`` for every other one. Models load here, one after another, in this thread
    (concurrent first loads would race in the model libraries' caches)."""
    out: list[Any] = []
    used = False
    for d in devices:
        if not used and same_device(d, getattr(primary, "device", "cpu")):
            out.append(primary)
            used = True
            continue
        rep = make(d)
        rep.image_transform()  # loads the weights now, not in the replica's thread
        out.append(rep)
    return out


def precision_of(emb: Any) -> str:
    """The precision an embedder was asked for (``auto`` when it does not say), to build its siblings."""
    p = getattr(emb, "_precision", None)
    if isinstance(p, str):
        return p
    name = str(getattr(emb, "dtype", "")).replace("torch.", "")
    return {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(name, "auto")


class ReplicaPool:
    """``work(i, job)`` run for each job on replica ``i`` (round-robin), one thread per replica.

    Use as a context manager: leaving it cancels queued jobs and waits for running ones, so no thread
    outlives the run (a KeyboardInterrupt in the main thread lands here too).
    """

    def __init__(self, devices: Sequence[str], work: Callable[[int, Any], Any], depth: int = DEPTH) -> None:
        self.devices = [str(d) for d in devices]
        self.work = work
        self.depth = max(1, int(depth))
        n = len(self.devices)
        self._pools = [ThreadPoolExecutor(1, thread_name_prefix=f"imgrag-replica-{i}") for i in range(n)] \
            if n > 1 else []
        self._pending: deque[tuple[Any, int, Future]] = deque()

    def __enter__(self) -> "ReplicaPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self._pending:
            self._pending.popleft()[2].cancel()
        for p in self._pools:
            p.shutdown(wait=True, cancel_futures=True)

    def run(self, jobs: Iterable[J]) -> Iterator[tuple[J, Any]]:
        """``(job, work result)`` for every job, in the order the jobs came."""
        if not self._pools:  # one replica: inline, exactly the single-model loop
            for job in jobs:
                yield job, self.work(0, job)
            return
        n = len(self._pools)
        for k, job in enumerate(jobs):
            i = k % n
            self._pending.append((job, i, self._pools[i].submit(self.work, i, job)))
            while self._pending and (len(self._pending) >= self.depth * n or self._pending[0][2].done()):
                yield self._harvest()
        while self._pending:
            yield self._harvest()

    def _harvest(self) -> tuple[Any, Any]:
        job, i, fut = self._pending[0]
        try:
            out = fut.result()
        except Exception as e:
            self.close()
            raise ReplicaError(f"the model replica on {self.devices[i]} (replica {i + 1} of {len(self.devices)}) "
                               f"failed: {type(e).__name__}: {e}; nothing of this batch or later ones was "
                               "committed") from e
        self._pending.popleft()
        return job, out
