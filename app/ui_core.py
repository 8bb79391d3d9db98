"""What the web UI does, without the UI: search, classify, ask, index jobs, thumbnails, safe file access.

:mod:`imgrag.app.ui` lays these out with Gradio; everything here is plain Python (no gradio import) and
tested directly. One :class:`Backend` per server process holds the index and its models, so every
browser session shares them (models load once), and runs at most one writing job (indexing or
"classify whole index" with write-back) at a time in a background thread.

Safety rules, each with a test:

- Only indexed items are ever read from disk, and only when the file's current bytes still have the
  content hash recorded at indexing time (:func:`read_indexed`). A path that is not an ``id`` in the
  store — ``../``, absolute, URL-encoded, SQL-ish — is never touched; an indexed file that was swapped
  for a symlink to something else, or edited, no longer matches its hash and is refused.
- Query text may not smuggle file reads in: an ``image:PATH`` term must name an indexed image.
- Uploads: the byte size is checked first, then the declared width × height from the header, before
  any pixel is decoded (:func:`load_upload`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import stat
import threading
import time
import traceback
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from imgrag.retrieval.errors import BadQueryError, ImgragError, IndexNotFoundError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from imgrag.retrieval.index import Index
    from imgrag.retrieval.stores.base import Filters, Hit

log = logging.getLogger("imgrag.ui")

#: Upload limits (override with ``imgrag serve --max-upload-mb / --max-upload-mp``).
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_UPLOAD_PIXELS = 50_000_000
THUMB_SIZE = 320
_THUMB_COLUMNS = ["id", "path", "page", "size", "mtime_ns", "hash"]
_ROW_COLUMNS = ["id", "path", "page", "size", "mtime_ns", "hash", "width", "height", "taken_at", "label",
                "label_score"]


class NotServable(ImgragError):
    """A file the UI refuses to read (not indexed, changed since indexing, not a regular file)."""


# ------------------------------------------------------------------------------------------------
# reading indexed files safely
# ------------------------------------------------------------------------------------------------
def read_indexed(row: dict[str, Any], max_bytes: int | None = None) -> bytes:
    """The bytes of an indexed item's file, only if they still hash to the indexed content hash.

    ``row`` must come from the store (never from a request). The file is opened once and checked on
    that descriptor: a regular file, the indexed size, the indexed BLAKE2b hash. So a file replaced by
    a symlink to a secret, a FIFO or an edited file is refused instead of served.
    """
    from imgrag.retrieval.imageio import content_hash

    path = row.get("path")
    expected = row.get("hash")
    size = row.get("size")
    if not path or not expected:
        raise NotServable("item has no recorded content hash; re-index it")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise NotServable(f"file is no longer readable ({e.strerror or e}); re-index to update") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotServable("not a regular file any more; re-index to update")
        if size is not None and st.st_size != size:
            raise NotServable("file changed since it was indexed; re-index to update")
        if max_bytes is not None and st.st_size > max_bytes:
            raise NotServable("file too large to serve")
        chunks = []
        remaining = st.st_size + 1  # read one byte more than expected to notice growth
        while remaining > 0:
            b = os.read(fd, min(remaining, 1 << 20))
            if not b:
                break
            chunks.append(b)
            remaining -= len(b)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if content_hash(data) != expected:
        raise NotServable("file changed since it was indexed; re-index to update")
    return data


def image_mime(data: bytes) -> str | None:
    """MIME type of an image from its magic bytes (None for anything else)."""
    sigs = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
            (b"GIF89a", "image/gif"), (b"BM", "image/bmp"), (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"))
    for sig, mime in sigs:
        if data.startswith(sig):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"heif", b"avif"):
        return "image/avif" if data[8:12] == b"avif" else "image/heic"
    if data.startswith(b"%PDF"):
        return "application/pdf"
    return None


# ------------------------------------------------------------------------------------------------
# thumbnails
# ------------------------------------------------------------------------------------------------
def default_thumb_dir(index_root: Path) -> Path:
    """``$XDG_CACHE_HOME/imgrag/thumbs/<hash of the index path>`` (never inside the index itself)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    key = hashlib.blake2b(str(Path(index_root).resolve()).encode(), digest_size=8).hexdigest()
    return Path(base) / "imgrag" / "thumbs" / key


