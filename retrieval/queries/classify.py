"""Zero-shot classification with prompt templates (open_clip style, pure functions).

A class vector is the normalised mean of the embeddings of its label in every template; image
vectors are scored against class vectors by cosine similarity times the model's logit scale, then a
softmax over labels (or, for sigmoid-loss models such as SigLIP, an independent sigmoid with the
model's logit bias).

Calibration (``queries/calibration.py``, on by default): before the softmax each label's similarities
are corrected for label-prior and hub bias with statistics of a reference set of images: the collection
itself for :func:`classify_index`, a random sample of the index (:func:`reference_vectors`) for single
images and search results.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from imgrag.retrieval.embedders.base import l2_normalize
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries.calibration import Calibration, ReservoirSample, fit, resolve_method
from imgrag.retrieval.stores.base import Filters, vectors_of

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.embedders.base import Embedder
    from imgrag.retrieval.index import Index

TEMPLATE_SETS = ("simple", "openai", "photo", "none")
DEFAULT_TEMPLATES = "simple"
#: index vectors sampled as the calibration reference for single images / search results
REFERENCE_SIZE = 512
#: below this many index vectors, the bundled reference images (retrieval/reference/) are added
MIN_INDEX_REFERENCE = 64


def load_templates(spec: str | Sequence[str] | None = None) -> list[str]:
    """A named set (``simple``, ``openai``, ``photo``, ``none``), a file with one template per line
    (``#`` comments), or a list of format strings. Each template must contain ``{}`` once."""
    if spec is None:
        spec = DEFAULT_TEMPLATES
    if isinstance(spec, str):
        if spec in TEMPLATE_SETS:
            text = resources.files("imgrag.retrieval").joinpath(f"templates/{spec}.txt").read_text()
        else:
            p = Path(spec).expanduser()
            if not p.is_file():
                raise BadQueryError(f"templates {spec!r} not found: give a file or one of {', '.join(TEMPLATE_SETS)}")
            text = p.read_text(encoding="utf-8")
        templates = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    else:
        templates = [t for t in spec if t.strip()]
    if not templates:
        raise BadQueryError("no prompt templates given")
    for t in templates:
        if t.count("{}") != 1:
            raise BadQueryError(f"template {t!r} must contain '{{}}' exactly once (where the label goes)")
    return templates


def parse_labels(labels: str | Iterable[str]) -> list[str]:
    """Comma- or newline-separated labels (or a list); blanks dropped; duplicates refused."""
    if isinstance(labels, str):
        sep = "\n" if "\n" in labels else ","
        items = [x.strip() for x in labels.split(sep)]
    else:
        items = [str(x).strip() for x in labels]
    items = [x for x in items if x]
    if len(items) < 2:
        raise BadQueryError("give at least two labels to choose between")
    dup = {x for x in items if items.count(x) > 1}
    if dup:
        raise BadQueryError(f"duplicate labels: {', '.join(sorted(dup))}")
    return items


def class_vectors(embedder: "Embedder", labels: Sequence[str], templates: Sequence[str]) -> np.ndarray:
    """(C, d): per label, the mean of its template embeddings, re-normalised."""
    texts = [t.format(label) for label in labels for t in templates]
    emb = embedder.embed_texts(texts).reshape(len(labels), len(templates), -1)
    return l2_normalize(l2_normalize(emb).mean(axis=1))


def scores_to_probs(sims: np.ndarray, logit_scale: float, logit_bias: float | None) -> np.ndarray:
    """(n, C) cosine similarities → probabilities: softmax, or sigmoid for SigLIP-style models."""
    logits = sims.astype(np.float64) * logit_scale
    if logit_bias is not None:
        return (1.0 / (1.0 + np.exp(-(logits + logit_bias)))).astype(np.float32)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Prediction:
    """Top labels of one image, best first. ``label`` is None when no label passed its threshold."""

    label: str | None
    score: float
    top: list[tuple[str, float]]


class ZeroShotClassifier:
    """Class vectors computed once; classify vectors, images, search hits or a whole index.

    ``calibration`` is a method of ``queries/calibration.py`` (``auto`` = the measured default,
    ``none`` = raw scores). The fitted correction is passed to the predict methods; without one they
    score raw.
    """

    def __init__(self, embedder: "Embedder", labels: str | Iterable[str],
                 templates: str | Sequence[str] | None = None,
                 thresholds: dict[str, float] | None = None, calibration: str | None = "auto") -> None:
        self.embedder = embedder
        self.labels = parse_labels(labels)
        self.templates = load_templates(templates)
        self.calibration = resolve_method(calibration)
        self.thresholds = dict(thresholds or {})
        unknown = set(self.thresholds) - set(self.labels)
        if unknown:
            raise BadQueryError(f"thresholds for unknown labels: {', '.join(sorted(unknown))}")
        self.weights = class_vectors(embedder, self.labels, self.templates)

    def similarities(self, vectors: np.ndarray) -> np.ndarray:
        return np.asarray(vectors, dtype=np.float32) @ self.weights.T

    def fit_calibration(self, reference_vectors: np.ndarray) -> Calibration | None:
        """This classifier's calibration fitted on (n, d) reference image vectors (None: stay raw)."""
        if self.calibration == "none" or len(reference_vectors) == 0:
            return None
        return fit(self.calibration, self.similarities(reference_vectors), self.embedder.logit_scale)

    def calibration_for(self, index: "Index") -> Calibration | None:
        """Fitted on a random sample of the index (single images, search results); an index with
        fewer than :data:`MIN_INDEX_REFERENCE` vectors is topped up with the bundled reference."""
        if self.calibration == "none":
            return None
        ref = reference_vectors(index)
        if len(ref) < MIN_INDEX_REFERENCE:
            ref = np.concatenate([ref.reshape(-1, self.weights.shape[1]), bundled_reference(self.embedder)])
        return self.fit_calibration(ref)

    def probabilities(self, vectors: np.ndarray, calibration: Calibration | None = None) -> np.ndarray:
        """(n, d) image vectors → (n, C) probabilities (of the calibrated scores when given)."""
        sims = self.similarities(vectors)
        if calibration is not None:
            sims = calibration.apply(sims)
        return scores_to_probs(sims, self.embedder.logit_scale, self.embedder.logit_bias)

    def predict_vectors(self, vectors: np.ndarray, top_n: int = 3,
                        calibration: Calibration | None = None) -> list[Prediction]:
        probs = self.probabilities(vectors, calibration)
        out = []
        order = np.argsort(-probs, axis=1, kind="stable")
        for p, o in zip(probs, order):
            top = [(self.labels[j], float(p[j])) for j in o[:top_n]]
            best_label, best = self.labels[o[0]], float(p[o[0]])
            if best < self.thresholds.get(best_label, 0.0):
                out.append(Prediction(None, best, top))
            else:
                out.append(Prediction(best_label, best, top))
        return out

    def predict_images(self, images, top_n: int = 3, calibration: Calibration | None = None) -> list[Prediction]:
        return self.predict_vectors(self.embedder.embed_images(images), top_n, calibration)


_REFERENCE_CACHE: OrderedDict[tuple, np.ndarray] = OrderedDict()
_REFERENCE_LOCK = threading.Lock()


def bundled_reference(embedder: "Embedder") -> np.ndarray:
    """(48, d): the bundled reference images (public-domain clip art, retrieval/reference/CREDITS.md)
    embedded with ``embedder``, once per model and process. Measured: calibrating against unrelated
    images fits as well as against the collection itself (docs/quality.md)."""
    import json

    from PIL import Image

    key = ("bundled", json.dumps(embedder.fingerprint(), sort_keys=True, default=str))
    with _REFERENCE_LOCK:
        if key in _REFERENCE_CACHE:
            return _REFERENCE_CACHE[key]
    folder = resources.files("imgrag.retrieval").joinpath("reference")
    images = []
    for f in sorted((x for x in folder.iterdir() if x.name.endswith(".jpg")), key=lambda x: x.name):
        with f.open("rb") as fh:
            images.append(Image.open(fh).convert("RGB"))
    out = np.asarray(embedder.embed_images(images), dtype=np.float32)
    with _REFERENCE_LOCK:
        _REFERENCE_CACHE[key] = out
    return out


def reference_vectors(index: "Index", n: int = REFERENCE_SIZE, seed: int = 0) -> np.ndarray:
    """(≤ n, d): a uniform random sample of the index's vectors (all of them in a small index).

    Rows are picked by position from a scan of the ``id`` column only, then their vectors are
    fetched, so a large index costs one id scan; cached per (index, row count) for repeated calls.
    """
    store = index.store
    total = store.count()
    key = (str(index.root), total, n, seed)
    with _REFERENCE_LOCK:
        if key in _REFERENCE_CACHE:
            _REFERENCE_CACHE.move_to_end(key)
            return _REFERENCE_CACHE[key]
    if total <= n:
        vecs = [vectors_of(b.column("vector"), store.dim) for b in store.scan(columns=["vector"])]
        out = np.concatenate(vecs) if vecs else np.zeros((0, store.dim), np.float32)
    else:
        picks = np.sort(np.random.default_rng(seed).choice(total, n, replace=False))
        ids: list[str] = []
        start = 0
        for batch in store.scan(columns=["id"], batch_size=65536):
            col = batch.column("id")
            lo, hi = np.searchsorted(picks, [start, start + len(col)])
            ids += [col[int(i - start)].as_py() for i in picks[lo:hi]]
            start += len(col)
        t = store.get(ids, columns=["vector"])
        out = vectors_of(t.column("vector"), store.dim)
    with _REFERENCE_LOCK:
        _REFERENCE_CACHE[key] = out
        while len(_REFERENCE_CACHE) > 6:
            _REFERENCE_CACHE.popitem(last=False)
    return out


def fit_on_index(index: "Index", classifier: ZeroShotClassifier, filters: Filters | None = None,
                 batch_size: int = 4096, cap: int = 20000) -> Calibration | None:
    """The classifier's calibration fitted on the collection being classified (the rows matching
    ``filters``): one pass over the stored vectors, on a uniform sample of at most ``cap`` rows."""
    if classifier.calibration == "none":
        return None
    sample = ReservoirSample(cap)
    for batch in index.store.scan(columns=["vector"], filters=filters, batch_size=batch_size):
        if batch.num_rows:
            sample.add(classifier.similarities(vectors_of(batch.column("vector"), index.store.dim)))
    if sample.seen == 0:
        return None
    return fit(classifier.calibration, sample.rows, classifier.embedder.logit_scale)


def classify_index(index: "Index", classifier: ZeroShotClassifier, write: bool = False,
                   filters: Filters | None = None, top_n: int = 3, batch_size: int = 4096,
                   progress: Callable[[int, int], None] | None = None) -> Iterable[tuple[str, str, Prediction]]:
    """Classify every stored vector (no images are re-read); yields ``(id, path, prediction)``.

    With calibration on, a first pass over the vectors fits it on the collection (standardising each
    label's scores over the images being classified). With ``write=True`` the top label and its
    probability are written back to the ``label`` / ``label_score`` columns (usable later as a
    filter: ``--label``), under the index's writer lock: taken at the first item (before any work, so a
    concurrent indexer makes it fail at once with :class:`IndexLockedError`) and held to the last label.
    """
    if write:
        with index.writing():
            yield from _classify_rows(index, classifier, True, filters, top_n, batch_size, progress)
    else:
        yield from _classify_rows(index, classifier, False, filters, top_n, batch_size, progress)


def _classify_rows(index: "Index", classifier: ZeroShotClassifier, write: bool, filters: Filters | None,
                   top_n: int, batch_size: int, progress: Callable[[int, int], None] | None,
                   ) -> Iterable[tuple[str, str, Prediction]]:
    store = index.store
    calibration = fit_on_index(index, classifier, filters, batch_size)
    total = store.count()
    done = 0
    to_write: list[tuple[str, str | None, float]] = []
    for batch in store.scan(columns=["id", "path", "vector"], filters=filters, batch_size=batch_size):
        ids = batch.column("id").to_pylist()
        paths = batch.column("path").to_pylist()
        preds = classifier.predict_vectors(vectors_of(batch.column("vector"), store.dim), top_n,
                                             calibration)
        if write:
            to_write.extend((i, p.label, p.score) for i, p in zip(ids, preds))
        done += len(ids)
        if progress:
            progress(done, total)
        yield from zip(ids, paths, preds)
    # written after the scan so the scan never reads a store it is modifying
    for i in range(0, len(to_write), 8192):
        chunk = to_write[i : i + 8192]
        store.update_columns([c[0] for c in chunk], {"label": [c[1] for c in chunk],
                                                     "label_score": [c[2] for c in chunk]})
