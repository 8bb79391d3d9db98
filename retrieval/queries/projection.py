"""A 2-D map of the collection: PCA over all stored vectors (streamed), UMAP or t-SNE on top where installed.

Memory and time are bounded whatever the collection's size (measured in BENCHMARKS.md, "Groups"):

1. **One scan.** Every vector goes through a streamed covariance (mean and ``XᵀX`` in float64, ``d × d``), so
   the PCA axes are those of the whole collection, not of a sample; nothing else is held per item.
2. **Points.** The same scan keeps a seeded uniform sample of at most ``max_points`` rows (random priority,
   the lowest ``max_points`` kept: a bottom-k sample, so the same collection and seed give the same points)
   with their metadata: the map draws those, never more.
3. **Projection.** PCA to 2-D is the default and what CI exercises. With ``method="umap"``/``"tsne"`` (or
   ``"auto"``) and umap-learn / scikit-learn installed, the sample is first reduced to :data:`PRE_DIMS` PCA
   dimensions, then embedded by UMAP or t-SNE (both are O(points), on the bounded sample only).
4. **Colours.** Each point has a value per key (group, label, folder, date); :func:`legend` turns values into
   a fixed palette, the commonest first, the rest folded into "other".
"""

from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.stores.base import vectors_of

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.stores.base import VectorStore

METHODS = ("pca", "auto", "umap", "tsne")
#: PCA dimensions kept before UMAP / t-SNE (enough to keep the neighbourhoods, cheap for both)
PRE_DIMS = 50
COLOUR_KEYS = ("group", "label", "folder", "date")
#: distinct colours in a legend; further values share "other"
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d",
           "#ea580c", "#4f46e5", "#0d9488", "#b91c1c")
OTHER_COLOUR = "#9ca3af"
_META = ["id", "path", "page", "taken_at", "width", "height", "label"]


# ---------------------------------------------------------------------------------------------------------------
# PCA (pure NumPy)
# ---------------------------------------------------------------------------------------------------------------
class StreamingPCA:
    """PCA fitted from batches: running sum and ``XᵀX`` (float64), eigen-decomposed once at the end."""

    def __init__(self, dim: int) -> None:
        self.n = 0
        self._sum = np.zeros(dim, np.float64)
        self._xtx = np.zeros((dim, dim), np.float64)

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64)
        self.n += len(x)
        self._sum += x.sum(axis=0)
        self._xtx += x.T @ x

    def fit(self, n_components: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean (d,), components (c, d) unit rows, explained variance (c,)), largest variance first."""
        if self.n < 2:
            raise BadQueryError("a map needs at least two indexed items: index more images first")
        mean = self._sum / self.n
        cov = (self._xtx - self.n * np.outer(mean, mean)) / (self.n - 1)
        vals, vecs = np.linalg.eigh(cov)
        order = np.argsort(vals)[::-1][:n_components]
        comps = vecs[:, order].T
        # a fixed sign (largest coordinate positive) so the map does not flip between runs
        signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
        comps *= np.where(signs == 0, 1.0, signs)[:, None]
        return mean, comps, np.maximum(vals[order], 0.0)


def pca(x: np.ndarray, n_components: int = 2, batch: int = 4096) -> np.ndarray:
    """``x`` (n, d) projected on its first ``n_components`` principal axes (fitted in batches)."""
    p = StreamingPCA(x.shape[1])
    for i in range(0, len(x), batch):
        p.add(x[i:i + batch])
    mean, comps, _ = p.fit(n_components)
    return ((np.asarray(x, np.float64) - mean) @ comps.T).astype(np.float32)


def available_method(method: str) -> str:
    """The method that will run: ``auto`` picks UMAP, then t-SNE, then PCA, by what is installed."""
    if method not in METHODS:
        raise BadQueryError(f"unknown projection {method!r}: use one of {', '.join(METHODS)}")
    have_umap = importlib.util.find_spec("umap") is not None
    have_tsne = importlib.util.find_spec("sklearn") is not None
    if method == "auto":
        return "umap" if have_umap else "tsne" if have_tsne else "pca"
    if (method == "umap" and not have_umap) or (method == "tsne" and not have_tsne):
        raise BadQueryError(f"{method} is not installed here: pip install "
                            f"{'umap-learn' if method == 'umap' else 'scikit-learn'}, or use pca")
    return method


def _nonlinear(reduced: np.ndarray, method: str, seed: int) -> np.ndarray:  # pragma: no cover - not installed in CI
    if method == "umap":
        import umap

        return umap.UMAP(n_components=2, metric="cosine", random_state=seed).fit_transform(reduced)
    from sklearn.manifold import TSNE

    perplexity = float(max(2, min(30, (len(reduced) - 1) // 3)))
    return TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity).fit_transform(reduced)


# ---------------------------------------------------------------------------------------------------------------
# the map of a store
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class MapData:
    """Points of the map: ``xy`` (n, 2) in [0, 1], their rows (metadata) and vectors, and how they were made."""

    xy: np.ndarray
    rows: list[dict[str, Any]]
    vectors: np.ndarray
    items: int = 0  # vectors in the collection (all went into the PCA)
    method: str = "pca"
    explained: list[float] = field(default_factory=list)  # share of the variance on each PCA axis
    seconds: dict[str, float] = field(default_factory=dict)


def _keep_lowest(keys: np.ndarray, cap: int) -> np.ndarray:
    if len(keys) <= cap:
        return np.arange(len(keys))
    return np.sort(np.argpartition(keys, cap - 1)[:cap])


def project_store(store: "VectorStore", max_points: int = 2000, method: str = "pca", seed: int = 0,
                  batch_size: int = 4096, filters=None) -> MapData:
    """One scan of ``store``: PCA over every vector, and a seeded sample of ``max_points`` rows placed in 2-D."""
    if max_points < 2:
        raise BadQueryError("a map needs at least 2 points")
    run = available_method(method)
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    pcafit = StreamingPCA(store.dim)
    keys = np.zeros(0, np.float64)
    vecs = np.zeros((0, store.dim), np.float32)
    rows: list[dict[str, Any]] = []
    for b in store.scan(columns=[*_META, "vector"], filters=filters, batch_size=batch_size):
        if not b.num_rows:
            continue
        v = vectors_of(b.column("vector"), store.dim)
        pcafit.add(v)
        k = rng.random(len(v))
        if len(keys) >= max_points and k.min() >= keys.max():
            continue  # nothing in this batch enters the sample
        meta = b.drop_columns(["vector"]).to_pylist()
        keys, vecs, rows = np.concatenate([keys, k]), np.concatenate([vecs, v]), rows + meta
        keep = _keep_lowest(keys, max_points)
        keys, vecs, rows = keys[keep], vecs[keep], [rows[i] for i in keep]
    t1 = time.perf_counter()
    mean, comps, var = pcafit.fit(PRE_DIMS if run != "pca" else 2)
    total = float(np.trace((pcafit._xtx - pcafit.n * np.outer(mean, mean)) / (pcafit.n - 1)))
    reduced = ((vecs.astype(np.float64) - mean) @ comps.T).astype(np.float32)
    xy = reduced[:, :2] if run == "pca" or len(vecs) < 5 else _nonlinear(reduced, run, seed)
    t2 = time.perf_counter()
    order = np.lexsort((np.array([str(r.get("id", "")) for r in rows]),))  # by id: independent of scan order
    xy, vecs, rows = np.asarray(xy, np.float64)[order], vecs[order], [rows[i] for i in order]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    xy = ((xy - lo) / np.where(hi - lo > 0, hi - lo, 1.0)).astype(np.float32)
    return MapData(xy=xy, rows=rows, vectors=vecs, items=pcafit.n, method=run,
                   explained=[float(x / total) if total > 0 else 0.0 for x in var[:2]],
                   seconds={"scan_and_fit": t1 - t0, "project": t2 - t1, "total": t2 - t0})


# ---------------------------------------------------------------------------------------------------------------
# colours
# ---------------------------------------------------------------------------------------------------------------
def group_values(vectors: np.ndarray, k: int | None = None, seed: int = 0) -> list[str]:
    """Each point's group ("group 1" = largest) from spherical k-means on the points (k by silhouette)."""
    from imgrag.retrieval.queries.groups import GroupOptions, choose_k, spherical_kmeans
    from imgrag.retrieval.embedders.base import l2_normalize

    if len(vectors) < 2:
        return ["group 1"] * len(vectors)
    x = l2_normalize(np.asarray(vectors, np.float32))
    opts = GroupOptions(k=k, seed=seed, select_size=2000, silhouette_size=1000)
    kk = k if k is not None else choose_k(x, opts)[0]
    _, labels, _ = spherical_kmeans(x, kk, seed, n_init=2)
    sizes = np.bincount(labels, minlength=kk)
    rank = {int(j): r + 1 for r, j in enumerate(sorted(range(kk), key=lambda j: (-sizes[j], j)))}
    return [f"group {rank[int(g)]}" for g in labels]


