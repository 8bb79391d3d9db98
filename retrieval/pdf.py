"""PDF documents: open, count pages, render one page, extract its text (pypdfium2, the ``docs`` extra).

A PDF becomes one indexed item per page (id ``"<path>#page=<n>"``, ``n`` 1-based). Pages are rendered
one at a time, lazily, in the indexer's decode workers: a 500-page PDF never has more than a few
rendered pages in memory.

Every failure a user can cause is a :class:`PdfError` with a short specific reason (``encrypted
PDF (password required)``, ``not a valid PDF (...)``, ``PDF has no pages``), recorded as a skip.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import threading
from typing import TYPE_CHECKING, Any

from imgrag.retrieval.paths import to_fs

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: File suffixes handled as documents.
PDF_EXTENSIONS = frozenset({".pdf"})
#: Default render resolution for page images (dots per inch).
DEFAULT_DPI = 150
#: Render resolution used for OCR of pages without a text layer (tesseract works best at ~300 DPI).
OCR_DPI = 300
#: A rendered page never exceeds this many pixels (huge page formats are rendered at a lower DPI).
MAX_PAGE_PIXELS = 40_000_000
#: Page text stored per row (characters); the rest is cut.
MAX_TEXT_CHARS = 20_000
#: Pages with fewer non-space characters than this count as having no text layer (OCR candidates).
MIN_TEXT_CHARS = 8

_HASH_CHUNK = 1 << 20
#: PDFium is not thread-safe: every call into it from a process with several threads (the web UI's
#: thumbnail pool, answers) holds this lock. Decode workers are processes, each with its own copy.
PDFIUM_LOCK = threading.RLock()


class PdfError(Exception):
    """A PDF (or one of its pages) that cannot be indexed; ``str(e)`` is a short reason."""


def is_pdf(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in PDF_EXTENSIONS


def available() -> bool:
    try:
        import pypdfium2  # noqa: F401
    except ImportError:
        return False
    return True


def _pdfium():
    try:
        import pypdfium2 as pdfium
    except ImportError as e:
        raise PdfError("PDF support is not installed: pip install 'imgrag[docs]' (pypdfium2), "
                       "then re-run with --retry-skipped") from e
    return pdfium


def open_pdf(path: str, password: str | None = None):
    """Open a PDF without reading all of it into memory; raises :class:`PdfError` with a reason."""
    pdfium = _pdfium()
    try:
        doc = _open_path(pdfium, to_fs(path), password)
    except pdfium.PdfiumError as e:
        msg = str(e)
        if "password" in msg.lower():
            raise PdfError("encrypted PDF (password required); decrypt it to index it") from None
        m = re.search(r"PDFium: ([^)]*)", msg)
        raise PdfError(f"not a valid PDF ({(m.group(1) if m else msg).strip()})") from None
    except FileNotFoundError:
        raise PdfError("file disappeared before it could be read") from None
    except PermissionError:
        raise PdfError("permission denied") from None
    except OSError as e:
        raise PdfError(f"cannot read file ({e.strerror or e})") from None
    return doc


def _open_path(pdfium, fs_path: str, password: str | None):
    try:
        fs_path.encode("utf-8")
    except UnicodeEncodeError:  # pdfium takes a UTF-8 file name: a name that is not gets the open file
        f = open(fs_path, "rb")  # noqa: SIM115 - closed by the document (autoclose), or here
        try:
            return pdfium.PdfDocument(f, password=password, autoclose=True)
        except BaseException:
            f.close()
            raise
    return pdfium.PdfDocument(fs_path, password=password)


def file_hash(path: str) -> tuple[str, int, int]:
    """(blake2b-128 hex of the file's bytes, size, mtime_ns) read in bounded chunks.

    Same digest as :func:`imgrag.retrieval.imageio.content_hash` over the whole file.
    """
    h = hashlib.blake2b(digest_size=16)
    path = to_fs(path)
    with open(path, "rb") as f:
        st0 = os.fstat(f.fileno())
        while True:
            b = f.read(_HASH_CHUNK)
            if not b:
                break
            h.update(b)
    st1 = os.stat(path)
    if (st0.st_size, st0.st_mtime_ns) != (st1.st_size, st1.st_mtime_ns):
        raise PdfError("file changed while being read (will be retried next run)")
    return h.hexdigest(), st1.st_size, st1.st_mtime_ns


def page_count(path: str) -> int:
    """Number of pages; :class:`PdfError` for encrypted, corrupt or empty PDFs."""
    with PDFIUM_LOCK:
        doc = open_pdf(path)
        try:
            n = len(doc)
        finally:
            doc.close()
    if n <= 0:
        raise PdfError("PDF has no pages")
    return n


def _load_page(doc, page: int):
    """1-based ``page`` of an open document (the caller closes it); PdfError if it cannot be loaded."""
    pdfium = _pdfium()
    try:
        return doc[page - 1]
    except (IndexError, pdfium.PdfiumError) as e:
        raise PdfError(f"page {page} cannot be loaded ({e})") from None


def render_page(doc, page: int, dpi: float = DEFAULT_DPI, max_pixels: int = MAX_PAGE_PIXELS) -> "Image.Image":
    """Render 1-based ``page`` of an open document as an RGB PIL image (white background)."""
    pdfium = _pdfium()
    p = _load_page(doc, page)
    try:
        w_pt, h_pt = p.get_size()
        if not (w_pt > 0 and h_pt > 0 and math.isfinite(w_pt) and math.isfinite(h_pt)):
            raise PdfError(f"page {page} has an invalid size {w_pt}x{h_pt} pt")
        scale = float(dpi) / 72.0
        px = w_pt * scale * h_pt * scale
        if px > max_pixels:  # huge page formats: lower the resolution instead of allocating gigabytes
            scale *= math.sqrt(max_pixels / px)
        try:
            bitmap = p.render(scale=scale, may_draw_forms=True)
            img = bitmap.to_pil()
        except pdfium.PdfiumError as e:
            raise PdfError(f"page {page} cannot be rendered ({e})") from None
        if img.mode != "RGB":
            img = img.convert("RGB")
        else:
            img = img.copy()  # detach from the pdfium bitmap buffer
        return img
    finally:
        p.close()


def page_text(doc, page: int, max_chars: int = MAX_TEXT_CHARS) -> str:
    """The page's embedded text layer (may be empty for scanned / image-only pages)."""
    pdfium = _pdfium()
    p = _load_page(doc, page)
    try:
        tp = p.get_textpage()
        try:
            text = tp.get_text_bounded() or ""
        finally:
            tp.close()
    except pdfium.PdfiumError:
        text = ""
    finally:
        p.close()
    return clean_text(text, max_chars)


def clean_text(text: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    """Normalise extracted text: no NULs / control characters, CRLF → LF, runs of blank lines collapsed."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\ufffe", "").replace("\x00", "")
    text = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return text[:max_chars]


def has_text(text: str | None) -> bool:
    return bool(text) and sum(1 for ch in text if not ch.isspace()) >= MIN_TEXT_CHARS


def render_to_fit(source: "str | bytes", page: int, size: int | None = None, dpi: float = 144.0) -> "Image.Image":
    """Render 1-based ``page`` of a PDF (path or bytes) so its longer side is ``size`` pixels (or at
    ``dpi`` when ``size`` is None); thread-safe, the document is closed before returning."""
    with PDFIUM_LOCK:
        doc = open_pdf(source) if isinstance(source, str) else _open_bytes(source)
        try:
            if not 1 <= page <= len(doc):
                raise PdfError(f"page {page} is out of range (the PDF has {len(doc)} pages)")
            if size:
                w, h = doc[page - 1].get_size()
                dpi = 72.0 * float(size) / max(w, h, 1.0)
            return render_page(doc, page, dpi=dpi)
        finally:
            doc.close()


def _open_bytes(data: bytes):
    pdfium = _pdfium()
    try:
        return pdfium.PdfDocument(data)
    except pdfium.PdfiumError as e:
        if "password" in str(e).lower():
            raise PdfError("encrypted PDF (password required)") from None
        raise PdfError(f"not a valid PDF ({e})") from None


class DocCache:
    """One open document per worker process (pages of a PDF arrive in order, so it is reused)."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._doc = None

    def get(self, path: str, size: int, mtime_ns: int):
        key = (path, size, mtime_ns)
        if self._key != key:
            self.close()
            st = os.stat(to_fs(path))
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                raise PdfError("file changed while being indexed (will be retried next run)")
            self._doc = open_pdf(path)
            self._key = key
        return self._doc

    def close(self) -> None:
        if self._doc is not None:
            try:
                with PDFIUM_LOCK:
                    self._doc.close()
            except Exception:  # noqa: BLE001 - best effort
                pass
        self._doc, self._key = None, None


def page_id(path: str, page: int) -> str:
    """Store key of a document page."""
    return f"{path}#page={int(page)}"
