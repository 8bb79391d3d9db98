"""Decoded batches from DataLoader worker processes, in order, surviving a decoder that crashes its worker.

Decoding runs in worker processes while the model runs in the main process, so decode overlaps compute;
the loader's bounded prefetch keeps memory bounded whatever the collection size.
"""

from __future__ import annotations

import logging
import os

from imgrag.indexer.decode import DecodeDataset, DecodeResult, collate

log = logging.getLogger("imgrag.indexer")


def default_workers(device: str = "cpu") -> int:
    """Decode worker processes, 1..8.

    With the model on a GPU: one per core beyond the first (the main process feeds the GPU). With the
    model on the CPU: one per core, since the model and the decoders share the cores anyway and the OS
    balances them; on 2 cores this indexed 12-MP JPEGs 15-26% faster than one worker (BENCHMARKS.md).
    """
    cores = os.cpu_count() or 2
    return max(1, min(8, cores if str(device).startswith("cpu") else cores - 1))


CRASH_REASON = "the image decoder crashed on this file (its worker process died); not retried until the file changes"


class _Range:
    """Items ``start:stop`` of a map-style dataset (picklable, for DataLoader workers)."""

    def __init__(self, ds, start: int, stop: int) -> None:
        self.ds, self.start, self.stop = ds, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.ds[self.start + i]


#: What a DataLoader raises when a worker dies: torch's RuntimeError("DataLoader worker ... exited"), or,
#: when the worker dies while handing a batch over through a shared file descriptor, the connection error
#: (or EOF) of that hand-over.
_WORKER_DEATH = (RuntimeError, ConnectionError, EOFError)


def _worker_died(e: BaseException) -> bool:
    if isinstance(e, RuntimeError):
        return "DataLoader worker" in str(e)
    return isinstance(e, (ConnectionError, EOFError))


def decoded_batches(ds: DecodeDataset, batch_size: int, workers: int, pin_memory: bool = False,
                    collate_fn=collate):
    """Yield collated batches of ``ds`` in order, decoding in ``workers`` processes.

    A hostile file can crash a native decoder (a segfault in a codec library) and with it the worker
    process. Then the batches that were in flight are replayed one file at a time in a fresh worker,
    the file that kills it is reported with :data:`CRASH_REASON`, and decoding goes on: one such
    file never costs the run, and is not retried by the next run either (it is a recorded skip).
    """
    from torch.utils.data import DataLoader

    if workers <= 0:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate_fn)
        return
    try:  # torch raises worker deaths from a SIGCHLD handler at any point of the main thread (in the
        # middle of a commit, say); leave detection to the loader's own status check inside this loop
        from torch.utils.data._utils import signal_handling

        signal_handling._SIGCHLD_handler_set = True
    except Exception:  # noqa: BLE001  # pragma: no cover - private torch API moved
        pass
    n, start = len(ds), 0
    while start < n:
        loader = DataLoader(_Range(ds, start, n), batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate_fn, pin_memory=pin_memory, prefetch_factor=2, persistent_workers=False)
        try:
            for batch in loader:
                start += len(batch[0])
                yield batch
            return
        except _WORKER_DEATH as e:
            if not _worker_died(e):
                raise
            log.warning("a decode worker died (%s); finding the file that crashed it", e)
        window = min(n, start + (2 * workers + 1) * batch_size)  # every file that was in flight
        while start < window:
            iso = DataLoader(_Range(ds, start, window), batch_size=1, shuffle=False, num_workers=1,
                             collate_fn=collate_fn, prefetch_factor=1, persistent_workers=False)
            try:
                for batch in iso:  # one file at a time: the worker only holds the file asked for
                    start += 1
                    yield batch
            except _WORKER_DEATH as e:
                if not _worker_died(e):
                    raise
                log.warning("decoder crashed on %s", ds.work[start].path)
                yield [DecodeResult(ds.work[start], error=CRASH_REASON)], None, []
                start += 1