class ThumbCache:
    """JPEG thumbnails (longest side :data:`THUMB_SIZE`) keyed by item id + size + mtime + hash.

    A changed file gets a new key, so a stale thumbnail is never shown; unreadable items get a
    placeholder. Files are written atomically (temp file + rename), so concurrent requests are safe.
    """

    def __init__(self, root: Path, size: int = THUMB_SIZE) -> None:
        self.root = Path(root)
        self.size = size
        self.root.mkdir(parents=True, exist_ok=True)

    def key(self, row: dict[str, Any]) -> str:
        raw = "\0".join(str(row.get(c)) for c in ("id", "size", "mtime_ns", "hash"))
        return hashlib.blake2b(raw.encode("utf-8", "surrogateescape"), digest_size=16).hexdigest()

    def path_for(self, row: dict[str, Any]) -> Path:
        k = self.key(row)
        return self.root / k[:2] / f"{k}.jpg"

    def get(self, row: dict[str, Any], strict: bool = False) -> Path:
        """Thumbnail file for ``row`` (generated on first use). If the file is unreadable or changed:
        the placeholder, or :class:`NotServable` with ``strict``."""
        p = self.path_for(row)
        if p.exists():
            return p
        try:
            img = render_thumbnail(read_indexed(row), self.size, page=row.get("page"))
        except (NotServable, ImgragError) as e:
            if strict:
                raise NotServable(str(e)) from e
            log.info("thumbnail for %r unavailable: %s", row.get("id"), e)
            return self.placeholder()
        self._save(img, p)
        return p

    def prune(self, max_files: int = 50_000) -> int:
        """Keep the cache bounded: delete the least recently written thumbnails beyond ``max_files``."""
        files = []
        for p in self.root.glob("??/*.jpg"):
            try:
                files.append((p.stat().st_mtime, p))
            except OSError:
                continue
        if len(files) <= max_files:
            return 0
        files.sort()
        n = 0
        for _, p in files[: len(files) - max_files]:
            try:
                p.unlink()
                n += 1
            except OSError:
                pass
        return n

    def placeholder(self) -> Path:
        p = self.root / "unavailable.jpg"
        if not p.exists():
            from PIL import Image, ImageDraw

            img = Image.new("RGB", (self.size, self.size * 3 // 4), (230, 230, 230))
            d = ImageDraw.Draw(img)
            d.line((0, 0, img.width, img.height), fill=(190, 190, 190), width=3)
            d.line((0, img.height, img.width, 0), fill=(190, 190, 190), width=3)
            d.text((10, 10), "file changed or missing", fill=(90, 90, 90))
            self._save(img, p)
        return p

    def _save(self, img: "Image.Image", p: Path) -> None:
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        img.save(tmp, "JPEG", quality=82, optimize=False)
        os.replace(tmp, p)


def render_thumbnail(data: bytes, size: int = THUMB_SIZE, page: int | None = None) -> "Image.Image":
    """Decode ``data`` (reduced-size JPEG decoding) and shrink it to fit ``size``×``size``."""
    from PIL import Image

    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    if page is not None and data.startswith(b"%PDF"):
        img = _render_pdf_page(data, page, size)
    else:
        try:
            img = decode_image(data, draft_size=size).image
        except ImageDecodeError as e:
            raise NotServable(f"cannot decode image: {e}") from e
    img = img.copy()
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    return img


def _render_pdf_page(data: bytes, page: int, size: int) -> "Image.Image":
    try:
        import pypdfium2  # type: ignore[import-not-found]  # noqa: F401
    except ImportError as e:
        raise NotServable("rendering document pages needs pypdfium2") from e
    from imgrag.retrieval.pdf import render_to_fit  # PDFium is not thread-safe: it holds a lock

    try:
        return render_to_fit(data, page, size)
    except Exception as e:  # noqa: BLE001 - any PDF problem means "no thumbnail"
        raise NotServable(f"cannot render page {page}: {e}") from e


# ------------------------------------------------------------------------------------------------
# uploads
# ------------------------------------------------------------------------------------------------
def load_upload(path: str | os.PathLike, max_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS) -> "Image.Image":
    """Decode an uploaded image, refusing it *before decoding* if it is over the byte or pixel limit.

    The byte size comes from ``stat``; the pixel count from the header (:func:`decode_image` checks it
    before loading pixels), so a decompression bomb never allocates its pixels.
    """
    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    try:
        n = os.stat(path).st_size
    except OSError as e:
        raise BadQueryError(f"the upload could not be read ({e.strerror or e}); try again") from e
    if n > max_bytes:
        raise BadQueryError(f"upload too large: {n / 1e6:.1f} MB > {max_bytes / 1e6:.0f} MB limit")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    try:
        return decode_image(data, draft_size=None, max_pixels=max_pixels).image
    except ImageDecodeError as e:
        raise BadQueryError(f"upload refused: {e}") from e


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------
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

    @property
    def caption(self) -> str:
        """Plain text (the UI escapes it): score, file name, capture date."""
        parts = [f"{self.score:.3f}", self.name + (f" p.{self.page}" if self.page else "")]
        if self.taken_at:
            parts.append(self.taken_at.strftime("%Y-%m-%d"))
        if self.snippet:
            parts.append(self.snippet)
        return " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": self.path, "name": self.name, "score": round(self.score, 6),
                "taken_at": self.taken_at.isoformat() if self.taken_at else None, "width": self.width,
                "height": self.height, "label": self.label, "page": self.page, "snippet": self.snippet,
                "match_spans": [list(sp) for sp in self.spans]}


def display_name(path: str) -> str:
    """File name for display; control characters shown as ``\\xNN`` (file names are untrusted)."""
    name = os.path.basename(path) or path
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in name)


