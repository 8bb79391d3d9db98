"""Vector, keyword and hybrid search over photos, document pages and OCR'd images.

- ``vector``: the embedding search of :mod:`imgrag.retrieval.queries.search` (how an item looks); the score
  is the cosine similarity.
- ``text``: BM25 keyword search over the stored page text / OCR text (what a page says); the score is the
  keyword match in 0–1 (:func:`keyword_evidence`).
- ``hybrid``: every candidate of either side gets its cosine similarity (computed for keyword-only hits)
  and its keyword match ``kw``, and one relevance ``score = b + (1 − b)·λ·kw`` (``b = max(s, 0)``), with
  ``λ = T/(V+T)`` from the weights ``V,T`` (``0,1``: keyword hits only, scored by ``kw``). A keyword miss
  is *no evidence*, not negative evidence: an item without matching text (a photo) keeps exactly its
  similarity, so hybrid never ranks or cuts a photo below where vector search puts it; words that match
  raise a page towards 1. The cutoff (``min_score``) applies to
  this displayed score. (Until 2026-11 hybrid showed reciprocal-rank-fusion values of about 0.01–0.03 and
  dropped the vector side when its ranking looked uninformative, which emptied photo results in mixed
  indexes; :func:`rrf_fuse` and :func:`fuse` remain for callers that want rank fusion.)
- ``auto``: hybrid when the index holds any text, else vector.

The keyword match ``kw`` = (share of the query's words the text holds)² × strength / √(pages sharing the
match), 0 without a match (:func:`keyword_evidence`). *Strength* is BM25 / max(best BM25 of the query,
BM25 of two words that only this page holds): BM25's order, but full only where the best page's match is
worth two words no other page says, so one common word ("cat" in R's manuals, "object") is weak evidence
however well a page matches it. *Sharing* is how many keyword hits hold at least the words this page
holds: a match that singles one page out keeps its weight; a word a dozen pages say lifts none of them
far. Before 2026-12 strength was BM25 / best BM25, so the best page for any word was a full match and
pages that say "cat" outranked cat photos (6 of 282 bench queries returned fewer relevant photos than
vector search; 0 since, bench/mixed_search.py). In hybrid, a page whose similarity is far below the best
photo's gets no lift from weak words (:func:`blend`). When the vector ranking carries no information (its best
similarity does not exceed the candidates' median by ``vector_gate``; lite on text-only pages), keyword
matches are ordered by ``kw`` alone: their relevance uses the median similarity instead of their own, but
never falls below their own similarity; a match found by stemming alone ("personal" for "a person") keeps
its own similarity (it took photos' places).

Each hit's ``row`` gains ``similarity``, ``keyword``, ``matched_terms`` (and ``bm25``, ``rank_vector``,
``rank_text`` where they apply), plus ``snippet`` (the best-matching window of its text) and
``match_spans`` (character spans of query words inside the snippet) for display.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Sequence

import numpy as np

from imgrag.retrieval.embedders import model_defaults
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.queries.copies import distinct_top
from imgrag.retrieval.stores.base import Filters, Hit

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index

MODES = ("auto", "vector", "text", "hybrid")
RRF_K = 60
DEFAULT_WEIGHTS = (1.0, 1.0)  # (vector, text)
COVER_POWER = 2  # keyword match = (share of the query's words present) ** COVER_POWER × strength / sharing
#: a keyword match can have full strength only when its BM25 reaches that of FULL_MATCH words each found on
#: that page alone (FULL_MATCH × unique_idf; 1.75–2 best of 1.5–3, bench/mixed_search.py --sweep)
FULL_MATCH: float | None = 2.0
#: how many of the query's words a hit found by the store's stemming alone counts for (none matched as words)
STEM_ONLY_WORDS = 0.5
SHARE_POWER = 0.5  # kw ÷ (pages whose matched words include this page's) ** SHARE_POWER (best of 0–1)
#: hybrid: a page whose similarity is more than VISUAL_MARGIN + MARGIN_SLOPE·kw below the best photo's among the
#: vector candidates gets no keyword lift (lite cosines; CLIP/SigLIP's narrower range rarely reaches it).
#: 0.25 + 0.1·kw (2026-12-03) beat 0.3 + 0.2·kw on bench/mixed_search.py and on a second corpus (the samples
#: beside four other R manuals) at equal page and mixed recall; 0.2, or no slope, cost mixed recall
VISUAL_MARGIN = 0.25
MARGIN_SLOPE = 0.1


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
                     with_snippets: bool = True, vector_gate: float | None = None,
                     all_copies: bool = False) -> list[Hit]:
    """Top-``k`` items for a text query in ``mode`` (``auto``/``vector``/``text``/``hybrid``).

    Each hit's ``score`` is what the user sees and what ``min_score`` cuts: the cosine similarity (vector),
    the keyword match in 0–1 (text) or the relevance of the module docstring (hybrid). ``weights`` and
    ``vector_gate`` default per model (:func:`hybrid_defaults`); ``rrf_k`` is accepted for compatibility.
    Exact copies are one result listing the others in ``row["copies"]`` unless ``all_copies``.
    """
    from imgrag.retrieval.queries.search import search

    if k < 1:
        raise BadQueryError(f"k must be at least 1, got {k}")
    if not query or not query.strip():
        raise BadQueryError("empty query; give some text")
    mode = resolve_mode(index, mode)
    dw, dg = hybrid_defaults(index.manifest.model)
    w = parse_weights(weights) if weights is not None else dw
    gate = dg if vector_gate is None else float(vector_gate)
    n = max(int(candidates or 0), 4 * k, 50)
    if mode == "vector":
        hits = [_with(h, h.score, similarity=float(h.score))
                for h in search(index, query, k=k, filters=filters, min_score=min_score, all_copies=all_copies)]
        return add_snippets(hits, query) if with_snippets else hits
    qv = _query_vector(index, query) if mode == "hybrid" else None

    def fetch(m: int) -> tuple[list[Hit], bool]:  # m candidates a side → (ranked hits, more may exist)
        if mode == "text":
            txt = index.store.text_search(query, m, filters=filters)
            ev = keyword_evidence(txt, query, text_rows(index) if txt else None)
            got = [_with(h, ev[h.id][0], keyword=ev[h.id][0], bm25=float(h.score), matched_terms=ev[h.id][1],
                         rank_text=r) for r, h in enumerate(txt, 1)]
            got.sort(key=lambda h: (-h.score, h.row["rank_text"]))
            return _cut(got, min_score), len(txt) >= m
        vec = search(index, qv, k=m, filters=filters, all_copies=True) if w[0] > 0 or w[1] == 0 else []
        txt = index.store.text_search(query, m, filters=filters) if w[1] > 0 else []
        return _cut(blend(index, qv, vec, txt, query, w, gate), min_score), len(vec) >= m or len(txt) >= m

    hits = distinct_top(fetch, k, n, all_copies)  # exact copies as one result (queries/copies.py)
    return add_snippets(hits, query) if with_snippets else hits


def keyword_evidence(txt: Sequence[Hit], query: str,
                     n_text: int | None = None) -> dict[str, tuple[float, list[str]]]:
    """id → (keyword match in 0–1, matched query words) for keyword hits (``score`` = BM25), ``n_text``
    being the number of items with text (the BM25 corpus; :func:`text_rows`).

    The match is coverage² × strength / sharing^SHARE_POWER (module docstring). Coverage, the share of the
    query's words found, is squared to discount partial matches: a page holding one word of a four-word
    photo caption ("side", "looking") gets 1/16 of a full match. Strength is BM25 ÷ max(best hit's BM25,
    FULL_MATCH × :func:`unique_idf`): BM25's order, but the best page for a common word is no full match
    just for being the best. Without ``n_text`` (or with ``FULL_MATCH = None``) it is BM25 ÷ the best
    hit's, the rule before 2026-12. Sharing counts the hits whose matched words include this hit's: "cat",
    said by 7 pages of R's manuals, is divided by √7; a phrase only one page holds is not. A hit the store
    found by stemming that the plain word fold misses counts half a word (:data:`STEM_ONLY_WORDS`), shared
    by all hits.
    """
    from imgrag.retrieval.textsearch import matched_terms, tokenize

    n_terms = max(len(dict.fromkeys(tokenize(query))), 1)
    best = max((float(h.score) for h in txt), default=0.0)
    # BM25 relative to the best hit (keeps BM25's order), but to at least the full-match level
    scale = max(best, FULL_MATCH * unique_idf(n_text)) if n_text and FULL_MATCH else best  # None: the old rule
    words = {h.id: matched_terms(h.row.get("text"), query) for h in txt}
    sets = [frozenset(w) for w in words.values()]
    out: dict[str, tuple[float, list[str]]] = {}
    for h in txt:
        mine = frozenset(words[h.id])
        sharing = sum(1 for o in sets if mine <= o)  # an empty set (stemmed match only) is in every hit
        # a match the store found only by stemming ("personal" for "a person") is half a word: a stem is
        # weaker evidence than the word itself, and alone it must not read as a full match of a one-word query
        cover = min(len(mine) or STEM_ONLY_WORDS, n_terms) / n_terms
        strength = float(h.score) / scale if scale > 0 else 0.0
        out[h.id] = (cover ** COVER_POWER * strength / max(sharing, 1) ** SHARE_POWER, words[h.id])
    return out


def unique_idf(n_text: int) -> float:
    """BM25's idf of a word that one item of ``n_text`` holds (the most a single word can weigh)."""
    return math.log(1.0 + (max(n_text, 1) - 0.5) / 1.5)


