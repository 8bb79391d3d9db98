"""The text evidence about a retrieved item that answers rest on (``EvidenceItem.facts``): file name, folder,
page, capture date, size, label, the embedder's nearest class names, EXIF comments, page / OCR text.

All of it is untrusted data from the file: prompts quote it (:mod:`imgrag.retrieval.generators.prompt`) and the
grounding check (:mod:`imgrag.retrieval.queries.grounding`) traces answers to it.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from typing import TYPE_CHECKING

from imgrag.retrieval.embedders import model_defaults
from imgrag.retrieval.paths import display, to_fs
from imgrag.retrieval.stores.base import Hit

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index

log = logging.getLogger(__name__)


def item_facts(index: "Index", h: Hit, question: str = "") -> dict[str, str]:
    """Text evidence about a hit (all of it untrusted data from the file)."""
    row = h.row
    f: dict[str, str] = {"file": display(os.path.basename(h.path))}
    parent = display(os.path.basename(os.path.dirname(h.path)))
    if parent:
        f["folder"] = parent
    if row.get("page") is not None:
        f["page"] = str(row["page"])
    t = row.get("taken_at")
    if t is not None:
        f["taken"] = t.isoformat(sep=" ", timespec="minutes") if isinstance(t, datetime) else str(t)
    if row.get("width") and row.get("height"):
        f["size"] = f"{row['width']}x{row['height']}"
    if row.get("label"):
        f["label"] = str(row["label"])
    labels = _class_labels(index, h)
    if labels:
        f["looks like"] = labels
    if row.get("page") is None:
        comment = exif_text(h.path)
        if comment:
            f["exif comment"] = comment
    if row.get("text"):
        if row.get("page") is not None:  # a document page: the passage around the question's words
            from imgrag.retrieval.textsearch import snippet

            f["page text"] = snippet(str(row["text"]), question, width=560)[0] if question else str(row["text"])
        else:
            f["text in image"] = str(row["text"])
    return f


_EXIF_TEXT_TAGS = {0x010E: "description", 0x9286: "user comment", 0x9C9C: "comment", 0x9C9F: "subject"}


def exif_text(path: str, limit: int = 400) -> str | None:
    """ImageDescription / UserComment / XPComment / XPSubject from the file's EXIF (header only, no
    pixel decoding); None when absent or unreadable. Untrusted data like every other fact."""
    try:
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(to_fs(path)) as img:
                exif = img.getexif()
                vals = [exif.get(t) for t in (0x010E, 0x9C9C, 0x9C9F)]
                vals.append(exif.get_ifd(0x8769).get(0x9286))
    except Exception:  # noqa: BLE001 - unreadable EXIF means "no comment"
        return None
    out = []
    for v in vals:
        if isinstance(v, bytes):
            if v[:8] in (b"ASCII\0\0\0", b"UNICODE\0", b"\0" * 8):  # UserComment's 8-byte charset prefix
                enc = "utf-16" if v[:8] == b"UNICODE\0" else "latin-1"
                v = v[8:].decode(enc, errors="replace")
            else:
                v = v.decode("utf-16-le" if len(v) % 2 == 0 and b"\0" in v else "utf-8", errors="replace")
        if v:
            v = str(v).strip("\x00 ").strip()
            if v and v not in out:
                out.append(v)
    text = " | ".join(out)
    return text[:limit] or None


def _class_labels(index: "Index", h: Hit, top: int = 3) -> str | None:
    """The known classes nearest the stored vector (what the image looks like), for embedders with a class
    vocabulary (``defaults(spec).class_names``); None otherwise, or when they cannot be had."""
    if not model_defaults(index.manifest.model).class_names:
        return None  # without touching index.embedder: building one may import its model library
    try:
        import numpy as np

        got = index.store.get([h.id], columns=["id", "vector"])
        if not got.num_rows:
            return None
        v = np.asarray(got["vector"][0].as_py(), dtype=np.float32)
        return ", ".join(index.embedder.nearest_class_names(v, top)) or None
    except Exception as e:  # noqa: BLE001 - labels are a nicety; the answer still works without them
        log.debug("class labels unavailable: %s", e)
        return None