def parse_date(s: str | None, what: str) -> datetime | None:
    s = (s or "").strip()
    if not s:
        return None
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        raise BadQueryError(f"{what}: {s!r} is not a date (use YYYY-MM-DD)") from None


def make_filters(path_glob: str | None = None, after: str | None = None, before: str | None = None,
                 label: str | None = None) -> "Filters | None":
    from imgrag.retrieval.stores.base import Filters

    a, b = parse_date(after, "after"), parse_date(before, "before")
    if a and b and a > b:
        raise BadQueryError("the 'after' date is later than the 'before' date")
    f = Filters(path_glob=(path_glob or "").strip() or None, taken_after=a, taken_before=b,
                label=(label or "").strip() or None)
    return None if f.is_empty() else f


# ------------------------------------------------------------------------------------------------
# background jobs (one writer at a time)
# ------------------------------------------------------------------------------------------------
@dataclass
class JobStatus:
    kind: str = ""  # "index" | "classify"
    state: str = "idle"  # idle | running | done | failed
    title: str = ""
    done: int = 0
    total: int = 0
    started: float = 0.0
    finished: float = 0.0
    message: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def elapsed(self) -> float:
        end = self.finished or time.time()
        return max(0.0, end - self.started) if self.started else 0.0

    @property
    def rate(self) -> float:
        e = self.elapsed
        return self.done / e if e > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        r = self.rate
        if self.state != "running" or r <= 0 or self.total <= 0:
            return None
        return max(0.0, (self.total - self.done) / r)

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else (1.0 if self.state == "done" else 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "state": self.state, "title": self.title, "done": self.done,
                "total": self.total, "rate": round(self.rate, 2), "eta_s": self.eta_s,
                "elapsed_s": round(self.elapsed, 2), "message": self.message, "detail": self.detail}


