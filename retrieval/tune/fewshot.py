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


def _norm_name(name: str) -> str:
    return " ".join(name.lower().split())


def match_example_classes(folder_classes: Sequence[str], labels: Sequence[str] | None) -> tuple[list[str], list[int]]:
    """(labels, label index per example folder). Without ``labels`` the folder names are the labels;
    with them every folder must name one of the labels (case and spacing ignored): a folder that
    names none is refused rather than silently ignored."""
    if labels is None:
        return list(folder_classes), list(range(len(folder_classes)))
    by_name = {_norm_name(lab): i for i, lab in enumerate(labels)}
    unknown = [c for c in folder_classes if _norm_name(c) not in by_name]
    if unknown:
        raise BadQueryError(f"--examples folder {unknown[0]!r} names none of the labels ({', '.join(labels)}); "
                            "rename the folder or add the label")
    return list(labels), [by_name[_norm_name(c)] for c in folder_classes]


def load_examples(index, root, labels: Sequence[str] | None = None,
                  depth: int = 1) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """Example images of a folder-per-class tree (class text from the folder name, as in ``imgrag eval``):
    (labels, (n, d) example vectors, (n,) label index each, images embedded now). Examples already in
    the index use their stored vectors; the others are embedded."""
    from imgrag.retrieval.errors import ImgragError
    from imgrag.retrieval.queries.evaluate import class_words, folder_dataset
    from imgrag.retrieval.tune.data import image_vectors

    root_s = str(root)
    try:
        classes, paths, targets = folder_dataset(root_s, depth)
    except ImgragError as e:
        raise BadQueryError(f"--examples: {e}") from e
    names, to_label = match_example_classes([class_words(c) for c in classes], labels)
    vecs, keep, embedded = image_vectors(index, paths)
    if not keep:
        raise BadQueryError(f"--examples: none of the {len(paths)} images under {root_s} could be read")
    return names, vecs, np.array([to_label[targets[j]] for j in keep], np.int64), embedded
