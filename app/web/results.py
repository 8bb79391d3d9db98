"""One search result as the web UI shows it (caption, details, JSON), and how a file name is shown."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from imgrag.retrieval.paths import display


@dataclass
class ResultItem:
    """One search result as the UI shows it."""

    id: str
    path: str
    name: str
    score: float
    taken_at: datetime | None
    width: int | None
    height: int | None
    label: str | None
    page: int | None
    thumb: str  # thumbnail file
    snippet: str = ""  # document pages / OCR'd images: the page text around the query's words
    spans: tuple = ()  # (start, end) character spans of the query's words inside ``snippet``
    similarity: float | None = None  # cosine similarity (``score`` is it, raised by a keyword match in hybrid)
    keyword: float | None = None  # keyword match in 0–1 (hybrid / text search over page or OCR text)
    matched: tuple = ()  # the query's words found in the item's text
    copies: tuple = ()  # other paths (display form) holding the same content, folded into this result

    @property
    def caption(self) -> str:
        """Plain text (the UI escapes it): score, file name, capture date."""
        parts = [f"{self.score:.3f}", self.name + (f" p.{self.page}" if self.page else "")]
        if self.matched:
            parts.append("words: " + ", ".join(self.matched))
        if self.taken_at:
            parts.append(self.taken_at.strftime("%Y-%m-%d"))
        if self.copies:  # the paths themselves are in the details / viewer
            parts.append(f"+{len(self.copies)} cop{'y' if len(self.copies) == 1 else 'ies'}")
        if self.snippet:
            parts.append(self.snippet)
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "name": self.name, "score": round(self.score, 6),
                "taken_at": self.taken_at.isoformat() if self.taken_at else None, "width": self.width,
                "height": self.height, "label": self.label, "page": self.page, "snippet": self.snippet,
                "match_spans": [list(sp) for sp in self.spans],
                "similarity": None if self.similarity is None else round(self.similarity, 6),
                "keyword": None if self.keyword is None else round(self.keyword, 6),
                "matched_terms": list(self.matched), "copies": list(self.copies)}


def display_name(path: str) -> str:
    """File name for display (file names are untrusted): :func:`imgrag.retrieval.paths.display` — control
    characters as ``\\xNN``, a byte that is not UTF-8 as ``\\xe9``, a backslash as ``\\\\``."""
    return display(os.path.basename(path) or path)
