"""PDF documents in the indexing pipeline: plan page work items, load one page in a decode worker.

- Planning (main process): a PDF whose stored page rows all carry its current size and mtime is
  unchanged. Otherwise it is opened once (no rendering) to hash it and count its pages; encrypted,
  corrupt and empty PDFs become skips with a specific reason. Each page becomes a :class:`PageWork`.
- Loading (decode worker): the page is rendered at ``dpi`` lazily — one page at a time, the open
  document cached per worker — its text layer extracted, OCR'd at 300 DPI when it has none (and an
  OCR engine is present), and turned into layout-preserving views (:mod:`imgrag.retrieval.layout`).
- Committing: all rows of one document go into the store in one atomic upsert, followed by the
  deletion of pages the document no longer has. A crash in between leaves rows with a stale mtime,
  so the next run re-indexes the document: never a half-indexed document that looks complete.
- Renamed / touched documents reuse stored page vectors by ``(content hash, page)``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from imgrag.indexer.scan import FileEntry, Skip

log = logging.getLogger("imgrag.indexer")


@dataclass(frozen=True)
class PageWork:
    """One page of a PDF to index. ``path``/``size``/``mtime_ns`` are the document's."""

    path: str
    size: int
    mtime_ns: int
    page: int  # 1-based
    pages: int  # pages in the document
    hash: str  # content hash of the whole file

    @property
    def id(self) -> str:
        return f"{self.path}#page={self.page}"

    @property
    def reuse_key(self) -> str:
        return f"{self.hash}#page={self.page}"


@dataclass(frozen=True)
class PageOptions:
    dpi: float = 150.0
    max_tiles: int = 2
    ocr: str = "auto"  # "auto": OCR pages without text if tesseract is installed; "on": required; "off"
    ocr_lang: str = "eng"


@dataclass
class DocPlan:
    """What planning found for the documents of one run."""

    work: list[PageWork] = field(default_factory=list)
    skips: list[dict] = field(default_factory=list)
    # document path → ids stored now (to delete pages the new version no longer has)
    old_ids: dict[str, list[str]] = field(default_factory=dict)
    # documents that failed as a whole and had rows before: their rows are dropped
    failed_ids: list[str] = field(default_factory=list)
    pages_total: int = 0


def reuse_key(meta: dict[str, Any]) -> str | None:
    """Key under which a stored row's vector can be reused: content hash (+ page for documents)."""
    h = meta.get("hash")
    if not h:
        return None
    return f"{h}#page={meta['page']}" if meta.get("page") else h


def plan_documents(entries: list[FileEntry], doc_rows: dict[str, list[str]]) -> DocPlan:
    """Expand changed PDFs into page work (opening each once, never rendering)."""
    from imgrag.retrieval import pdf

    plan = DocPlan()
    for e in entries:
        try:
            digest, size, mtime = pdf.file_hash(e.path)
            n = pdf.page_count(e.path)
        except pdf.PdfError as err:
            plan.skips.append(Skip(e.path, str(err), e.size, e.mtime_ns).to_dict())
            plan.failed_ids.extend(doc_rows.get(e.path, []))
            continue
        except FileNotFoundError:
            plan.skips.append(Skip(e.path, "file disappeared before it could be read", e.size, e.mtime_ns).to_dict())
            continue
        except OSError as err:
            plan.skips.append(Skip(e.path, f"cannot read file ({err.strerror or err})", e.size, e.mtime_ns).to_dict())
            continue
        plan.old_ids[e.path] = list(doc_rows.get(e.path, []))
        plan.pages_total += n
        for p in range(1, n + 1):
            plan.work.append(PageWork(e.path, size, mtime, p, n, digest))
    return plan


_DOCS = None  # per-process open-document cache (decode workers)
_OCR_OK: dict[str, bool] = {}


def _doc_cache():
    global _DOCS
    if _DOCS is None:
        from imgrag.retrieval.pdf import DocCache

        _DOCS = DocCache()
    return _DOCS


