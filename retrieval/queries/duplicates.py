"""Near-duplicate images: groups of copies (resized, re-encoded, slightly cropped, brightened) with a keeper.

Three stages, none of them over all pairs:

1. **Candidates** from an ANN index: every image's top-``k`` neighbours, queried in batches of stored
   vectors; a pair is a candidate when its cosine reaches ``threshold``. The store's own search is used when
   it has an ANN index (LanceDB once ``optimize`` built one, FAISS with e.g. ``HNSW32``) or holds at most
   ``EXACT_MAX_ROWS`` images; a store that searches exactly (FAISS ``Flat``, LanceDB before its index) and is
   larger gets a temporary HNSW graph (``HNSW32,SQfp16``, two scans: add, then query), so the stage never
   compares all pairs. Files with the same content hash (copied files, symlinks, one photo in two albums)
   are paired directly.
2. **Verification**: the embedding alone is ambiguous (with a weak model distinct pictures score as high as
   copies), so each candidate pair must also look alike pixel by pixel: the normalised correlation of 16×16
   grey thumbnails (whole image, or whole vs a centre crop of up to 12 %) must reach ``min_similarity``
   (:mod:`imgrag.retrieval.perceptual`). Measured on planted copies, this beats pHash, whose bits are noise on
   clip art and which a 5-10 % crop moves by 20+ bits. Thumbnails come from a small decode of the files that
   appear in candidate pairs only, in batches. Identical content needs no check.
3. **Groups** by union-find over the accepted pairs. Each group suggests a keeper: the highest resolution,
   then the oldest (capture time, else modification time), then the path. Nothing is ever deleted.

The defaults were chosen by measurement on planted copies (bench/duplicates.py, BENCHMARKS.md).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple

import numpy as np

from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.stores.base import Filters, vectors_of

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.stores.base import VectorStore

#: candidate cosine and thumbnail correlation: copies (default) and burst shots (looser, ``bursts=True``)
DEFAULT_THRESHOLD = 0.80
DEFAULT_MIN_SIMILARITY = 0.85
BURST_THRESHOLD = 0.70
BURST_MIN_SIMILARITY = 0.70
#: an exact store answers the all-images neighbour search itself up to this many images (a few seconds);
#: beyond, exact search grows with the square of the collection, so a temporary HNSW graph is built
EXACT_MAX_ROWS = 20_000
#: the temporary graph: fp16 vectors (half the memory of float32, cosine error ~1e-3) need no training
TEMP_FACTORY = "HNSW32,SQfp16"
#: its search breadth: among 100,000 random vectors 128 found 1,960 of 1,962 planted pairs, 64 found 1,933 for
#: 30 % less CPU (BENCHMARKS.md, "Duplicates"); a duplicate finder should not miss copies
TEMP_EF_SEARCH = 128
CANDIDATE_SOURCES = ("auto", "store", "hnsw")


@dataclass(frozen=True)
class DuplicateOptions:
    """``threshold``: least cosine for a candidate pair; ``min_similarity``: least thumbnail correlation
    (None: the default for copies or bursts); ``verify=False`` trusts the embedding alone (strong models only)."""

    threshold: float | None = None
    min_similarity: float | None = None
    k: int = 10
    bursts: bool = False
    verify: bool = True
    batch_size: int = 512
    filters: Filters | None = None
    hash_workers: int | None = None
    candidates: str = "auto"  # "store": the store's search; "hnsw": a temporary graph; "auto": see module doc
    exact_max_rows: int = EXACT_MAX_ROWS

    def resolved(self) -> tuple[float, float]:
        t = self.threshold if self.threshold is not None else (BURST_THRESHOLD if self.bursts else DEFAULT_THRESHOLD)
        s = self.min_similarity if self.min_similarity is not None else (
            BURST_MIN_SIMILARITY if self.bursts else DEFAULT_MIN_SIMILARITY)
        if not -1.0 <= t <= 1.0:
            raise BadQueryError(f"threshold is a cosine similarity between -1 and 1, got {t}")
        if not -1.0 <= s <= 1.0:
            raise BadQueryError(f"the thumbnail similarity is a correlation between -1 and 1, got {s}")
        if self.k < 1:
            raise BadQueryError(f"k must be at least 1, got {self.k}")
        if self.candidates not in CANDIDATE_SOURCES:
            raise BadQueryError(f"candidates is one of {', '.join(CANDIDATE_SOURCES)}, got {self.candidates!r}")
        return float(t), float(s)


@dataclass
class Member:
    """One image of a duplicate group; ``score`` is its cosine to the keeper (1.0 for the keeper)."""

    path: str
    keeper: bool
    size: int | None
    width: int | None
    height: int | None
    score: float
    taken_at: Any = None
    mtime_ns: int | None = None
    same_file: bool = False  # the keeper's exact bytes (same content hash)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["score"] = round(float(self.score), 6)
        return d


@dataclass
class DuplicateReport:
    groups: list[list[Member]]
    items: int = 0
    candidates: int = 0  # pairs from the neighbour search (and same-hash pairs)
    exact_pairs: int = 0
    verified: int = 0  # candidate pairs whose thumbnails were compared
    rejected: int = 0
    unreadable: int = 0  # files that could not be hashed (their pairs are rejected)
    threshold: float = DEFAULT_THRESHOLD
    min_similarity: float = DEFAULT_MIN_SIMILARITY
    candidate_source: str = ""  # which neighbour search gave the candidates ("store: ...", "temporary HNSW32,SQfp16")
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> list[list[dict[str, Any]]]:
        return [[m.to_dict() for m in g] for g in self.groups]

    def summary(self) -> dict[str, Any]:
        return {"groups": len(self.groups), "images_in_groups": sum(len(g) for g in self.groups),
                "items": self.items, "candidates": self.candidates, "exact_pairs": self.exact_pairs,
                "verified": self.verified, "rejected": self.rejected, "unreadable": self.unreadable,
                "threshold": self.threshold, "min_similarity": self.min_similarity,
                "candidate_source": self.candidate_source, "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        p = self.parent.setdefault(a, a)
        while p != self.parent[p]:
            self.parent[p] = self.parent[self.parent[p]]
            p = self.parent[p]
        self.parent[a] = p
        return p

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[int]]:
        out: dict[int, list[int]] = {}
        for a in self.parent:
            out.setdefault(self.find(a), []).append(a)
        return [g for g in out.values() if len(g) > 1]


class Candidates(NamedTuple):
    ids: list[str]  # numbered in scan order
    hashes: list[str | None]
    pairs: dict[tuple[int, int], float]  # (i, j) -> cosine, i < j
    items: int  # images (document pages are left out)
    source: str  # which neighbour search answered


def store_has_ann(store: "VectorStore") -> bool:
    """Whether the store's own search is approximate (an ANN index), from what it reports to ``imgrag info``."""
    d = store.describe()
    if "exact" in d:  # FAISS: Flat, or an index that is not trained yet
        return not d["exact"]
    index = str(d.get("index") or "").lower()  # LanceDB: "flat (exact)" until optimize() built one
    return bool(index) and "flat" not in index and "exact" not in index


