"""Named groups of the whole collection: spherical k-means over the stored vectors, each group named by zero-shot.

Memory is bounded whatever the collection's size:

1. **Sample.** One scan of the store keeps a seeded uniform reservoir of at most ``sample_size`` vectors
   (:class:`~imgrag.retrieval.queries.calibration.ReservoirSample`); nothing else is held per item.
2. **k.** Unless given, k is the one with the best mean silhouette (cosine distance) over :data:`K_CANDIDATES`
   (up to :data:`K_AUTO_MAX`). Silhouette because it scores separation directly, needs no model of cluster
   shape or size, and is cheap on a sample: each candidate k is clustered on ``select_size`` vectors and scored on
   ``silhouette_size`` of them, from one precomputed distance matrix. On clean planted clusters it picks the planted
   k (tests/test_groups.py); on real embeddings it tends to prefer coarse groupings, so ``--k`` stays available.
3. **Centroids.** Spherical k-means (k-means++ seeding, cosine assignment, re-normalised means, best of ``n_init``
   restarts) on the sample. Vectors are L2-normalised, so cosine is the natural similarity.
4. **Assign.** A second scan assigns every vector to its nearest centroid in batches, keeping per group only its
   size and its ``examples`` most representative items (closest to the centroid).
5. **Names.** Each centroid is scored against the label vectors (ImageNet lemmas by default, or the user's list),
   calibrated per label with the z-score fitted on the sample's image-to-label similarities (the method of
   ``calibration.py``: a hub label that is close to every image is pulled down), and labels are handed out
   best pair first, each label to one group at most, so distinct groups get distinct names.

Everything is seeded: the same collection and seed give the same groups, numbers and names.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from imgrag.retrieval.embedders.base import l2_normalize
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries.calibration import ReservoirSample, zscore_params
from imgrag.retrieval.stores.base import Filters, vectors_of

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.embedders.base import Embedder
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.stores.base import VectorStore

K_AUTO_MAX = 30
#: candidate k for the automatic choice: every k up to 12, then every other one (fine where it matters, cheap)
K_CANDIDATES = (*range(2, 13), *range(14, K_AUTO_MAX + 1, 2))
NAME_TEMPLATE = "a photo of a {}."
#: sample rows used to fit the per-label calibration of the names (C floats each)
NAME_REFERENCE = 2000


@dataclass(frozen=True)
class GroupOptions:
    """``k``: number of groups (None: chosen by silhouette); ``examples``: representative items per group."""

    k: int | None = None
    seed: int = 0
    sample_size: int = 20_000
    select_size: int = 4000
    silhouette_size: int = 2000
    n_init: int = 3
    max_iter: int = 50
    examples: int = 3
    batch_size: int = 4096
    filters: Filters | None = None

    def check(self) -> None:
        if self.k is not None and self.k < 1:
            raise BadQueryError(f"k must be at least 1, got {self.k}")
        if self.examples < 0 or self.sample_size < 2:
            raise BadQueryError("examples must be 0 or more and the sample at least 2 vectors")


@dataclass
class Group:
    """One group: ``number`` (1 = largest), its ``name`` (None when not named), size and examples (id, path, cos)."""

    number: int
    size: int
    examples: list[tuple[str, str, float]]
    name: str | None = None
    score: float | None = None  # calibrated label score (z units: how much better than the label's usual fit)
    cosine: float | None = None  # mean cosine of the group's images to the label's text vector

    def to_dict(self, display_path=str) -> dict[str, Any]:
        return {"group": self.number, "name": self.name, "size": self.size,
                "examples": [{"path": display_path(p), "id": i, "cosine": round(float(s), 6)}
                             for i, p, s in self.examples],
                "score": None if self.score is None else round(float(self.score), 6),
                "cosine": None if self.cosine is None else round(float(self.cosine), 6)}


@dataclass
class GroupReport:
    groups: list[Group]
    centroids: np.ndarray  # (k, d), row i is groups[i]'s centroid
    items: int = 0
    k: int = 0
    k_auto: bool = True
    k_scores: dict[int, float] = field(default_factory=dict)  # candidate k → mean silhouette
    sample: int = 0
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self, display_path=str) -> list[dict[str, Any]]:
        return [g.to_dict(display_path) for g in self.groups]

    def summary(self) -> dict[str, Any]:
        return {"groups": len(self.groups), "items": self.items, "k": self.k, "k_auto": self.k_auto,
                "silhouette": {k: round(v, 4) for k, v in self.k_scores.items()}, "sample": self.sample,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


# ---------------------------------------------------------------------------------------------------------------
# spherical k-means and the choice of k (pure NumPy)
# ---------------------------------------------------------------------------------------------------------------
def _kmeanspp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding with cosine distance (1 - cos), squared: each step draws ``2 + ln k`` candidates
    by the usual D² rule and keeps the one that lowers the total distance most (scikit-learn's default). Plain
    k-means++ (one draw) often put two seeds in one planted cluster and none in another, so the silhouette's k
    varied with the seed (14-22 for 20 planted clusters; BENCHMARKS.md, "Groups")."""
    trials = 2 + int(np.log(max(k, 1)))
    c = np.empty((k, x.shape[1]), np.float32)
    c[0] = x[rng.integers(len(x))]
    d = np.maximum(1.0 - x @ c[0], 0.0).astype(np.float64) ** 2
    for j in range(1, k):
        total = d.sum()
        if total <= 0:  # fewer distinct points than k
            c[j] = x[rng.integers(len(x))]
            continue
        cand = rng.choice(len(x), size=trials, p=d / total)
        dc = np.maximum(1.0 - x @ x[cand].T, 0.0).astype(np.float64) ** 2  # (n, trials)
        best = int(np.minimum(d[:, None], dc).sum(axis=0).argmin())
        c[j] = x[cand[best]]
        d = np.minimum(d, dc[:, best])
    return c