def ocr_ready(lang: str) -> bool:
    if lang not in _OCR_OK:
        from imgrag.retrieval import ocr

        _OCR_OK[lang] = ocr.available(lang)
    return _OCR_OK[lang]


def load_page(work: PageWork, transform: Callable, opts: PageOptions, known: frozenset[str], result_cls):
    """Render, read and preprocess one page → ``(result, pixels (views, 3, H, W) or None)``."""
    try:
        return _load_page(work, transform, opts, known, result_cls)
    finally:
        if work.page >= work.pages:  # the document's last page: release it (pages arrive in order)
            _doc_cache().close()


def _load_page(work: PageWork, transform: Callable, opts: PageOptions, known: frozenset[str], result_cls):
    from imgrag.retrieval import pdf

    t0 = time.perf_counter()
    meta: dict[str, Any] = {"id": work.id, "path": work.path, "page": work.page, "size": work.size,
                            "mtime_ns": work.mtime_ns, "hash": work.hash}
    if work.reuse_key in known:
        return result_cls(work, meta=meta, reused=True), None
    try:
        with pdf.PDFIUM_LOCK:  # only contended when indexing runs in a thread beside the web UI
            doc = _doc_cache().get(work.path, work.size, work.mtime_ns)
            text = pdf.page_text(doc, work.page)
            img = pdf.render_page(doc, work.page, dpi=opts.dpi)
    except pdf.PdfError as e:
        return result_cls(work, error=str(e)), None
    except FileNotFoundError:
        return result_cls(work, error="file disappeared before it could be read"), None
    except OSError as e:
        return result_cls(work, error=f"cannot read file ({e.strerror or e})"), None
    t1 = time.perf_counter()
    meta.update(width=img.width, height=img.height)
    if not pdf.has_text(text):
        if opts.ocr != "off" and ocr_ready(opts.ocr_lang):
            from imgrag.retrieval import ocr

            try:
                with pdf.PDFIUM_LOCK:
                    hi = img if opts.dpi >= pdf.OCR_DPI else pdf.render_page(doc, work.page, dpi=pdf.OCR_DPI)
                text = pdf.clean_text(ocr.ocr_image(hi, lang=opts.ocr_lang).text)
                meta["ocr"] = True
            except (RuntimeError, pdf.PdfError) as e:
                log.warning("OCR failed on %s page %d: %s", work.path, work.page, e)
        else:
            meta["needs_ocr"] = True
    meta["text"] = text or None
    t2 = time.perf_counter()
    from imgrag.retrieval.layout import PageTransform

    # the page's text decides whether it is dense (2×2 grid tiles); OCR text counts like a text layer
    pixels = transform(img, text=text, dpi=opts.dpi) if isinstance(transform, PageTransform) else transform(img)
    t3 = time.perf_counter()
    return result_cls(work, meta=meta, read_s=0.0, decode_s=t2 - t0, preprocess_s=t3 - t2), pixels


def ocr_photo_text(image, lang: str = "eng") -> str | None:
    """OCR text of a photo-folder image (``--ocr``), or None; failures only log."""
    from imgrag.retrieval import ocr

    try:
        return ocr.ocr_photo(image, lang=lang)
    except (RuntimeError, ocr.OcrUnavailableError) as e:
        log.warning("OCR failed: %s", e)
        return None


class DocTracker:
    """Counts finished pages per document so a document is committed whole, never split."""

    def __init__(self, plan: DocPlan) -> None:
        self.remaining: dict[str, int] = {}
        self.pages: dict[str, int] = {}
        for w in plan.work:
            self.remaining[w.path] = self.pages[w.path] = w.pages
        self.old_ids = plan.old_ids

    def page_done(self, path: str) -> None:
        if path in self.remaining:
            self.remaining[path] -= 1

    def complete(self, path: str) -> bool:
        return self.remaining.get(path, 0) <= 0

    def is_doc(self, path: str) -> bool:
        return path in self.remaining
