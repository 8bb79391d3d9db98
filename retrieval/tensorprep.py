"""Model preprocessing as tensor ops: uint8 (3, H, W) images → one normalised float batch, on any device.

The PIL path runs each model's own transform on a PIL image in a decode worker. This module does the
same steps on uint8 tensors (on the GPU when the model is there, so resizing and normalising cost no
CPU time; on the CPU with the very same calls, so CI exercises it):

1. the long-image guard: images longer than ``max_aspect`` : 1 are cropped around the centre first
   (:func:`~imgrag.retrieval.embedders.base.crop_extreme_aspect`, same integer arithmetic);
2. resize with antialiasing: ``shortest`` (short side to ``resize_size``, torchvision's size rule),
   ``squash`` (to ``size`` exactly) or ``longest`` (open_clip's ``ResizeKeepRatio(longest=1)``);
3. centre crop (``shortest``/``squash``) or centre crop-or-pad with ``fill`` (``longest``);
4. ``/255``, then ``(x - mean) / std``.

PIL and torch's antialiased bicubic use the same kernel (a = -0.5) and both round to uint8 after the
resize, so vectors match the PIL path to cosine ≥ 0.999 (tests/test_tensor_preprocess.py). Images
of equal size are resized in one call (a camera's photos usually are), the rest one at a time.
Pure tensor code: no PIL, no file access; picklable, so a CPU run can apply it in decode workers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class TensorPrep:
    """A model's eval preprocessing for uint8 tensors; ``prep(images)`` → (n, 3, *size) float32."""

    size: tuple[int, int]  # output (height, width)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"  # or "bilinear"
    resize_mode: str = "shortest"
    resize_size: int | None = None  # shortest: the short side before the crop (lite: 256); None → size
    max_aspect: float | None = 2.0  # long-image guard before a "shortest" resize; None: off
    fill: int = 0  # "longest": padding value (open_clip's fill_color)

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in ("bicubic", "bilinear"):
            raise ValueError(f"interpolation must be bicubic or bilinear, got {self.interpolation!r}")

    def __call__(self, images: "Sequence[torch.Tensor] | torch.Tensor") -> "torch.Tensor":
        import torch

        if isinstance(images, torch.Tensor) and images.ndim == 3:
            images = [images]
        images = [_check(im) for im in images]
        if not images:
            return torch.zeros((0, 3, *self.size), dtype=torch.float32)
        device = images[0].device
        out = torch.empty((len(images), 3, *self.size), dtype=torch.uint8, device=device)
        groups: dict[tuple[int, int], list[int]] = {}
        guarded = [self._guard(im) for im in images]
        for i, im in enumerate(guarded):
            groups.setdefault(tuple(im.shape[-2:]), []).append(i)
        for idx in groups.values():
            batch = torch.stack([guarded[i] for i in idx]) if len(idx) > 1 else guarded[idx[0]].unsqueeze(0)
            out[idx] = self._resize_crop(batch)
        x = out.float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        return x.sub_(mean).div_(std)

    # ------------------------------------------------------------------ steps
    def _guard(self, im: "torch.Tensor") -> "torch.Tensor":
        if self.resize_mode != "shortest" or self.max_aspect is None:
            return im
        return crop_aspect(im, self.max_aspect)

    def _mode(self):
        from torchvision.transforms import InterpolationMode

        return InterpolationMode.BILINEAR if self.interpolation == "bilinear" else InterpolationMode.BICUBIC

    def _resize_crop(self, batch: "torch.Tensor") -> "torch.Tensor":
        """(b, 3, H, W) uint8 of one size → (b, 3, *size) uint8."""
        import torchvision.transforms.v2.functional as F

        h, w = batch.shape[-2:]
        th, tw = self.size
        if self.resize_mode == "squash":
            return F.resize(batch, [th, tw], interpolation=self._mode(), antialias=True)
        if self.resize_mode == "longest":
            ratio = max(h / th, w / tw)  # open_clip ResizeKeepRatio(longest=1).get_params
            batch = F.resize(batch, [round(h / ratio), round(w / ratio)], interpolation=self._mode(), antialias=True)
            return center_crop_or_pad(batch, (th, tw), self.fill)
        if th == tw:  # torchvision Resize(int): short side → size, long side int(size * long / short)
            batch = F.resize(batch, [self.resize_size or th], interpolation=self._mode(), antialias=True)
        else:  # open_clip: ResizeKeepRatio(size) for a non-square input (always bicubic)
            from torchvision.transforms import InterpolationMode

            ratio = min(h / th, w / tw)
            batch = F.resize(batch, [round(h / ratio), round(w / ratio)], interpolation=InterpolationMode.BICUBIC,
                             antialias=True)
        return F.center_crop(batch, [th, tw])