class JobRunner:
    """Runs one background job at a time in a daemon thread; its status is polled by the UI."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.status = JobStatus()
        self._thread: threading.Thread | None = None

    def busy(self) -> bool:
        with self._lock:
            return self.status.state == "running"

    def start(self, kind: str, title: str, fn: Callable[[JobStatus], str]) -> JobStatus:
        """Start ``fn(status)`` (it updates ``status.done/total`` and returns a summary message)."""
        with self._lock:
            if self.status.state == "running":
                raise ImgragError(f"a background job is already running ({self.status.title}); "
                                  "wait for it to finish")
            st = JobStatus(kind=kind, state="running", title=title, started=time.time())
            self.status = st

        def run() -> None:
            try:
                msg = fn(st)
                st.message = msg
                st.state = "done"
            except ImgragError as e:
                st.message = str(e)
                st.state = "failed"
            except Exception as e:  # noqa: BLE001 - reported in the UI as one line, logged in full
                log.error("background job %s failed:\n%s", title, traceback.format_exc())
                st.message = f"internal error: {type(e).__name__}: {e}"
                st.state = "failed"
            finally:
                st.finished = time.time()

        self._thread = threading.Thread(target=run, name=f"imgrag-{kind}", daemon=True)
        self._thread.start()
        return st

    def wait(self, timeout: float | None = None) -> JobStatus:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.status


def format_eta(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    m, s = divmod(seconds, 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


# ------------------------------------------------------------------------------------------------
# the backend
# ------------------------------------------------------------------------------------------------
@dataclass
class UIConfig:
    index_root: Path
    device: str = "auto"
    precision: str = "auto"
    generator: Any = None  # spec string for load_generator (None: its default) or a Generator instance
    new_index_model: str | None = None  # model for an index created from the UI (None: lite)
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS
    thumb_dir: Path | None = None
    max_k: int = 200
    index_workers: int | None = None  # decode workers for indexing from the UI (None: pipeline default)


class Backend:
    """State shared by every browser session of one server: the index, its models, jobs, thumbnails."""

    def __init__(self, config: UIConfig, index: "Index | None" = None) -> None:
        self.config = config
        from imgrag.retrieval.location import is_uri

        root = index.root if index is not None else config.index_root
        # a folder, or an object-storage URI (s3://…) that many servers can read at once
        self.root = root if is_uri(root) else Path(root).expanduser().resolve()
        self.thumbs = ThumbCache(config.thumb_dir or default_thumb_dir(self.root))
        self.jobs = JobRunner()
        self._lock = threading.RLock()
        self._index: "Index | None" = index
        self._classifiers: OrderedDict[tuple, Any] = OrderedDict()
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="imgrag-thumb")

    # -- the index and its model (loaded once, shared) -------------------------------------------
    def index(self) -> "Index":
        with self._lock:
            if self._index is None:
                from imgrag.retrieval.index import Index

                self._index = Index.open(self.root, device=self.config.device, precision=self.config.precision)
            return self._index

    def has_index(self) -> bool:
        from imgrag.retrieval.index import Manifest

        return self._index is not None or Manifest.exists(self.root)

    def embedder(self):
        idx = self.index()
        with self._lock:  # one load per process even when sessions race for it
            return idx.embedder

    def warm_up(self) -> None:
        """Load the embedding model now (called in a thread at start-up) so the first query is fast;
        trim the thumbnail cache."""
        try:
            self.thumbs.prune()
        except OSError as e:  # pragma: no cover - a cache problem never stops the UI
            log.warning("thumbnail cache prune failed: %s", e)
        try:
            if self.has_index():
                self.embedder().embed_texts(["warm up"])
        except Exception as e:  # noqa: BLE001 - the UI reports the error on first use instead
            log.warning("model warm-up failed: %s", e)

    # -- rows ------------------------------------------------------------------------------------
    def row(self, item_id: str, columns: Sequence[str] = _ROW_COLUMNS) -> dict[str, Any]:
        """The stored row of an indexed item; :class:`NotServable` if ``item_id`` is not an id."""
        if not isinstance(item_id, str) or not item_id or len(item_id) > 8192 or "\x00" in item_id:
            raise NotServable("not an indexed item")
        t = self.index().store.get([item_id], columns=list(columns))
        rows = [r for r in t.to_pylist() if r.get("id") == item_id]
        if not rows:
            raise NotServable("not an indexed item")
        return rows[0]

    def original(self, item_id: str) -> tuple[bytes, str, str]:
        """(bytes, mime type, file name) of an indexed image, verified against its content hash."""
        row = self.row(item_id, _THUMB_COLUMNS)
        data = read_indexed(row)
        mime = image_mime(data)
        if mime is None:
            raise NotServable("not an image")
        return data, mime, os.path.basename(row["path"])

    def thumbnail(self, item_id: str) -> Path:
        """Thumbnail of an indexed item; :class:`NotServable` if it is not one or no longer readable."""
        return self.thumbs.get(self.row(item_id, _THUMB_COLUMNS), strict=True)

    def _items(self, hits: Sequence["Hit"]) -> list[ResultItem]:
        rows = [dict(h.row, id=h.id, path=h.path) for h in hits]
        thumbs = list(self._pool.map(self.thumbs.get, rows)) if rows else []
        out = []
        for h, th in zip(hits, thumbs):
            r = h.row
            out.append(ResultItem(id=h.id, path=h.path, name=display_name(h.path), score=float(h.score),
                                  taken_at=r.get("taken_at"), width=r.get("width"), height=r.get("height"),
                                  label=r.get("label"), page=r.get("page"), thumb=str(th),
                                  snippet=r.get("snippet") or "",
                                  spans=tuple(tuple(sp) for sp in (r.get("match_spans") or ()))))
        return out

    # -- search ----------------------------------------------------------------------------------
    def _check_k(self, k: int) -> int:
        try:
            k = int(k)
        except (TypeError, ValueError):
            raise BadQueryError("k must be a whole number") from None
        if not 1 <= k <= self.config.max_k:
            raise BadQueryError(f"k must be between 1 and {self.config.max_k}")
        return k

    def _terms(self, query: str):
        """Parse a query; image terms must name indexed images (the UI never reads other files)."""
        from imgrag.retrieval.queries.search import parse_query

        refused = BadQueryError("an image term in a query must name an indexed image; "
                                "use the Search by image tab for other pictures")
        try:
            terms = parse_query(query)
        except BadQueryError as e:
            if "query image not found" in str(e):
                raise refused from None
            raise
        store = self.index().store
        for t in terms:
            if t.kind == "image":
                got = store.get([str(t.value)], columns=["id"])
                if got.num_rows == 0:
                    raise refused
        return terms

    def search_text(self, query: str, k: int = 12, path_glob: str = "", after: str = "", before: str = "",
                    min_score: float | None = None, sort_by_date: bool = False,
                    label: str = "") -> list[ResultItem]:
        from imgrag.retrieval.queries.search import search

        if not (query or "").strip():
            raise BadQueryError("type what you are looking for, e.g. 'a dog on a beach'")
        k = self._check_k(k)
        filters = make_filters(path_glob, after, before, label)
        terms = self._terms(query)
        self.embedder()
        plain = len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1.0
        if plain and self.index().store.has_text():  # documents / OCR'd images: vector + keyword (hybrid)
            from imgrag.retrieval.queries.hybrid import search_documents

            hits = search_documents(self.index(), str(terms[0].value), k=k, mode="hybrid", filters=filters,
                                    min_score=min_score)
            if sort_by_date:
                hits.sort(key=lambda h: (h.row.get("taken_at") is None, h.row.get("taken_at") or 0))
        else:
            hits = search(self.index(), terms, k=k, filters=filters, min_score=min_score, sort_by_date=sort_by_date)
        return self._items(hits)

    def more_like(self, item_id: str, k: int = 12, path_glob: str = "", after: str = "", before: str = "",
                  min_score: float | None = None, sort_by_date: bool = False) -> list[ResultItem]:
        """Image → image search from an indexed item's stored vector (the item itself excluded)."""
        import numpy as np

        from imgrag.retrieval.queries.search import search

        k = self._check_k(k)
        t = self.index().store.get([item_id], columns=["id", "vector"])
        if t.num_rows == 0:
            raise BadQueryError("that result is no longer in the index; search again")
        vec = np.asarray(t["vector"][0].as_py(), dtype=np.float32)
        hits = search(self.index(), vec, k=k, filters=make_filters(path_glob, after, before),
                      min_score=min_score, exclude_ids=[item_id], sort_by_date=sort_by_date)
        return self._items(hits)

    def search_image(self, upload_path: str | None, k: int = 12, path_glob: str = "",
                     min_score: float | None = None) -> list[ResultItem]:
        from imgrag.retrieval.queries.search import search

        if not upload_path:
            raise BadQueryError("upload, paste or drop an image first")
        k = self._check_k(k)
        img = load_upload(upload_path, self.config.max_upload_bytes, self.config.max_upload_pixels)
        self.embedder()
        hits = search(self.index(), img, k=k, filters=make_filters(path_glob), min_score=min_score)
        return self._items(hits)

    # -- classify --------------------------------------------------------------------------------
    def classifier(self, labels: str, templates: str):
        """A zero-shot classifier for labels (one per line) and templates (one per line), cached."""
        from imgrag.retrieval.queries.classify import ZeroShotClassifier, load_templates, parse_labels

        labs = tuple(parse_labels(labels or ""))
        tmpl_lines = [ln.strip() for ln in (templates or "").splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
        tmpls = tuple(load_templates(tmpl_lines or None))
        key = (labs, tmpls)
        with self._lock:
            clf = self._classifiers.get(key)
            if clf is not None:
                self._classifiers.move_to_end(key)
                return clf
        clf = ZeroShotClassifier(self.embedder(), labs, list(tmpls))
        with self._lock:
            self._classifiers[key] = clf
            while len(self._classifiers) > 16:
                self._classifiers.popitem(last=False)
        return clf

    def classify_upload(self, upload_path: str | None, labels: str, templates: str) -> dict[str, float]:
        """Label → probability for an uploaded image (all labels, best first)."""
        if not upload_path:
            raise BadQueryError("upload, paste or drop an image to classify")
        clf = self.classifier(labels, templates)
        img = load_upload(upload_path, self.config.max_upload_bytes, self.config.max_upload_pixels)
        probs = clf.probabilities(self.embedder().embed_images([img]))[0]
        return dict(sorted(((lab, float(p)) for lab, p in zip(clf.labels, probs)), key=lambda kv: -kv[1]))

    def classify_ids(self, ids: Sequence[str], labels: str, templates: str) -> list[dict[str, Any]]:
        """Top labels for indexed items (e.g. the current search results), from stored vectors."""
        import numpy as np

        if not ids:
            raise BadQueryError("no search results to classify; run a search first")
        clf = self.classifier(labels, templates)
        t = self.index().store.get(list(ids), columns=["id", "path", "vector"])
        by_id = {i: (p, v) for i, p, v in zip(t["id"].to_pylist(), t["path"].to_pylist(), t["vector"].to_pylist())}
        keep = [i for i in ids if i in by_id]
        if not keep:
            raise BadQueryError("those results are no longer in the index; search again")
        preds = clf.predict_vectors(np.asarray([by_id[i][1] for i in keep], dtype=np.float32), top_n=3)
        return [{"id": i, "name": display_name(by_id[i][0]), "label": p.label, "score": p.score, "top": p.top}
                for i, p in zip(keep, preds)]

    def start_classify_index(self, labels: str, templates: str, write: bool = True) -> JobStatus:
        """Classify every stored vector in the background; with ``write`` store the top label."""
        from imgrag.retrieval.queries.classify import classify_index

        clf = self.classifier(labels, templates)  # errors in labels/templates surface now, not in the job
        index = self.index()

        def job(st: JobStatus) -> str:
            from imgrag.indexer.lease import writer_lock

            st.total = index.store.count()
            counts: dict[str, int] = {}

            def prog(done: int, total: int) -> None:
                st.done, st.total = done, total

            # the writer lock keeps a concurrent `imgrag index` from interleaving with the write-back
            with writer_lock(index.root) if write else _nullcontext():
                for _id, _path, p in classify_index(index, clf, write=write, progress=prog):
                    counts[str(p.label)] = counts.get(str(p.label), 0) + 1
            st.detail = {"counts": counts}
            top = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1])[:8])
            return (f"classified {st.done} items" + (" and wrote their labels" if write else "")
                    + (f" ({top})" if top else ""))

        return self.jobs.start("classify", f"classify {len(clf.labels)} labels over the index", job)

    # -- ask -------------------------------------------------------------------------------------
    def ask(self, question: str, k: int = 8, max_images: int = 4,
            min_score: float | None = None) -> Iterator[tuple[str, Any]]:
        """Stream ``("chunk", text)`` while generating, then ``("result", AnswerResult)``."""
        from imgrag.retrieval.generators import load_generator
        from imgrag.retrieval.queries.answer import answer

        if not (question or "").strip():
            raise BadQueryError("type a question about your images")
        self.embedder()
        gen = self._generator()
        stream = answer(self.index(), question.strip(), k=self._check_k(k), max_images=int(max_images),
                        generator=gen, min_score=min_score)
        for chunk in stream:
            yield "chunk", chunk
        yield "result", stream.result

    def _generator(self):
        g = self.config.generator
        if g is None or isinstance(g, str):
            from imgrag.retrieval.generators import load_generator

            return load_generator(g, device=self.config.device, precision=self.config.precision)
        return g  # a Generator instance (embedding imgrag in another app, tests)

    def generator_name(self) -> str:
        try:
            g = self._generator()
            return g.name + (" (text-only fallback: it reads file names, dates and labels, not pixels)"
                             if g.text_only else "")
        except ImgragError as e:
            return f"unavailable: {e}"
        except ImportError:
            return "unavailable in this build"

    # -- index management --------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        return self.index().info()

    def skipped(self, limit: int = 500) -> list[dict[str, Any]]:
        try:
            return self.index().skipped()[:limit]
        except IndexNotFoundError:
            return []

    def start_indexing(self, folder: str) -> JobStatus:
        """Index (or update) ``folder`` in the background with the index's model (one writer at a time)."""
        from imgrag.indexer.pipeline import IndexOptions, build_index

        folder = (folder or "").strip()
        if not folder:
            raise BadQueryError("type the path of a folder on this machine")
        p = Path(os.path.expanduser(folder))
        if not p.is_absolute():
            raise BadQueryError("give an absolute folder path (e.g. /home/me/Pictures)")
        if not p.exists():
            raise BadQueryError(f"folder not found: {folder}")
        if not p.is_dir():
            raise BadQueryError(f"not a folder: {folder}")
        if self.jobs.busy():
            raise ImgragError(f"a background job is already running ({self.jobs.status.title}); wait for it")
        index = self._index_for_writing()
        opts = IndexOptions(workers=self.config.index_workers)

        def job(st: JobStatus) -> str:
            def prog(pr) -> None:
                st.done, st.total = pr.done, pr.total
                st.detail = {"embedded": pr.embedded, "reused": pr.reused, "skipped": pr.skipped}

            rep = build_index(index, [str(p)], opts, progress=prog)
            st.detail = rep.to_dict()
            if st.total == 0:
                st.total = st.done = rep.new_or_changed
            return (f"indexed {rep.embedded} new/changed images ({rep.reused} reused), {rep.unchanged} unchanged, "
                    f"{rep.deleted} removed, {len(rep.skipped)} skipped; {rep.total_items} items in the index")

        return self.jobs.start("index", f"index {p}", job)

    def _index_for_writing(self) -> "Index":
        if self.has_index():
            return self.index()
        from imgrag.retrieval.embedders import load_embedder
        from imgrag.retrieval.index import Index

        model = self.config.new_index_model or "lite"
        emb = load_embedder(model, device=self.config.device, precision=self.config.precision)
        with self._lock:
            self._index = Index.create_or_open(self.root, emb)
            return self._index


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