def spherical_kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 3,
                     max_iter: int = 50) -> tuple[np.ndarray, np.ndarray, float]:
    """(centroids (k, d) unit rows, labels (n,), mean cosine to own centroid), best of ``n_init`` seeded runs."""
    x = np.ascontiguousarray(x, np.float32)
    k = max(1, min(k, len(x)))
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(max(1, n_init)):
        c = _kmeanspp(x, k, rng)
        labels = np.full(len(x), -1)
        for _ in range(max_iter):
            sims = x @ c.T
            new = sims.argmax(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            best_sim = sims[np.arange(len(x)), labels]
            for j in range(k):
                members = labels == j
                if members.any():
                    c[j] = x[members].sum(axis=0)
                else:  # an empty cluster takes the point worst served by its own centroid
                    far = int(best_sim.argmin())
                    c[j], labels[far], best_sim[far] = x[far], j, 1.0
            c = l2_normalize(c)
        fit = float((x @ c.T).max(axis=1).mean())
        if best is None or fit > best[2] + 1e-9:
            best = (c.copy(), (x @ c.T).argmax(axis=1), fit)
    assert best is not None
    return best


def silhouette(dist: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette from a precomputed (n, n) distance matrix; members of singleton clusters count 0."""
    n = len(labels)
    ks, inv = np.unique(labels, return_inverse=True)
    if len(ks) < 2:
        return 0.0
    onehot = np.zeros((n, len(ks)), np.float32)
    onehot[np.arange(n), inv] = 1.0
    sums = dist @ onehot  # (n, k): summed distance of each point to each cluster
    counts = onehot.sum(axis=0)
    own = counts[inv]
    a = sums[np.arange(n), inv] / np.maximum(own - 1, 1)
    other = sums / counts
    other[np.arange(n), inv] = np.inf
    b = other.min(axis=1)
    s = (b - a) / np.maximum(np.maximum(a, b), 1e-12)
    s[own <= 1] = 0.0
    return float(s.mean())


def choose_k(sample: np.ndarray, options: GroupOptions) -> tuple[int, dict[int, float]]:
    """The candidate k with the best mean silhouette; (k, {k: silhouette})."""
    rng = np.random.default_rng(options.seed)
    sel = sample if len(sample) <= options.select_size else sample[
        np.sort(rng.choice(len(sample), options.select_size, replace=False))]
    sil = sel if len(sel) <= options.silhouette_size else sel[
        np.sort(rng.choice(len(sel), options.silhouette_size, replace=False))]
    dist = np.maximum(1.0 - sil @ sil.T, 0.0).astype(np.float32)
    scores: dict[int, float] = {}
    for k in K_CANDIDATES:
        if k >= len(sil):
            break
        c, _, _ = spherical_kmeans(sel, k, options.seed, n_init=1, max_iter=options.max_iter)
        scores[k] = silhouette(dist, (sil @ c.T).argmax(axis=1))
    if not scores:
        return 1, scores
    return max(scores, key=lambda k: (round(scores[k], 6), -k)), scores


# ---------------------------------------------------------------------------------------------------------------
# passes over the store
# ---------------------------------------------------------------------------------------------------------------
def sample_vectors(store: "VectorStore", options: GroupOptions) -> tuple[np.ndarray, int]:
    """A seeded uniform sample of at most ``sample_size`` stored vectors, and how many were scanned."""
    res = ReservoirSample(options.sample_size, seed=options.seed)
    for b in store.scan(columns=["vector"], filters=options.filters, batch_size=options.batch_size):
        if b.num_rows:
            res.add(vectors_of(b.column("vector"), store.dim))
    return (l2_normalize(res.rows) if res.seen else np.zeros((0, store.dim), np.float32)), res.seen


def assignments(store: "VectorStore", centroids: np.ndarray, filters: Filters | None = None,
                batch_size: int = 4096) -> Iterator[tuple[list[str], list[str], np.ndarray, np.ndarray]]:
    """Per batch of stored rows: ids, paths, group index (row of ``centroids``) and cosine to that centroid."""
    for ids, paths, g, s, _ in _assigned(store, centroids, filters, batch_size):
        yield ids, paths, g, s


def _assigned(store: "VectorStore", centroids: np.ndarray, filters: Filters | None,
              batch_size: int) -> Iterator[tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]]:
    for b in store.scan(columns=["id", "path", "vector"], filters=filters, batch_size=batch_size):
        if not b.num_rows:
            continue
        vecs = vectors_of(b.column("vector"), store.dim)
        sims = vecs @ centroids.T
        g = sims.argmax(axis=1)
        yield b.column("id").to_pylist(), b.column("path").to_pylist(), g, sims[np.arange(len(g)), g], vecs


def assign_all(store: "VectorStore", centroids: np.ndarray,
               options: GroupOptions) -> tuple[np.ndarray, np.ndarray, list[list]]:
    """Sizes (k,), member means (k, d; not normalised) and, per group, its ``examples`` closest items as
    (cos, id, path), best first."""
    k = len(centroids)
    sizes = np.zeros(k, np.int64)
    sums = np.zeros(centroids.shape, np.float64)
    best: list[list[tuple[float, str, str]]] = [[] for _ in range(k)]  # min-heaps of the best examples
    n_ex = options.examples
    for ids, paths, g, s, vecs in _assigned(store, centroids, options.filters, options.batch_size):
        sizes += np.bincount(g, minlength=k)
        onehot = np.zeros((len(g), k), np.float32)
        onehot[np.arange(len(g)), g] = 1.0
        sums += onehot.T @ vecs
        if not n_ex:
            continue
        for j in np.unique(g):
            rows = np.flatnonzero(g == j)
            top = rows[np.argsort(-s[rows], kind="stable")[:n_ex]]
            heap = best[j]
            for r in top:
                # ties broken by id, largest id evicted first, so the result does not depend on scan order
                item = (float(s[r]), _Rev(ids[r]), paths[r])
                if len(heap) < n_ex:
                    heapq.heappush(heap, item)
                elif item > heap[0]:
                    heapq.heapreplace(heap, item)
    means = (sums / np.maximum(sizes, 1)[:, None]).astype(np.float32)
    return sizes, means, [[(c, r.s, p) for c, r, p in sorted(h, reverse=True)] for h in best]


class _Rev:
    """A string ordered backwards (a smaller id ranks higher among equal cosines)."""

    __slots__ = ("s",)

    def __init__(self, s: str) -> None:
        self.s = s

    def __lt__(self, other: "_Rev") -> bool:
        return self.s > other.s

    def __gt__(self, other: "_Rev") -> bool:
        return self.s < other.s

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Rev) and self.s == other.s


# ---------------------------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------------------------
def default_labels() -> list[str]:
    """The ImageNet-1k classes by their first WordNet lemma (shipped in timm), repeats dropped."""
    from imgrag.retrieval.embedders.lite.assets import imagenet_lemmas

    return list(dict.fromkeys(ls[0].replace("_", " ") for ls in imagenet_lemmas()))


def load_labels(path: str | Path) -> list[str]:
    """One label per line (``#`` comments, blanks ignored); at least two, no repeats."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise BadQueryError(f"labels file {path} not found: give a text file with one label per line")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadQueryError(f"cannot read labels file {path}: {e}; save it as UTF-8 text, one label per line") from e
    labels = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if len(labels) < 2:
        raise BadQueryError(f"labels file {path} holds fewer than two labels: give one label per line")
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise BadQueryError(f"labels file {path} repeats labels: {', '.join(dup[:5])}")
    return labels


def label_vectors(embedder: "Embedder", labels: Sequence[str], template: str = NAME_TEMPLATE,
                  batch: int = 256) -> np.ndarray:
    """(C, d) unit text vectors of ``template`` filled with each label, embedded in batches."""
    out = [np.asarray(embedder.embed_texts([template.format(x) for x in labels[i:i + batch]]), np.float32)
           for i in range(0, len(labels), batch)]
    return l2_normalize(np.concatenate(out))


def name_groups(means: np.ndarray, label_vecs: np.ndarray, labels: Sequence[str],
                reference: np.ndarray | None = None) -> list[tuple[str, float, float]]:
    """(name, calibrated score, mean cosine) per group; each label names one group at most while labels last.

    ``means`` are the groups' member means (not normalised): ``mean @ label`` is the mean cosine of the group's
    images to the label, on the same scale as one image's. Each label is z-scored with the similarities of
    ``reference`` image vectors (a sample of the collection), as classify calibrates one image, so a label close
    to everything (a hub) does not win every group; the group's score is the mean calibrated score of its images.
    (A normalised centroid would not do: it is closer to every label than any one image, most of all to hubs.)
    Without a usable reference the z-scoring is over the groups themselves.
    """
    raw = means @ label_vecs.T  # (k, C)
    ref = reference if reference is not None and len(reference) >= 8 else means
    if len(ref) >= 2:
        shift, scale = zscore_params(ref @ label_vecs.T)
        cal = (raw - shift) / scale
    else:
        cal = raw.astype(np.float64)
    k, c = cal.shape
    names: list[tuple[str, float, float] | None] = [None] * k
    used: set[int] = set()
    # best (group, label) pairs first; a stable sort keeps ties deterministic
    order = np.argsort(-cal, axis=None, kind="stable")
    for flat in order:
        g, j = divmod(int(flat), c)
        if names[g] is not None or j in used:
            continue
        names[g] = (labels[j], float(cal[g, j]), float(raw[g, j]))
        used.add(j)
        if len(used) == k or len(used) == c:
            break
    for g in range(k):  # more groups than labels: repeat the best label, numbered
        if names[g] is None:
            j = int(cal[g].argmax())
            names[g] = (f"{labels[j]} ({g + 1})", float(cal[g, j]), float(raw[g, j]))
    return [n for n in names if n is not None]


# ---------------------------------------------------------------------------------------------------------------
# the whole thing
# ---------------------------------------------------------------------------------------------------------------
def cluster_store(store: "VectorStore", options: GroupOptions | None = None,
                  embedder: "Embedder | None" = None, labels: Sequence[str] | None = None) -> GroupReport:
    """Groups of the vectors in ``store``, largest first; named when ``embedder`` and ``labels`` are given."""
    opts = options or GroupOptions()
    opts.check()
    t0 = time.perf_counter()
    sample, n = sample_vectors(store, opts)
    rep = GroupReport(groups=[], centroids=np.zeros((0, store.dim), np.float32), items=n, sample=len(sample))
    rep.seconds["sample"] = time.perf_counter() - t0
    if n == 0:
        rep.k_auto = opts.k is None
        return rep
    t1 = time.perf_counter()
    if opts.k is None:
        k, rep.k_scores = choose_k(sample, opts)
    else:
        k = min(opts.k, len(sample))
    rep.k, rep.k_auto = k, opts.k is None
    rep.seconds["choose_k"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    centroids, _, _ = spherical_kmeans(sample, k, opts.seed, opts.n_init, opts.max_iter)
    rep.seconds["kmeans"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    sizes, means, examples = assign_all(store, centroids, opts)
    # largest first, then by best example id: numbers do not depend on the k-means' internal order
    keep = [j for j in range(len(centroids)) if sizes[j] > 0]
    keep.sort(key=lambda j: (-int(sizes[j]), examples[j][0][1] if examples[j] else ""))
    rep.centroids, means = centroids[keep], means[keep]
    rep.groups = [Group(number=i + 1, size=int(sizes[j]), examples=[(i_, p, c) for c, i_, p in examples[j]])
                  for i, j in enumerate(keep)]
    rep.seconds["assign"] = time.perf_counter() - t3
    if embedder is not None and labels:
        t4 = time.perf_counter()
        rng = np.random.default_rng(opts.seed)
        ref = sample if len(sample) <= NAME_REFERENCE else sample[
            np.sort(rng.choice(len(sample), NAME_REFERENCE, replace=False))]
        for g, (name, score, cos) in zip(rep.groups, name_groups(
                means, label_vectors(embedder, labels), labels, ref)):
            g.name, g.score, g.cosine = name, score, cos
        rep.seconds["names"] = time.perf_counter() - t4
    rep.seconds["total"] = time.perf_counter() - t0
    return rep


def group_index(index: "Index", options: GroupOptions | None = None,
                labels: Sequence[str] | str | Path | None = None, name: bool = True) -> GroupReport:
    """Groups of an index, named with ``labels`` (a list, a file path, or None for the ImageNet lemmas)."""
    if not name:
        return cluster_store(index.store, options)
    if labels is None:
        label_list = default_labels()
    elif isinstance(labels, (str, Path)):
        label_list = load_labels(labels)
    else:
        label_list = list(labels)
    return cluster_store(index.store, options, index.embedder, label_list)