def candidate_pairs(store: "VectorStore", threshold: float, k: int = 10, filters: Filters | None = None,
                    batch_size: int = 512, source: str = "auto",
                    exact_max_rows: int = EXACT_MAX_ROWS) -> Candidates:
    """Neighbour pairs at or above ``threshold`` from an ANN search (``source``: see the module doc).

    Memory: the ids and hashes, the pairs, one batch of vectors and hits, and with a temporary graph the
    graph itself (fp16 vectors + 32 links per image: ~1.3 KB per 512-d image).
    """
    if source == "auto":
        source = "store" if store.count() <= exact_max_rows or store_has_ann(store) else "hnsw"
    if source == "hnsw":
        return _graph_pairs(store, threshold, k, filters, batch_size)
    return _store_pairs(store, threshold, k, filters, batch_size)


def _store_pairs(store: "VectorStore", threshold: float, k: int, filters: Filters | None,
                 batch_size: int) -> Candidates:
    ids: list[str] = []
    hashes: list[str | None] = []
    num: dict[str, int] = {}
    pairs: dict[tuple[int, int], float] = {}
    dim = store.dim
    pending: list[tuple[int, np.ndarray]] = []  # (query number, vector) waiting for the next batch

    def flush() -> None:
        if not pending:
            return
        q = np.stack([v for _, v in pending])
        for (qi, _), hits in zip(pending, store.search(q, k + 1, filters=filters)):
            for h in hits:
                if h.score < threshold:
                    break  # best first
                if h.id == ids[qi] or h.row.get("page") is not None:
                    continue
                j = num.get(h.id)
                if j is None:  # not scanned yet: numbered now, its own scan row reuses the number
                    j = num[h.id] = len(ids)
                    ids.append(h.id)
                    hashes.append(h.row.get("hash"))
                key = (qi, j) if qi < j else (j, qi)
                if pairs.get(key, -2.0) < h.score:
                    pairs[key] = float(h.score)
        pending.clear()

    for b in store.scan(columns=["id", "path", "page", "hash", "vector"], filters=filters, batch_size=batch_size):
        vecs = vectors_of(b.column("vector"), dim)
        pages = b.column("page").to_pylist()
        for r, (i, h) in enumerate(zip(b.column("id").to_pylist(), b.column("hash").to_pylist())):
            if pages[r] is not None:
                continue
            qi = num.get(i)
            if qi is None:
                qi = num[i] = len(ids)
                ids.append(i)
                hashes.append(h)
            pending.append((qi, vecs[r]))
            if len(pending) >= batch_size:
                flush()
    flush()
    d = store.describe()
    return Candidates(ids, hashes, pairs, len(ids), f"store: {d.get('index') or d.get('kind') or 'search'}")


