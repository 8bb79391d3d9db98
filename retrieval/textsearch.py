"""Keyword search over the ``text`` column (page text, OCR) and match snippets.

LanceDB answers keyword queries from its native full-text index (BM25, English stemming, stop
words), built by :meth:`LanceStore.optimize` and kept up to date on every indexing run. Stores
without one (FAISS) use :func:`bm25_search` here: an exact BM25 over the stored text, computed by
streaming the rows in bounded batches (two passes; fine for tens of thousands of pages, O(rows) per
query). Both score with BM25 (k1 = 1.2, b = 0.75); ranks agree, absolute scores differ (stemming).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.stores.base import Filters, Hit, VectorStore

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
#: Common English words ignored by keyword search (a subset of the usual lists).
STOP_WORDS = frozenset("""a an and are as at be but by for from has have how i if in into is it its of on or
such that the their then there these they this to was were what when where which who why will with
does do did can could should would you your""".split())
K1, B = 1.2, 0.75


def tokenize(text: str | None) -> list[str]:
    """Lower-case word tokens without stop words; a light plural/suffix fold (``pages`` → ``page``)."""
    if not text:
        return []
    return [_fold(w) for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def _fold(w: str) -> str:
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
        return w[:-1]
    return w


def matched_terms(text: str | None, query: str) -> list[str]:
    """The query's keyword tokens (stop words dropped, plurals folded) that occur in ``text``, in query order."""
    present = set(tokenize(text))
    return [t for t in dict.fromkeys(tokenize(query)) if t in present]


def bm25_search(store: "VectorStore", query: str, k: int, filters: "Filters | None" = None,
                exclude_ids: Sequence[str] = (), batch_size: int = 4096) -> list["Hit"]:
    """Exact BM25 top-``k`` over the ``text`` column of any store (rows without text never match)."""
    from imgrag.retrieval.stores.schema import META_COLUMNS, Hit

    terms = list(dict.fromkeys(tokenize(query)))
    if not terms or k < 1:
        return []
    excl = set(exclude_ids)
    # pass 1: document frequencies and average length
    n_docs = 0
    total_len = 0
    df: Counter = Counter()
    for b in store.scan(columns=["id", "text"], filters=filters, batch_size=batch_size):
        for t in b.column("text").to_pylist():
            if not t:
                continue
            toks = tokenize(t)
            n_docs += 1
            total_len += len(toks)
            present = set(toks)
            for q in terms:
                if q in present:
                    df[q] += 1
    if n_docs == 0 or not df:
        return []
    avg = total_len / n_docs
    idf = {q: math.log(1 + (n_docs - df[q] + 0.5) / (df[q] + 0.5)) for q in terms if df[q]}
    # pass 2: score (keep only the running top-k ids)
    import heapq

    best: list[tuple[float, str]] = []
    for b in store.scan(columns=["id", "text"], filters=filters, batch_size=batch_size):
        for i, t in zip(b.column("id").to_pylist(), b.column("text").to_pylist()):
            if not t or i in excl:
                continue
            toks = tokenize(t)
            tf = Counter(toks)
            s = 0.0
            for q, w in idf.items():
                f = tf.get(q, 0)
                if f:
                    s += w * f * (K1 + 1) / (f + K1 * (1 - B + B * len(toks) / avg))
            if s > 0:
                item = (s, i)
                if len(best) < k:
                    heapq.heappush(best, item)
                elif item > best[0]:
                    heapq.heapreplace(best, item)
    best.sort(key=lambda x: (-x[0], x[1]))
    if not best:
        return []
    rows = {r["id"]: r for r in store.get([i for _, i in best], columns=META_COLUMNS).to_pylist()}
    return [Hit(i, rows[i]["path"], float(s), rows[i]) for s, i in best if i in rows]


def snippet(text: str | None, query: str, width: int = 200) -> tuple[str, list[tuple[int, int]]]:
    """The ``width``-character window of ``text`` with the most query-word matches, and the
    (start, end) spans of the matches inside it (for highlighting). Whitespace is collapsed."""
    if not text:
        return "", []
    flat = " ".join(text.split())
    terms = set(tokenize(query))
    matches = [(m.start(), m.end()) for m in _WORD.finditer(flat) if _fold(m.group(0).lower()) in terms]
    if not matches:
        s = flat[:width]
        return (s + ("…" if len(flat) > width else "")), []
    # slide a window over match starts; pick the one covering most matches
    best_i, best_n = 0, 0
    j = 0
    for i, (st, _) in enumerate(matches):
        while j < len(matches) and matches[j][1] <= st + width:
            j += 1
        if j - i > best_n:
            best_i, best_n = i, j - i
    start = max(0, matches[best_i][0] - width // 4)
    end = min(len(flat), start + width)
    start = max(0, min(start, end - width))
    if start > 0:  # do not cut a word
        sp = flat.find(" ", start)
        start = sp + 1 if 0 <= sp < matches[best_i][0] else start
    piece = flat[start:end]
    spans = [(a - start, b - start) for a, b in matches if a >= start and b <= end]
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(flat) else ""
    return prefix + piece + suffix, [(a + len(prefix), b + len(prefix)) for a, b in spans]


def highlight(snip: str, spans: Iterable[tuple[int, int]], before: str = "[", after: str = "]") -> str:
    """Wrap each span of ``snip`` in ``before``/``after`` (e.g. ANSI bold, or ``<mark>``)."""
    out, last = [], 0
    for a, b in sorted(spans):
        out.append(snip[last:a])
        out.append(before + snip[a:b] + after)
        last = b
    out.append(snip[last:])
    return "".join(out)
