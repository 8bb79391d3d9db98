"""Calibrated zero-shot scores: correct label-prior and hub bias (pure NumPy).

A zero-shot classifier scores image i against label c by cosine similarity s_ic. Some labels sit
closer to *every* image than others (their text embedding is a "hub", or the label is simply a more
generic word), so raw top-1 sends most images to them: on the demo samples "musical instrument" took
26 of 71 images. Each method here looks at the similarities of a *reference* set of images (the
collection being classified, or a sample of the index) and fits one per-label affine correction
``s' = (s - shift_c) / scale_c``, which can then be applied to any image, including a single upload:

* ``dzscore`` — double z-score: remove each image's mean similarity over the labels, then standardise each
  label's column as ``zscore`` does (each image's mean is added back, so scores stay in cosine units). The
  per-image mean is how close an image sits to *any* text (busy clip art, photos of text); left in, it
  widens every label's spread and hides the label bias. Best on the 71-label openclipart split (+48%
  relative top-1 on the whole, imbalanced split against zscore's +26%); with few labels (11, 17) the mean
  is mostly those labels and zscore does slightly better (docs/quality.md), hence ``auto`` below.
* ``zscore``  — standardise each label's column: ``(s - mean_c) / std_c`` (mapped back to cosine units
  with the average mean and std, so the model's logit scale still gives a sensible softmax).
* ``center``  — subtract each label's mean only.
* ``csls``    — CSLS hub correction (Conneau et al. 2018): subtract half the mean similarity of the label
  to its k nearest reference images.
* ``balance`` — Sinkhorn-style prior matching: per-label logit offsets that make the mean softmax over
  the reference uniform across labels (assumes roughly balanced classes).

``none`` leaves the scores alone. ``auto`` (:func:`auto_method`) is ``dzscore`` with
:data:`MANY_LABELS` labels or more and ``zscore`` below, picked by measurement (docs/quality.md): an
image's mean over many labels measures how close it is to any text, over a few it is mostly those labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from imgrag.retrieval.errors import BadQueryError

METHODS = ("dzscore", "zscore", "center", "csls", "balance")
#: ``auto`` below MANY_LABELS labels (chosen by measurement, docs/quality.md, bench/calibration.py: best or
#: near-best top-1 on the openclipart splits and the samples with the lite model)
DEFAULT_METHOD = "zscore"
#: ``auto`` from this many labels: ``dzscore`` (random label subsets of the openclipart eval split: it beats
#: zscore in 19 of 20 draws of 48 labels, 14 of 20 at 32, and loses slightly below 24; +48% relative top-1
#: on the whole 71-class split against zscore's +26%)
MANY_LABELS = 40
MANY_LABELS_METHOD = "dzscore"
CHOICES = ("auto", "none", *METHODS)
#: fewer reference images than this give unstable per-label statistics: scores stay raw
MIN_REFERENCE = 8
CSLS_K = 10


@dataclass(frozen=True)
class Calibration:
    """A fitted per-label correction ``s' = (s - shift) / scale`` (arrays of shape (C,))."""

    method: str
    shift: np.ndarray
    scale: np.ndarray
    n_reference: int
    #: remove each image's mean over the labels before the correction and add it back after (``dzscore``)
    center_rows: bool = False

    def apply(self, sims: np.ndarray) -> np.ndarray:
        s = np.asarray(sims, np.float64)
        if not self.center_rows:
            return ((s - self.shift) / self.scale).astype(np.float32)
        r = _row_means(s)
        return ((s - r - self.shift) / self.scale + r).astype(np.float32)


def _row_means(s: np.ndarray) -> np.ndarray:
    """Each image's mean similarity over the labels (last axis), kept as a column for broadcasting."""
    return np.asarray(s, np.float64).mean(axis=-1, keepdims=True)


def resolve_method(name: str | None) -> str:
    """``auto``/None → ``auto`` (decided per label count by :func:`fit`); anything else must be ``none`` or
    one of :data:`METHODS`."""
    if name is None or name == "auto":
        return "auto"
    if name not in CHOICES:
        raise BadQueryError(f"unknown calibration {name!r}: use one of {', '.join(CHOICES)}")
    return name


def auto_method(n_labels: int) -> str:
    """The method ``auto`` means for ``n_labels`` labels."""
    return MANY_LABELS_METHOD if n_labels >= MANY_LABELS else DEFAULT_METHOD


