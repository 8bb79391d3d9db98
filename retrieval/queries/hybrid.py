"""Vector, keyword and hybrid search (reciprocal rank fusion) for document pages and OCR'd images.

- ``vector``: the embedding search of :mod:`imgrag.retrieval.queries.search` (how the page looks).
- ``text``: BM25 keyword search over the stored page text / OCR text (what the page says).
- ``hybrid``: both lists fused by weighted reciprocal rank fusion (Cormack et al., SIGIR 2009):
  ``score(d) = Σ_m w_m / (rrf_k + rank_m(d))``, ranks 1-based, over the top ``candidates`` of each.
  RRF needs no score calibration between cosine similarities and BM25 scores.
- ``auto``: hybrid when the index holds any text, else vector.

A ranking that carries no information only adds noise to the fusion: a page that both lists hold at
middling ranks outranks the keyword search's best page. So the vector ranking takes part only when its
best match stands out — its cosine similarity exceeds the median of the vector candidates by at least
``vector_gate`` — and the lists are weighted. Defaults are the embedder family's own
(:func:`hybrid_defaults`, from ``ModelDefaults``: the offline ``lite`` model, which cannot read, uses weights
0.5,1 and gate 0.10, measured with ``bench/docs_retrieval.py``); other models use plain RRF (1,1, no gate)
until measured.

Each hit's ``row`` gains ``snippet`` (the best-matching window of its text) and ``match_spans``
(character spans of query words inside the snippet) for display.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from imgrag.retrieval.embedders import model_defaults
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.stores.base import Filters, Hit

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index

MODES = ("auto", "vector", "text", "hybrid")
RRF_K = 60
DEFAULT_WEIGHTS = (1.0, 1.0)  # (vector, text)


def hybrid_defaults(model_id: str | None) -> tuple[tuple[float, float], float]:
    """(vector weight, text weight) and vector gate for an index built with ``model_id`` (its embedder
    family's defaults; no weights are loaded)."""
    d = model_defaults(model_id)
    return tuple(d.hybrid_weights), float(d.vector_gate)


def vector_informative(hits: Sequence[Hit], gate: float) -> bool:
    """Whether a vector ranking's best match stands out: top score − median score ≥ ``gate``."""
    if gate <= 0:
        return True
    if len(hits) < 2:
        return False
    scores = sorted((float(h.score) for h in hits), reverse=True)
    return scores[0] - float(np.median(scores)) >= gate


def fuse(index: "Index", vec: Sequence[Hit], txt: Sequence[Hit], weights: Sequence[float] | str | None = None,
         vector_gate: float | None = None, rrf_k: int = RRF_K) -> list[Hit]:
    """Hybrid fusion of a vector and a keyword ranking with the index model's defaults."""
    dw, dg = hybrid_defaults(index.manifest.model)
    w = parse_weights(weights) if weights is not None else dw
    gate = dg if vector_gate is None else float(vector_gate)
    if not vector_informative(vec, gate):
        vec = []
    return rrf_fuse([list(vec), list(txt)], w, rrf_k)


def rrf_fuse(lists: Sequence[Sequence[Hit]], weights: Sequence[float], rrf_k: int = RRF_K) -> list[Hit]:
    """Weighted reciprocal rank fusion of ranked hit lists (ties broken by best single rank, then id).

    Returned hits carry the fused score; ``row`` holds each source's rank and score
    (``rank_vector``/``score_vector``, ``rank_text``/``score_text`` when two lists are given as
    vector, text).
    """
    if len(lists) != len(weights):
        raise ValueError(f"lists and weights do not match: {len(lists)} vs {len(weights)}")
    names = ("vector", "text") if len(lists) == 2 else tuple(f"list{i}" for i in range(len(lists)))
    fused: dict[str, float] = {}
    first: dict[str, Hit] = {}
    extra: dict[str, dict] = {}
    best_rank: dict[str, int] = {}
    for name, hits, w in zip(names, lists, weights):
        for rank, h in enumerate(hits, 1):
            fused[h.id] = fused.get(h.id, 0.0) + float(w) / (rrf_k + rank)
            first.setdefault(h.id, h)
            extra.setdefault(h.id, {})[f"rank_{name}"] = rank
            extra[h.id][f"score_{name}"] = float(h.score)
            best_rank[h.id] = min(best_rank.get(h.id, rank), rank)
    order = sorted(fused, key=lambda i: (-fused[i], best_rank[i], i))
    out = []
    for i in order:
        h = first[i]
        out.append(Hit(h.id, h.path, fused[i], {**h.row, **extra[i]}))
    return out


def parse_weights(spec: str | Sequence[float] | None) -> tuple[float, float]:
    """``"1,0.5"`` → (1.0, 0.5) = (vector weight, text weight)."""
    if spec is None:
        return DEFAULT_WEIGHTS
    if isinstance(spec, str):
        parts = [p.strip() for p in spec.split(",")]
        try:
            vals = [float(p) for p in parts]
        except ValueError:
            raise BadQueryError(f"--weights {spec!r}: use two numbers VECTOR,TEXT such as 1,0.5") from None
    else:
        vals = [float(v) for v in spec]
    if len(vals) != 2 or any(v < 0 for v in vals) or sum(vals) <= 0:
        raise BadQueryError(f"weights must be two non-negative numbers VECTOR,TEXT, not all zero; got {spec!r}")
    return vals[0], vals[1]


def resolve_mode(index: "Index", mode: str) -> str:
    if mode not in MODES:
        raise BadQueryError(f"unknown search mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "auto":
        return "hybrid" if index.store.has_text() else "vector"
    return mode


def search_documents(index: "Index", query: str, k: int = 10, mode: str = "hybrid",
                     filters: Filters | None = None, weights: Sequence[float] | str | None = None,
                     rrf_k: int = RRF_K, candidates: int | None = None, min_score: float | None = None,
                     with_snippets: bool = True, vector_gate: float | None = None) -> list[Hit]:
    """Top-``k`` items for a text query in ``mode`` (``auto``/``vector``/``text``/``hybrid``).

    ``min_score`` applies to vector cosine similarity (vector mode, or the vector side of hybrid).
    ``weights`` and ``vector_gate`` default per model (:func:`hybrid_defaults`).
    """
    from imgrag.retrieval.queries.search import search

    if k < 1:
        raise BadQueryError(f"k must be at least 1, got {k}")
    if not query or not query.strip():
        raise BadQueryError("empty query; give some text")
    mode = resolve_mode(index, mode)
    w = parse_weights(weights) if weights is not None else hybrid_defaults(index.manifest.model)[0]
    n = max(int(candidates or 0), 4 * k, 50)
    if mode == "vector":
        hits = search(index, query, k=k, filters=filters, min_score=min_score)
    elif mode == "text":
        hits = index.store.text_search(query, k, filters=filters)
    else:
        vec = search(index, query, k=n, filters=filters, min_score=min_score) if w[0] > 0 else []
        txt = index.store.text_search(query, n, filters=filters) if w[1] > 0 else []
        hits = fuse(index, vec, txt, w, vector_gate, rrf_k)[:k]
    return add_snippets(hits, query) if with_snippets else hits


def add_snippets(hits: Sequence[Hit], query: str, width: int = 200) -> list[Hit]:
    """Hits whose ``row`` gains ``snippet`` and ``match_spans`` from its text (empty without text)."""
    from imgrag.retrieval.textsearch import snippet

    out = []
    for h in hits:
        snip, spans = snippet(h.row.get("text"), query, width)
        out.append(Hit(h.id, h.path, h.score, {**h.row, "snippet": snip, "match_spans": spans}))
    return out