def _image_batches(store: "VectorStore", filters: Filters | None,
                   batch_size: int) -> Iterator[tuple[list[str], list[str | None], np.ndarray]]:
    for b in store.scan(columns=["id", "page", "hash", "vector"], filters=filters, batch_size=batch_size):
        keep = [r for r, pg in enumerate(b.column("page").to_pylist()) if pg is None]
        if not keep:
            continue
        vecs = vectors_of(b.column("vector"), store.dim)[keep]
        ids, hashes = b.column("id").to_pylist(), b.column("hash").to_pylist()
        yield [ids[r] for r in keep], [hashes[r] for r in keep], np.ascontiguousarray(vecs, dtype=np.float32)


def _graph_pairs(store: "VectorStore", threshold: float, k: int, filters: Filters | None,
                 batch_size: int) -> Candidates:
    """Two scans: every image into a temporary HNSW graph, then every image's neighbours from it. Rows
    written between the scans are left out (not numbered in the first), deleted ones simply not queried."""
    import faiss

    graph = faiss.index_factory(store.dim, TEMP_FACTORY, faiss.METRIC_INNER_PRODUCT)
    ids: list[str] = []
    hashes: list[str | None] = []
    num: dict[str, int] = {}
    for bid, bh, vecs in _image_batches(store, filters, max(batch_size, 4096)):
        new = [r for r, i in enumerate(bid) if i not in num]
        for r in new:
            num[bid[r]] = len(ids)
            ids.append(bid[r])
            hashes.append(bh[r])
        graph.add(vecs[new])
    graph.hnsw.efSearch = max(TEMP_EF_SEARCH, 2 * (k + 1))
    pairs: dict[tuple[int, int], float] = {}
    for bid, _, vecs in _image_batches(store, filters, batch_size):
        scores, labels = graph.search(vecs, k + 1)
        for i, row_s, row_l in zip(bid, scores, labels):
            qi = num.get(i)
            if qi is None:
                continue
            for sc, j in zip(row_s.tolist(), row_l.tolist()):
                if j < 0 or j == qi or sc < threshold:
                    continue
                key = (qi, j) if qi < j else (j, qi)
                if pairs.get(key, -2.0) < sc:
                    pairs[key] = float(sc)
    return Candidates(ids, hashes, pairs, len(ids), f"temporary {TEMP_FACTORY}")