def point_values(rows: Sequence[dict[str, Any]], key: str, groups: Sequence[str] | None = None) -> list[str]:
    """The value each point is coloured by under ``key`` (one of :data:`COLOUR_KEYS`)."""
    from imgrag.retrieval.paths import display

    if key not in COLOUR_KEYS:
        raise BadQueryError(f"unknown colour key {key!r}: use one of {', '.join(COLOUR_KEYS)}")
    if key == "group":
        if groups is None or len(groups) != len(rows):
            raise BadQueryError("colouring by group needs one group per point")
        return list(groups)
    if key == "label":
        return [str(r.get("label") or "(no label)") for r in rows]
    if key == "folder":
        return [display(os.path.basename(os.path.dirname(str(r.get("path", ""))))) or "/" for r in rows]
    return [str(r["taken_at"])[:4] if r.get("taken_at") else "(no date)" for r in rows]


def legend(values: Iterable[str], max_colours: int = len(PALETTE)) -> tuple[dict[str, str], list[tuple[str, str, int]]]:
    """({value: colour}, [(value, colour, count)]): the commonest values get the palette (ties by name), the
    rest share "other"; the legend's counts add up to the number of values."""
    vals = list(values)
    counts: dict[str, int] = {}
    for v in vals:
        counts[v] = counts.get(v, 0) + 1
    ordered = sorted(counts, key=lambda v: (-counts[v], v))
    n_named = len(ordered) if len(ordered) <= max_colours else max_colours - 1
    colour = {v: PALETTE[i % len(PALETTE)] for i, v in enumerate(ordered[:n_named])}
    rows = [(v, colour[v], counts[v]) for v in ordered[:n_named]]
    rest = ordered[n_named:]
    if rest:
        for v in rest:
            colour[v] = OTHER_COLOUR
        rows.append((f"other ({len(rest)} values)", OTHER_COLOUR, sum(counts[v] for v in rest)))
    return colour, rows
