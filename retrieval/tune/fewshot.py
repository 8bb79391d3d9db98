"""Few-shot classes (Tip-Adapter style, training-free): mix each class's text prototype with the mean of a
few example images of that class.

``w_c = normalise((1 - alpha) · text_c + alpha · mean(examples_c))``. With no examples for a class its text
prototype is used alone. Tip-Adapter (Zhang et al., ECCV 2022) adds a cache of every example; the mean
prototype is its cheapest form and needs no hyper-parameter besides alpha (measured in bench/tune_eval.py).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from imgrag.retrieval.errors import BadQueryError

DEFAULT_ALPHA = 0.75  # best mean top-1 over 1-8 shots on openclipart (bench/tune_eval.py); 0.5 only wins at 1 shot


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def image_prototypes(vectors: np.ndarray, targets: Sequence[int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, d) normalised mean example vector per class and a (C,) mask of the classes that have examples."""
    vectors = np.asarray(vectors, np.float32)
    t = np.asarray(targets, np.int64)
    if len(t) != len(vectors):
        raise BadQueryError(f"{len(vectors)} example vectors but {len(t)} class indices")
    protos = np.zeros((n_classes, vectors.shape[1]), np.float32)
    np.add.at(protos, t, vectors)
    has = np.bincount(t, minlength=n_classes) > 0
    return _l2(protos), has


def mix_prototypes(text_protos: np.ndarray, vectors: np.ndarray, targets: Sequence[int],
                   alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """(C, d) class vectors from text prototypes and example images (``alpha`` = weight of the images)."""
    if not 0.0 <= alpha <= 1.0:
        raise BadQueryError(f"alpha must be between 0 and 1, got {alpha}")
    text_protos = _l2(np.asarray(text_protos, np.float32))
    img, has = image_prototypes(vectors, targets, len(text_protos))
    mixed = text_protos.copy()
    mixed[has] = (1 - alpha) * text_protos[has] + alpha * img[has]
    return _l2(mixed).astype(np.float32)