def find_duplicates(store: "VectorStore", options: DuplicateOptions | None = None) -> DuplicateReport:
    """Groups of near-duplicate images in ``store`` (an index's ``store``), largest first, keeper first."""
    from imgrag.retrieval.perceptual import hash_files

    opts = options or DuplicateOptions()
    threshold, min_sim = opts.resolved()
    t0 = time.perf_counter()
    ids, hashes, pairs, n, source = candidate_pairs(store, threshold, opts.k, opts.filters, opts.batch_size,
                                                    opts.candidates, opts.exact_max_rows)
    rep = DuplicateReport(groups=[], items=n, threshold=threshold, min_similarity=min_sim, candidate_source=source)
    # same bytes: paired directly (copies the neighbour search may miss when many are tied)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h:
            j = first.setdefault(h, i)
            if j != i:
                pairs[(j, i)] = max(pairs.get((j, i), 1.0), 1.0)
    rep.candidates = len(pairs)
    rep.seconds["candidates"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    uf = _UnionFind()
    to_check: list[tuple[int, int]] = []
    for (a, b) in sorted(pairs):
        if hashes[a] and hashes[a] == hashes[b]:
            rep.exact_pairs += 1
            uf.union(a, b)
        elif opts.verify:
            to_check.append((a, b))
        else:
            uf.union(a, b)
    if to_check:
        paths = _paths(store, sorted({x for p in to_check for x in p}), ids)
        hashed = hash_files([paths[x] for x in sorted(paths)], workers=opts.hash_workers)
        rep.unreadable = sum(1 for v in hashed.values() if v is None)
        for a, b in to_check:
            ha, hb = hashed.get(paths.get(a, "")), hashed.get(paths.get(b, ""))
            rep.verified += 1
            if ha is not None and hb is not None and ha.similarity(hb) >= min_sim:
                uf.union(a, b)
            else:
                rep.rejected += 1
    rep.seconds["verify"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    rep.groups = _members(store, [[ids[x] for x in g] for g in uf.groups()])
    rep.seconds["groups"] = time.perf_counter() - t2
    rep.seconds["total"] = time.perf_counter() - t0
    return rep


def _paths(store: "VectorStore", nums: list[int], ids: list[str]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in _chunks(nums, 2048):
        t = store.get([ids[x] for x in chunk], columns=["id", "path"])
        by_id = dict(zip(t.column("id").to_pylist(), t.column("path").to_pylist()))
        out.update({x: by_id[ids[x]] for x in chunk if ids[x] in by_id})
    return out


def _chunks(seq: list, n: int) -> Iterator[list]:
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


def keeper_key(row: dict[str, Any]) -> tuple:
    """Sort key of the suggested keeper: most pixels, then oldest (capture time, else mtime), then path."""
    pixels = (row.get("width") or 0) * (row.get("height") or 0)
    taken = row.get("taken_at")
    when = taken.timestamp() * 1e9 if taken is not None else (row.get("mtime_ns") or 0)
    return (-pixels, taken is None, when, row.get("path") or "")


def _members(store: "VectorStore", groups: list[list[str]]) -> list[list[Member]]:
    cols = ["id", "path", "size", "width", "height", "taken_at", "mtime_ns", "hash", "vector"]
    out: list[list[Member]] = []
    for g in groups:
        t = store.get(g, columns=cols)
        rows = t.drop(["vector"]).to_pylist()
        if len(rows) < 2:  # deleted meanwhile
            continue
        vecs = vectors_of(t.column("vector"), store.dim)
        order = sorted(range(len(rows)), key=lambda r: keeper_key(rows[r]))
        kv = vecs[order[0]]
        scores = vecs @ kv
        members = []
        for pos, r in enumerate(order):
            row = rows[r]
            members.append(Member(path=row["path"], keeper=pos == 0, size=row.get("size"), width=row.get("width"),
                                  height=row.get("height"), score=1.0 if pos == 0 else float(scores[r]),
                                  taken_at=row.get("taken_at"), mtime_ns=row.get("mtime_ns"),
                                  same_file=pos > 0 and bool(row.get("hash")) and row["hash"] == rows[order[0]]["hash"]))
        keeper, rest = members[0], sorted(members[1:], key=lambda m: (-m.score, m.path))
        out.append([keeper, *rest])
    out.sort(key=lambda g: (-len(g), g[0].path))
    return out
