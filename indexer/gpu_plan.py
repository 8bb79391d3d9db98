"""How many model replicas, images per batch and decode workers a machine can feed — one pure function.

:func:`plan_resources` takes what the machine has (visible GPUs, memory of the smallest one, CPU cores)
and gives one model replica per GPU, a batch size that GPU memory holds with room to spare, and the
decode workers the cores allow. :func:`local_defaults` applies it to ``imgrag index`` when
``--batch-size`` / ``--workers`` are not given (CUDA runs only; the CPU keeps its measured defaults);
``bench/gpu_index.py`` uses it too; :func:`detect` reads the machine. The local engine runs one model
replica per GPU (:mod:`imgrag.indexer.replicas`); ``--engine ray`` one embed actor per GPU of the cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GIB = 1024**3
#: GPU memory one image of a batch may take, all in: fp16 activations of a ViT-B/L at 224 px, its uint8
#: decode (a 2-MP JPEG at full size: 6 MB, larger ones are drafted on the CPU), the normalised input.
#: 64 MiB per image keeps ViT-L-14 at 336 px within memory; smaller models simply leave memory unused.
BYTES_PER_IMAGE = 64 * 1024**2
#: Part of GPU memory left to the model weights, the CUDA context and the allocator's slack.
RESERVED_FRACTION = 0.25
MIN_BATCH, MAX_BATCH = 32, 1024  # throughput stops growing past ~1k images per forward pass
CPU_BATCH = 32  # models on the CPU: memory, not speed, bounds the batch (retrieval/embedders/base.py)
MAX_WORKERS = 64
#: ``imgrag index`` on the CPU: images per loader batch (and forward pass) when --batch-size is not given.
#: Kept from before the plan existed: 64 images keep 2 cores busy and a batch's floats under 40 MB.
LOCAL_CPU_BATCH = 64


@dataclass(frozen=True)
class ResourcePlan:
    replicas: int  # model copies: one per GPU (1 on the CPU)
    batch_size: int  # images per forward pass of each replica
    workers: int  # decode worker processes in all
    device: str  # "cuda" or "cpu"


def plan_resources(n_gpus: int, gpu_memory_bytes: int, cores: int) -> ResourcePlan:
    """The plan for ``n_gpus`` GPUs of (at least) ``gpu_memory_bytes`` each and ``cores`` CPU cores.

    - replicas: one per GPU; no GPU → one model on the CPU;
    - batch: the power of two that ``(1 - RESERVED_FRACTION)`` of one GPU holds at
      :data:`BYTES_PER_IMAGE`, within [:data:`MIN_BATCH`, :data:`MAX_BATCH`]; CPU: :data:`CPU_BATCH`;
    - workers: every core but one per replica (that core feeds its GPU), at least one, at most
      :data:`MAX_WORKERS`; CPU: one per core (the model and the decoders share them).
    """
    cores = max(1, int(cores))
    if n_gpus <= 0 or gpu_memory_bytes <= 0:
        return ResourcePlan(replicas=1, batch_size=CPU_BATCH, workers=min(MAX_WORKERS, cores), device="cpu")
    replicas = int(n_gpus)
    fits = int(gpu_memory_bytes * (1 - RESERVED_FRACTION)) // BYTES_PER_IMAGE
    batch = MIN_BATCH
    while batch * 2 <= min(fits, MAX_BATCH):
        batch *= 2
    workers = max(1, min(MAX_WORKERS, cores - replicas))
    return ResourcePlan(replicas=replicas, batch_size=batch, workers=workers, device="cuda")


def detect() -> tuple[int, int, int]:
    """(visible GPUs, memory of the smallest in bytes, CPU cores usable by this process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        mem = min(torch.cuda.get_device_properties(i).total_memory for i in range(n)) if n else 0
    except Exception:  # noqa: BLE001 - a broken CUDA setup means "no GPU"
        n, mem = 0, 0
    return n, mem, cores


Facts = tuple[int, int, int]  # what detect() returns: (GPUs, memory of the smallest, cores)


def local_defaults(batch_size: int | None, workers: int | None, devices: list[str],
                   facts: Facts | None = None) -> tuple[int, int]:
    """``(batch size per replica, decode workers)`` of a local ``imgrag index`` run on ``devices``.

    Given values win. On CUDA the rest comes from :func:`plan_resources` with one replica per CUDA
    device of ``devices`` and ``facts`` (default :func:`detect`); elsewhere batch
    :data:`LOCAL_CPU_BATCH` and the loader's default workers (one per core on the CPU).
    """
    cuda = [d for d in devices if str(d).startswith("cuda")]
    if not cuda:
        from imgrag.indexer.loader import default_workers

        return (int(batch_size or LOCAL_CPU_BATCH),
                int(workers) if workers is not None else default_workers(devices[0] if devices else "cpu"))
    _n, mem, cores = facts if facts is not None else detect()
    plan = plan_resources(len(cuda), mem, cores)
    return int(batch_size or plan.batch_size), int(workers) if workers is not None else plan.workers


def default_batch_size(device: str, facts: Facts | None = None) -> int:
    """Images per forward pass for a model on ``device`` when ``--batch-size`` is not given (the same
    figure :func:`local_defaults` gives the loader, so a loader batch is one forward pass)."""
    return local_defaults(None, 0, [str(device)], facts)[0]
