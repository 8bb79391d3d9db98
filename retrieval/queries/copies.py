"""Exact copies in search results: one result per content, listing the other paths that hold it.

Copied files, symlinks and the same photo in two albums have the same content hash (column ``hash``)
and the same vector, so they rank side by side and would fill a top 5 with one picture. They are
folded into the best-ranked of them (ties: the ranking's own order), whose ``row["copies"]`` lists the
other paths (stored form; callers show them with :func:`imgrag.retrieval.paths.display`).

A document page's row holds its *document's* hash, so the key is hash + page: two copies of a PDF fold
page by page, never all pages of a document into one. Rows without a hash are never folded; nothing
that is not an exact copy is ever dropped.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from imgrag.retrieval.stores.base import Hit


def copy_key(row: Mapping[str, Any]) -> str | None:
    """Content key of a row: its hash, plus ``#page=n`` for a document page; None without a hash."""
    h = row.get("hash")
    if not h:
        return None
    return f"{h}#page={row['page']}" if row.get("page") else str(h)


def collapse(hits: Sequence[Hit]) -> list[Hit]:
    """``hits`` (best first) with exact copies folded into their first hit, whose row gains ``copies``
    (the other hits' paths in ranking order; ``[]`` when it has none). Order is otherwise kept."""
    first: dict[str, int] = {}
    out: list[Hit] = []
    for h in hits:
        key = copy_key(h.row)
        j = first.get(key) if key is not None else None
        if j is None:
            if key is not None:
                first[key] = len(out)
            out.append(Hit(h.id, h.path, h.score, {**h.row, "copies": []}))
        elif h.path != out[j].path and h.path not in out[j].row["copies"]:
            out[j].row["copies"].append(h.path)
    return out


def distinct_top(fetch: Callable[[int], tuple[list[Hit], bool]], k: int, n: int,
                 all_copies: bool = False) -> list[Hit]:
    """Top ``k`` distinct contents from ``fetch(n) -> (hits best first, more may exist)``.

    Fetches ``n`` candidates and, while folding copies leaves no more than ``k`` contents and the fetch
    was full, four times as many: one content beyond the ``k``-th is needed so the ``k``-th's own copies
    (same vector, same score) are all seen. ``all_copies`` returns the plain top ``k``, every path apart.
    """
    if all_copies:
        return fetch(max(n, k))[0][:k]
    n = max(n, k + 1)
    while True:
        hits, more = fetch(n)
        out = collapse(hits)
        if len(out) > k or not more:
            return out[:k]
        n *= 4
