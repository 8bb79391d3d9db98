"""The two contrastive losses of image–text pre-training, over a batch with a positive mask.

Both take L2-normalised image vectors ``x`` (n, d) and text vectors ``y`` (m, d) and a boolean mask
``pos`` (n, m) that is True where image i and text j belong together. With one caption per image
(``pos`` = identity) they are exactly the published losses; with class texts (many images per text,
several texts per class) they are their usual multi-positive generalisations.

* SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023): every pair is an
  independent binary decision, ``-1/n · Σ_ij log σ(z_ij · (t · x_i·y_j + b))`` with z = +1 for positives,
  -1 otherwise; t = exp(t'), initialised t' = log 10, b = -10 (paper, section 3.3).
* CLIP (Radford et al. 2021): symmetric InfoNCE, the mean of the image→text and text→image
  cross-entropies of the softmax over ``t · x·yᵀ``; with several positives per row the target is uniform
  over them (rows or columns without a positive are left out).

torch is imported inside the functions (house rule: importing imgrag stays cheap).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

SIGLIP_INIT_T = math.log(10.0)  # t' (the temperature is exp(t'))
SIGLIP_INIT_B = -10.0
CLIP_INIT_T = math.log(1 / 0.07)  # CLIP's initial temperature 0.07
LOSSES = ("siglip", "clip")


def siglip_loss(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, t_prime: torch.Tensor,
                b: torch.Tensor) -> torch.Tensor:
    """Pairwise sigmoid loss, normalised by the number of images as in the paper."""
    import torch.nn.functional as F

    logits = x @ y.T * t_prime.exp() + b
    z = pos.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(z * logits).sum() / x.shape[0]


def clip_loss(x: torch.Tensor, y: torch.Tensor, pos: torch.Tensor, t_prime: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with soft (uniform over positives) targets."""
    logits = x @ y.T * t_prime.exp()
    posf = pos.to(logits.dtype)
    return (_soft_ce(logits, posf) + _soft_ce(logits.T, posf.T)) / 2


def _soft_ce(logits: "torch.Tensor", posf: "torch.Tensor") -> "torch.Tensor":
    import torch.nn.functional as F

    has = posf.sum(dim=1) > 0
    target = posf[has] / posf[has].sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits[has], dim=1)).sum(dim=1).mean()


def init_params(loss: str) -> tuple[float, float | None]:
    """(t', b) at the start of training: b is None for CLIP (no bias)."""
    if loss == "siglip":
        return SIGLIP_INIT_T, SIGLIP_INIT_B
    if loss == "clip":
        return CLIP_INIT_T, None
    raise ValueError(f"unknown loss {loss!r}")