def text_rows(index: "Index") -> int:
    """How many items hold text (the corpus BM25 counts), cached per store until its row count changes."""
    store = index.store
    total = store.count()
    try:
        cached = _TEXT_ROWS.get(store)
    except TypeError:  # a store that cannot be weakly referenced: count every time
        cached = None
    if cached is not None and cached[0] == total:
        return cached[1]
    import pyarrow.compute as pc

    n = 0
    for b in store.scan(columns=["text"]):
        n += int(pc.sum(pc.greater(pc.utf8_length(b.column("text")), 0)).as_py() or 0)
    try:
        _TEXT_ROWS[store] = (total, n)
    except TypeError:
        pass
    return n


_TEXT_ROWS: "weakref.WeakKeyDictionary[object, tuple[int, int]]" = weakref.WeakKeyDictionary()


def relevance(similarity: float, keyword: float, lam: float) -> float:
    """``b + (1 − b)·λ·kw`` with ``b = max(s, 0)``; exactly ``s`` without a keyword match (``kw = 0``)."""
    if keyword <= 0:
        return float(similarity)
    b = max(float(similarity), 0.0)
    return b + (1.0 - b) * lam * float(keyword)


def blend(index: "Index", qv: np.ndarray, vec: Sequence[Hit], txt: Sequence[Hit], query: str,
          weights: Sequence[float], vector_gate: float = 0.0) -> list[Hit]:
    """Hybrid hits: the union of both candidate lists, each scored by :func:`relevance`, best first.

    A page's keyword match counts (``row["keyword"]``, the lift) only while its similarity is within
    ``VISUAL_MARGIN + MARGIN_SLOPE·kw`` of the best photo's (the best item without text among the vector
    candidates): a page that looks far less like the query than a photo is not lifted over it by weak
    words ("a cat" and three pages of R's cat()), a strong match (a phrase only that page holds) still is.
    """
    lam = float(weights[1]) / float(weights[0] + weights[1])
    ev = keyword_evidence(txt, query, text_rows(index) if txt else None)
    first: dict[str, Hit] = {}
    for h in [*vec, *txt]:
        first.setdefault(h.id, h)
    sims = {h.id: float(h.score) for h in vec}
    missing = [i for i in first if i not in sims]
    if missing:  # keyword-only hits: their similarity from the stored vectors
        got = index.store.get(missing, columns=["id", "vector"])
        for i, v in zip(got["id"].to_pylist(), got["vector"].to_pylist()):
            sims[i] = float(np.asarray(v, dtype=np.float32) @ qv)
    informative = vector_informative(vec, vector_gate)
    base = float(np.median([h.score for h in vec])) if vec and not informative else None
    rank_v = {h.id: r for r, h in enumerate(vec, 1)}
    rank_t = {h.id: r for r, h in enumerate(txt, 1)}
    bm25 = {h.id: float(h.score) for h in txt}
    best_photo = max((float(h.score) for h in vec if not h.row.get("text")), default=None)
    out = []
    for i, h in first.items():
        s = sims.get(i, 0.0)
        kw, words = ev.get(i, (0.0, []))
        if kw > 0 and best_photo is not None and best_photo - s > VISUAL_MARGIN + MARGIN_SLOPE * kw:
            kw = 0.0  # looks far less like the query than the best photo, and the words are weak: no lift
        # vector weight 0 (--weights 0,1): the similarity takes no part, keyword hits in keyword-match order
        score = relevance(s if weights[0] > 0 else 0.0, kw, lam)
        if base is not None and kw > 0 and words:
            # the similarity ranking is noise: order keyword matches by kw alone; a match by stemming alone
            # ("personal" for "a person") is too weak to borrow the median: it keeps its own similarity
            score = max(s, relevance(base, kw, lam))
        extra = {"similarity": s, "keyword": kw, "matched_terms": words}
        if i in rank_v:
            extra["rank_vector"] = rank_v[i]
        if i in rank_t:
            extra.update(rank_text=rank_t[i], bm25=bm25[i])
        out.append(_with(h, score, **extra))
    out.sort(key=lambda h: (-h.score, -h.row["keyword"], h.id))
    return out


def _query_vector(index: "Index", query: str) -> np.ndarray:
    from imgrag.retrieval.queries.search import Term, query_vector

    return query_vector(index, [Term("text", query, 1.0)])[0]


def _with(h: Hit, score: float, **row) -> Hit:
    return Hit(h.id, h.path, float(score), {**h.row, **row})


def _cut(hits: list[Hit], min_score: float | None) -> list[Hit]:
    return hits if min_score is None else [h for h in hits if h.score >= min_score]


def add_snippets(hits: Sequence[Hit], query: str, width: int = 200) -> list[Hit]:
    """Hits whose ``row`` gains ``snippet`` and ``match_spans`` from its text (empty without text)."""
    from imgrag.retrieval.textsearch import snippet

    out = []
    for h in hits:
        snip, spans = snippet(h.row.get("text"), query, width)
        out.append(Hit(h.id, h.path, h.score, {**h.row, "snippet": snip, "match_spans": spans}))
    return out