def _check(im: "torch.Tensor") -> "torch.Tensor":
    import torch

    if not isinstance(im, torch.Tensor) or im.ndim != 3 or im.shape[0] != 3 or im.dtype != torch.uint8:
        shape = tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__
        raise ValueError(f"expected uint8 images of shape (3, H, W), got {shape}")
    return im


def crop_aspect(im: "torch.Tensor", max_aspect: float) -> "torch.Tensor":
    """Centre crop of a (…, H, W) tensor longer than ``max_aspect`` : 1 to that ratio — the tensor twin
    of :func:`~imgrag.retrieval.embedders.base.crop_extreme_aspect` (same rounding, same box)."""
    h, w = int(im.shape[-2]), int(im.shape[-1])
    short, long = min(w, h), max(w, h)
    if short > 0 and long > max_aspect * short:
        keep = int(round(max_aspect * short))
        if w > h:
            left = (w - keep) // 2
            return im[..., :, left : left + keep]
        top = (h - keep) // 2
        return im[..., top : top + keep, :]
    return im


def bound_aspect(im: "torch.Tensor", max_aspect: int) -> "torch.Tensor":
    """The tensor twin of :func:`imgrag.indexer.decode.bound_aspect` (integer aspect bound, floor offsets)."""
    h, w = int(im.shape[-2]), int(im.shape[-1])
    if w > max_aspect * h:
        keep = max_aspect * h
        left = (w - keep) // 2
        return im[..., :, left : left + keep]
    if h > max_aspect * w:
        keep = max_aspect * w
        top = (h - keep) // 2
        return im[..., top : top + keep, :]
    return im


def center_crop_or_pad(batch: "torch.Tensor", size: tuple[int, int], fill: int = 0) -> "torch.Tensor":
    """open_clip's ``center_crop_or_pad`` on a (b, 3, H, W) batch: pad with ``fill`` up to ``size``, then
    crop the centre (torchvision's rounding)."""
    import torchvision.transforms.v2.functional as F

    th, tw = size
    h, w = batch.shape[-2:]
    if tw > w or th > h:
        pad = [(tw - w) // 2 if tw > w else 0, (th - h) // 2 if th > h else 0,
               (tw - w + 1) // 2 if tw > w else 0, (th - h + 1) // 2 if th > h else 0]
        batch = F.pad(batch, pad, fill=fill)
    return F.center_crop(batch, [th, tw])


def openclip_prep(preprocess_cfg: dict) -> TensorPrep:
    """The :class:`TensorPrep` of an open_clip model's ``visual.preprocess_cfg`` (eval transform of
    ``open_clip.transform.image_transform`` plus imgrag's 2:1 guard for ``shortest``)."""
    size = preprocess_cfg.get("size", 224)
    size = (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[-1]))
    mean = preprocess_cfg.get("mean") or (0.48145466, 0.4578275, 0.40821073)
    std = preprocess_cfg.get("std") or (0.26862954, 0.26130258, 0.27577711)
    mean = tuple(float(m) for m in (mean if isinstance(mean, (list, tuple)) else (mean,) * 3))
    std = tuple(float(s) for s in (std if isinstance(std, (list, tuple)) else (std,) * 3))
    interp = preprocess_cfg.get("interpolation") or "bicubic"
    fill = preprocess_cfg.get("fill_color", 0) or 0
    return TensorPrep(size=size, mean=mean, std=std, interpolation="bilinear" if interp == "bilinear" else "bicubic",
                      resize_mode=preprocess_cfg.get("resize_mode") or "shortest", fill=int(fill))
