"""Device and precision resolution, in one place (open_clip style)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgrag.retrieval.errors import ImgragError

if TYPE_CHECKING:  # pragma: no cover
    import torch

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` if available, else ``mps``, else ``cpu``; explicit names are checked."""
    if device == "cpu":
        return device  # without importing torch
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ImgragError(f"device {device!r} requested but CUDA is not available; use --device cpu or auto")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ImgragError(f"unknown device {device!r}; choose auto, cpu, cuda, cuda:N or mps")
    return device


def resolve_dtype(precision: str, device: str) -> "torch.dtype":
    """``auto`` → bf16 on CUDA GPUs that support it, else fp16 on CUDA; fp32 on CPU and MPS."""
    import torch

    if precision not in PRECISIONS:
        raise ImgragError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.startswith("cuda"):
            return torch.float16
        return torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
