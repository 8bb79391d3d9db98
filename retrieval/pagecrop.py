"""High-resolution crops of document pages for answers: where on the page are the question's words?

A generator sees a whole page at its own resolution (336–1024 px on the long side), where 9-pt text is
a few pixels high. When the generator takes several images, the answer flow adds a crop of the region
that holds the question's words, rendered at the generator's resolution — about 2–3× the page view's
pixel density (:func:`locate`, :func:`render_crop`).

- Pages with a text layer: PDFium's text search gives each occurrence of a question word with its
  character boxes; the crop is the window (:data:`CROP_W_FRAC` × :data:`CROP_H_FRAC` of the page) that
  holds the most distinct question words (then the most occurrences), grown where needed so those
  words are whole.
- Pages without a text layer (scans, OCR'd at indexing time; word boxes are not stored): when the
  page's stored text holds a question word, the window with the most ink on the page.
- Otherwise (no question word on the page, rotated page, unreadable PDF): no crop.

Boxes are fractions of the page, ``(left, top, right, bottom)`` with the origin at the top left.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Crop window as fractions of the page's width and height (an A4 page gives a near-square crop of
#: 105 × 104 mm, 2.8× the page view's pixel density at the same image size).
CROP_W_FRAC = 0.5
CROP_H_FRAC = 0.35
#: Crops are never rendered above this resolution.
MAX_CROP_DPI = 600.0
#: Occurrences of one word looked at per page (bounds the work on pages that repeat a word).
MAX_HITS_PER_WORD = 50

_WORD = re.compile(r"[^\W_]{3,}", re.UNICODE)
_STOP = frozenset("the and for are was were this that these those with from what which who where when how "
                  "does did not any some have has page pages document documents say says said about into "
                  "than then there their them they its image images show shows".split())


@dataclass
class Region:
    box: tuple[float, float, float, float]  # fractions of the page: left, top, right, bottom
    how: str  # "question words" | "densest region"
    words: tuple[str, ...] = ()  # question words inside the box (text-layer pages)


def question_words(question: str) -> list[str]:
    """Distinct words of the question worth locating (3+ letters, no stop words), in order."""
    out: list[str] = []
    for w in _WORD.findall(question or ""):
        lw = w.lower()
        if lw not in _STOP and lw not in out:
            out.append(lw)
    return out


def _window(cx: float, cy: float) -> tuple[float, float, float, float]:
    """A CROP_W_FRAC × CROP_H_FRAC window centred on (cx, cy), moved inside the page."""
    x0 = min(max(cx - CROP_W_FRAC / 2, 0.0), 1.0 - CROP_W_FRAC)
    y0 = min(max(cy - CROP_H_FRAC / 2, 0.0), 1.0 - CROP_H_FRAC)
    return (x0, y0, x0 + CROP_W_FRAC, y0 + CROP_H_FRAC)


def best_window(hits: list[tuple[str, float, float, float, float]]) -> Region | None:
    """``hits``: (word, left, top, right, bottom) in page fractions. The window around one hit's
    neighbourhood holding the most distinct words, then the most hits (ties: the earliest hit)."""
    best, best_key = None, None
    for _, l0, t0, r0, b0 in hits:
        # centre on the bounding box of the hits a window around this one would hold
        win = _window((l0 + r0) / 2, (t0 + b0) / 2)
        inside = [h for h in hits if _centre_in(h, win)]
        ls, ts = min(h[1] for h in inside), min(h[2] for h in inside)
        rs, bs = max(h[3] for h in inside), max(h[4] for h in inside)
        win2 = _window((ls + rs) / 2, (ts + bs) / 2)
        inside2 = [h for h in hits if _centre_in(h, win2)]
        if len({h[0] for h in inside2}) < len({h[0] for h in inside}):
            win2, inside2 = win, inside
        key = (len({h[0] for h in inside2}), len(inside2))
        if best_key is None or key > best_key:
            best, best_key = Region(_grow(win2, inside2), "question words", tuple(sorted({h[0] for h in inside2}))), key
    return best


#: Margin kept around the words a crop holds (fraction of the page).
WORD_MARGIN = 0.02


def _grow(win, hits) -> tuple[float, float, float, float]:
    """``win`` grown to hold every one of ``hits`` whole, with a margin (a word whose centre is inside
    but whose start is not, e.g. the start of a heading, is not cut)."""
    return (max(0.0, min(win[0], min(h[1] for h in hits) - WORD_MARGIN)),
            max(0.0, min(win[1], min(h[2] for h in hits) - WORD_MARGIN)),
            min(1.0, max(win[2], max(h[3] for h in hits) + WORD_MARGIN)),
            min(1.0, max(win[3], max(h[4] for h in hits) + WORD_MARGIN)))


def _centre_in(h, win) -> bool:
    cx, cy = (h[1] + h[3]) / 2, (h[2] + h[4]) / 2
    return win[0] <= cx <= win[2] and win[1] <= cy <= win[3]


def densest_window(image: "Image.Image", steps: int = 16) -> Region:
    """The CROP_W_FRAC × CROP_H_FRAC window of ``image`` with the most ink (dark pixels)."""
    import numpy as np

    g = np.asarray(image.convert("L").resize((200, max(1, round(200 * image.height / max(1, image.width))))))
    ink = (g < 160).astype(np.float64)
    h, w = ink.shape
    ii = np.zeros((h + 1, w + 1))
    ii[1:, 1:] = ink.cumsum(0).cumsum(1)
    ww, wh = max(1, round(w * CROP_W_FRAC)), max(1, round(h * CROP_H_FRAC))
    best, best_v = (0, 0), -1.0
    for y in np.linspace(0, h - wh, steps).round().astype(int):
        for x in np.linspace(0, w - ww, steps).round().astype(int):
            v = ii[y + wh, x + ww] - ii[y, x + ww] - ii[y + wh, x] + ii[y, x]
            if v > best_v:
                best, best_v = (x, y), v
    x, y = best
    return Region((x / w, y / h, x / w + CROP_W_FRAC, y / h + CROP_H_FRAC), "densest region")


def locate(path: str, page: int, question: str, page_text: str | None = None,
           page_image: "Image.Image | None" = None) -> Region | None:
    """Where on 1-based ``page`` of the PDF at ``path`` the question's words are (see the module
    docstring); None when there is nothing worth cropping."""
    from imgrag.retrieval.pdf import PDFIUM_LOCK, PdfError, open_pdf

    words = question_words(question)
    if not words:
        return None
    with PDFIUM_LOCK:
        try:
            doc = open_pdf(path)
        except PdfError:
            return None
        try:
            if not 1 <= page <= len(doc):
                return None
            p = doc[page - 1]
            try:
                if p.get_rotation() % 360:
                    return None
                l, b, r, t = p.get_bbox()
                pw, ph = r - l, t - b
                if pw <= 0 or ph <= 0:
                    return None
                tp = p.get_textpage()
                try:
                    n_chars = tp.count_chars()
                    hits = []
                    for w in words:
                        s = tp.search(w, match_case=False, match_whole_word=True)
                        try:
                            for _ in range(MAX_HITS_PER_WORD):
                                m = s.get_next()
                                if not m:
                                    break
                                i, n = m
                                boxes = [tp.get_charbox(j) for j in range(i, i + n)]
                                cl, cb = min(x[0] for x in boxes), min(x[1] for x in boxes)
                                cr, ct = max(x[2] for x in boxes), max(x[3] for x in boxes)
                                hits.append((w, (cl - l) / pw, (t - ct) / ph, (cr - l) / pw, (t - cb) / ph))
                        finally:
                            s.close()
                finally:
                    tp.close()
            finally:
                p.close()
        except Exception:  # noqa: BLE001 - a page PDFium cannot read gets no crop
            return None
        finally:
            doc.close()
    if hits:
        return best_window(hits)
    if n_chars == 0 and page_text and set(words) & set(question_words(page_text)):
        # an image-only page whose OCR text holds a question word: the densest region of the page
        from imgrag.retrieval.pdf import render_to_fit

        try:
            img = page_image if page_image is not None else render_to_fit(path, page, 400)
        except Exception:  # noqa: BLE001
            return None
        return densest_window(img)
    return None


def render_crop(path: str, page: int, box: tuple[float, float, float, float], long_side: int | None,
                page_dpi: float = 144.0) -> "tuple[Image.Image, float]":
    """Render ``box`` (page fractions) of 1-based ``page`` so the crop's long side is ``long_side``
    pixels (None: at twice ``page_dpi``), at most :data:`MAX_CROP_DPI`; returns (image, dpi)."""
    from imgrag.retrieval.pdf import PDFIUM_LOCK, PdfError, open_pdf

    with PDFIUM_LOCK:
        doc = open_pdf(path)
        try:
            p = doc[page - 1]
            try:
                l, b, r, t = p.get_bbox()
                pw, ph = r - l, t - b
                x0, y0, x1, y1 = box
                cw, ch = (x1 - x0) * pw, (y1 - y0) * ph
                dpi = 72.0 * long_side / max(cw, ch) if long_side else 2 * page_dpi
                dpi = min(dpi, MAX_CROP_DPI)
                crop = (x0 * pw, (1 - y1) * ph, (1 - x1) * pw, y0 * ph)  # cut off: left, bottom, right, top
                try:
                    img = p.render(scale=dpi / 72.0, crop=crop).to_pil()
                except Exception as e:  # noqa: BLE001
                    raise PdfError(f"page {page} crop cannot be rendered ({e})") from None
                img = img.convert("RGB") if img.mode != "RGB" else img.copy()
            finally:
                p.close()
        finally:
            doc.close()
    return img, dpi
