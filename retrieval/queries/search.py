"""Text → image, image → image and weighted combinations (``"beach" + 0.5*photo.jpg - "people"``).

A query is a list of :class:`Term` (text or image, signed weight). Its vector is the normalised
weighted sum of the term embeddings — the same query arithmetic rclip offers, on any store.
An image term that is already in the index uses its stored vector (no re-embedding, exact) and is
excluded from the results.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np

from imgrag.retrieval.embedders.base import l2_normalize
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.paths import display, to_fs, to_stored
from imgrag.retrieval.queries.copies import distinct_top
from imgrag.retrieval.stores.base import Filters, Hit

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from imgrag.retrieval.index import Index


@dataclass(frozen=True)
class Term:
    """One query term. ``value`` is text, an image file path, or a PIL image (kind ``"image"``)."""

    kind: str  # "text" | "image"
    value: object
    weight: float = 1.0


QueryLike = Union[str, "Image.Image", Sequence[Term], np.ndarray]

_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif")
_WEIGHT = re.compile(r"^\s*([+-]?\d+(?:\.\d*)?|\.\d+)\s*\*\s*(.+)$", re.S)


def parse_query(expr: str) -> list[Term]:
    """Parse ``'beach + 0.5*image:ref.jpg - "people"'`` into terms.

    Terms are joined by `` + `` or `` - `` (with spaces around the sign, so ``t-shirt`` stays one
    word); a term may start with a weight ``0.5*``; ``image:PATH`` (or a path to an existing image
    file) is an image term; quotes are optional and removed.
    """
    if not expr or not expr.strip():
        raise BadQueryError("empty query; give some text, an image, or both")
    parts = re.split(r"\s+([+-])\s+", " " + expr.strip() + " ")
    terms: list[Term] = []
    sign = 1.0
    for i, part in enumerate(parts):
        if i % 2 == 1:
            sign = 1.0 if part == "+" else -1.0
            continue
        raw = part.strip()
        if not raw:
            if i == 0:
                continue
            raise BadQueryError(f"missing term after '{'+' if sign > 0 else '-'}' in query {expr!r}")
        weight = 1.0
        m = _WEIGHT.match(raw)
        if m:
            weight, raw = float(m.group(1)), m.group(2).strip()
        raw = _unquote(raw)
        if raw.startswith("image:"):
            path = os.path.expanduser(raw[len("image:"):])
            if not os.path.isfile(path):
                raise BadQueryError(f"query image not found: {path}")
            terms.append(Term("image", os.path.abspath(path), sign * weight))
        elif raw.lower().endswith(_IMAGE_EXT) and os.path.isfile(os.path.expanduser(raw)):
            terms.append(Term("image", os.path.abspath(os.path.expanduser(raw)), sign * weight))
        else:
            terms.append(Term("text", raw, sign * weight))
        sign = 1.0
    if not terms:
        raise BadQueryError("empty query; give some text, an image, or both")
    if all(t.weight <= 0 for t in terms):
        raise BadQueryError("a query needs at least one positive term")
    return terms


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        try:
            return shlex.split(s)[0]
        except ValueError:
            return s[1:-1]
    return s


def load_query_image(path: str) -> "Image.Image":
    """Decode a query image with the same robust decoder the indexer uses."""
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    try:
        data = Path(to_fs(path)).read_bytes()
    except OSError as e:
        raise BadQueryError(f"cannot read query image {display(path)}: {e.strerror or e}") from e
    try:
        return decode_image(data, draft_size=None).image
    except ImageDecodeError as e:
        raise BadQueryError(f"query image {display(path)}: {e}") from e


def query_vector(index: "Index", terms: Sequence[Term], use_adapter: bool = True) -> tuple[np.ndarray, list[str]]:
    """Normalised (d,) query vector for ``terms`` and the ids to exclude (query images in the index).

    Text terms pass through the index's tuned adapter (``imgrag tune``) unless ``use_adapter`` is False or
    it was switched off for this index (``--no-adapter``); image terms and stored vectors never do.
    """
    emb = index.embedder
    vec = np.zeros(index.manifest.dim, dtype=np.float32)
    exclude: list[str] = []
    texts = [t for t in terms if t.kind == "text"]
    if texts:
        tv = emb.embed_texts([str(t.value) for t in texts])
        if use_adapter:
            from imgrag.retrieval.tune.adapter import active_adapter

            adapter = active_adapter(index)
            tv = adapter.apply_text(tv) if adapter is not None else tv
        for t, v in zip(texts, tv):
            vec += t.weight * v
    for t in terms:
        if t.kind != "image":
            continue
        if isinstance(t.value, str):
            try:  # a file-system path (argv) or an id: the store keys names that are not UTF-8 escaped
                key = to_stored(t.value)
            except ValueError:
                raise BadQueryError(f"not a usable file name: {display(t.value)}") from None
            stored = index.store.get([key], columns=["id", "vector"])
            if stored.num_rows:
                v = np.asarray(stored["vector"][0].as_py(), dtype=np.float32)
                exclude.append(key)
            else:
                v = emb.embed_images([load_query_image(t.value)])[0]
        else:
            v = emb.embed_images([t.value.convert("RGB")])[0]
        vec += t.weight * v
    if not np.isfinite(vec).all() or np.linalg.norm(vec) < 1e-6:
        raise BadQueryError("the query terms cancel out; use different weights")
    return l2_normalize(vec[None, :])[0], exclude


def to_terms(query: QueryLike) -> list[Term] | np.ndarray:
    if isinstance(query, np.ndarray):
        return query
    if isinstance(query, str):
        return parse_query(query)
    if hasattr(query, "convert") and hasattr(query, "size"):  # PIL image
        return [Term("image", query, 1.0)]
    return list(query)  # sequence of Term


def search(index: "Index", query: QueryLike, k: int = 10, filters: Filters | None = None,
           min_score: float | None = None, exclude_ids: Sequence[str] = (),
           sort_by_date: bool = False, use_adapter: bool = True, all_copies: bool = False) -> list[Hit]:
    """Top-``k`` items for a text / image / combined query, best first.

    ``min_score`` hides weak matches (a relevance cutoff on cosine similarity); ``sort_by_date``
    reorders the surviving hits by capture time (oldest first, undated last) after the cutoff.
    Exact copies (same content hash) are one result whose ``row["copies"]`` lists the other paths
    (:mod:`imgrag.retrieval.queries.copies`), still ``k`` distinct results; ``all_copies`` shows each path.
    """
    if k < 1:
        raise BadQueryError(f"k must be at least 1, got {k}")
    terms = to_terms(query)
    if isinstance(terms, np.ndarray):
        vec, excl = l2_normalize(terms.reshape(1, -1))[0], []
    else:
        vec, excl = query_vector(index, terms, use_adapter)
    def fetch(n: int) -> tuple[list[Hit], bool]:
        got = index.store.search(vec[None, :], n, filters=filters, exclude_ids=[*exclude_ids, *excl])[0]
        kept = got if min_score is None else [h for h in got if h.score >= min_score]
        return kept, len(got) >= n and len(kept) == len(got)  # more may follow only if none fell below the cut

    hits = distinct_top(fetch, k, k if all_copies else 2 * k, all_copies)
    if sort_by_date:
        hits.sort(key=lambda h: (h.row.get("taken_at") is None, h.row.get("taken_at") or 0))
    return hits


def search_text(index: "Index", text: str, k: int = 10, filters: Filters | None = None) -> list[Hit]:
    """Plain text query (no ``+``/``-`` parsing)."""
    return search(index, [Term("text", text, 1.0)], k=k, filters=filters)


def search_image(index: "Index", image: "str | Image.Image", k: int = 10,
                 filters: Filters | None = None) -> list[Hit]:
    """Nearest images to an image file path or PIL image (the query image itself excluded)."""
    if isinstance(image, str):
        image = os.path.abspath(os.path.expanduser(image))
    return search(index, [Term("image", image, 1.0)], k=k, filters=filters)