def zscore_params(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(sims, np.float64)
    mu, sd = s.mean(axis=0), s.std(axis=0)
    sd = np.maximum(sd, 1e-6)  # a label every image scores identically: leave its spread alone
    scale = sd / sd.mean()
    return mu - mu.mean() * scale, scale


def center_params(sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = np.asarray(sims, np.float64).mean(axis=0)
    return mu - mu.mean(), np.ones_like(mu)


def hub_scores(sims: np.ndarray, k: int = CSLS_K) -> np.ndarray:
    """(C,): each label's mean similarity to its k most similar reference images."""
    s = np.asarray(sims, np.float64)
    k = max(1, min(k, s.shape[0]))
    return np.sort(s, axis=0)[-k:].mean(axis=0)


def csls_params(sims: np.ndarray, k: int = CSLS_K) -> tuple[np.ndarray, np.ndarray]:
    # CSLS = 2 s - r_c - r_i; halved to stay in cosine units, r_i is the same for every label of an image
    r = hub_scores(sims, k)
    return (r - r.mean()) / 2.0, np.ones_like(r)


def balance_offsets(sims: np.ndarray, logit_scale: float, iters: int = 100, tol: float = 1e-6) -> np.ndarray:
    """(C,) logit offsets b with mean_i softmax(logit_scale * s_i + b) ≈ 1/C for every label."""
    logits = np.asarray(sims, np.float64) * logit_scale
    n, c = logits.shape
    b = np.zeros(c)
    for _ in range(iters):
        z = logits + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        col = p.mean(axis=0)
        step = np.log(np.maximum(col, 1e-300) * c)
        b -= step
        if np.abs(step).max() < tol:
            break
    return b - b.mean()


def balance_params(sims: np.ndarray, logit_scale: float) -> tuple[np.ndarray, np.ndarray]:
    b = balance_offsets(sims, logit_scale)
    return -b / logit_scale, np.ones_like(b)


def fit(method: str, reference_sims: np.ndarray, logit_scale: float = 100.0) -> Calibration | None:
    """Fit ``method`` on (n, C) reference similarities; None for ``none`` or too small a reference."""
    method = resolve_method(method)
    ref = np.asarray(reference_sims)
    if method == "none" or ref.ndim != 2 or ref.shape[0] < MIN_REFERENCE:
        return None
    if method == "auto":
        method = auto_method(ref.shape[1])
    center_rows = method == "dzscore"  # zscore of the row-centred similarities (apply centres likewise)
    if center_rows:
        ref = ref - _row_means(ref)
    if method in ("zscore", "dzscore"):
        shift, scale = zscore_params(ref)
    elif method == "center":
        shift, scale = center_params(ref)
    elif method == "csls":
        shift, scale = csls_params(ref)
    else:
        shift, scale = balance_params(ref, logit_scale)
    return Calibration(method, shift, scale, int(ref.shape[0]), center_rows=center_rows)


class ReservoirSample:
    """A uniform sample of at most ``cap`` rows from a stream of (n, C) batches (seeded: reproducible).

    Whole-index classify fits its calibration on this in a first pass over the store, so memory stays
    bounded (cap × C floats) however large the index is; below ``cap`` rows it is the whole collection.
    """

    def __init__(self, cap: int = 20000, seed: int = 0) -> None:
        self.cap = cap
        self.seen = 0
        self._rows: np.ndarray | None = None
        self._rng = np.random.default_rng(seed)

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, np.float32)
        if self._rows is None:
            self._rows = np.empty((self.cap, rows.shape[1]), np.float32)
        n_fill = max(0, min(len(rows), self.cap - self.seen))
        self._rows[self.seen : self.seen + n_fill] = rows[:n_fill]
        rest = rows[n_fill:]
        if len(rest):
            pos = self.seen + n_fill + np.arange(len(rest))  # 0-based stream position of each row
            j = self._rng.integers(0, pos + 1)
            keep = j < self.cap
            self._rows[j[keep]] = rest[keep]
        self.seen += len(rows)

    @property
    def rows(self) -> np.ndarray:
        if self._rows is None:
            return np.zeros((0, 0), np.float32)
        return self._rows[: min(self.seen, self.cap)]
