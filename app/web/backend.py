"""What the web UI does, without the UI: search, classify, ask and index jobs over one shared index.

:mod:`imgrag.app.web.layout` lays these out with Gradio; everything here is plain Python (no gradio import)
and tested directly. One :class:`Backend` per server process holds the index and its models, so every
browser session shares them (models load once), and runs at most one writing job (indexing or
"classify whole index" with write-back) at a time in a background thread.

Files are read only through :mod:`.files` (indexed and hash-checked; uploads within limits). Query text may
not smuggle file reads in either: an ``image:PATH`` term must name an indexed image.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from imgrag.app.web.files import (DEFAULT_MAX_UPLOAD_BYTES, DEFAULT_MAX_UPLOAD_PIXELS, NotServable, image_mime,
                                  load_upload, read_indexed)
from imgrag.app.web.jobs import JobRunner, JobStatus
from imgrag.app.web.thumbs import ThumbCache, default_thumb_dir
from imgrag.app.web.results import ResultItem, display_name  # noqa: F401 - re-exported
from imgrag.retrieval.errors import BadQueryError, ImgragError, IndexNotFoundError
from imgrag.retrieval.paths import display, is_stored_form

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index
    from imgrag.retrieval.stores.base import Filters, Hit

log = logging.getLogger("imgrag.ui")

_THUMB_COLUMNS = ["id", "path", "page", "size", "mtime_ns", "hash"]
_ROW_COLUMNS = ["id", "path", "page", "size", "mtime_ns", "hash", "width", "height", "taken_at", "label",
                "label_score"]


def parse_date(s: str | None, what: str) -> datetime | None:
    s = (s or "").strip()
    if not s:
        return None
    try:
        return datetime.fromisoformat(s)
    except ValueError:
        shown = s if len(s) <= 40 else s[:39] + "…"  # echoed input is cut
        raise BadQueryError(f"{what}: {shown!r} is not a date (use YYYY-MM-DD)") from None


def make_filters(path_glob: str | None = None, after: str | None = None, before: str | None = None,
                 label: str | None = None, kind: str | None = None) -> "Filters | None":
    """Filters from the UI's fields; ``kind`` is "photo", "page" or empty/"all" (both)."""
    from imgrag.retrieval.stores.base import Filters

    a, b = parse_date(after, "after"), parse_date(before, "before")
    if a and b and a > b:
        raise BadQueryError("the 'after' date is later than the 'before' date")
    f = Filters(path_glob=(path_glob or "").strip() or None, taken_after=a, taken_before=b,
                label=(label or "").strip() or None, kind=None if kind in (None, "", "all") else kind)
    return None if f.is_empty() else f


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
    allowed_roots: tuple[str, ...] | None = None  # folders the UI may index (None: any; empty: none), --roots
    all_copies: bool = False  # show each path of an exact copy as its own result (default: one result each)


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
        # NUL only as the escape of a file name byte that is not UTF-8 (imgrag.retrieval.paths)
        if not isinstance(item_id, str) or not item_id or len(item_id) > 8192 or not is_stored_form(item_id):
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
        return data, mime, display_name(row["path"])

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
                                  spans=tuple(tuple(sp) for sp in (r.get("match_spans") or ())),
                                  similarity=r.get("similarity"), keyword=r.get("keyword"),
                                  matched=tuple(r.get("matched_terms") or ()),
                                  copies=tuple(display(p) for p in r.get("copies") or ())))
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
                    label: str = "", kind: str = "") -> list[ResultItem]:
        from imgrag.retrieval.queries.search import search

        if not (query or "").strip():
            raise BadQueryError("type what you are looking for, e.g. 'a dog on a beach'")
        k = self._check_k(k)
        filters = make_filters(path_glob, after, before, label, kind)
        terms = self._terms(query)
        self.embedder()
        plain = len(terms) == 1 and terms[0].kind == "text" and terms[0].weight == 1.0
        if plain and self.index().store.has_text():  # documents / OCR'd images: vector + keyword (hybrid)
            from imgrag.retrieval.queries.hybrid import search_documents

            hits = search_documents(self.index(), str(terms[0].value), k=k, mode="hybrid", filters=filters,
                                    min_score=min_score, all_copies=self.config.all_copies)
            if sort_by_date:
                hits.sort(key=lambda h: (h.row.get("taken_at") is None, h.row.get("taken_at") or 0))
        else:
            hits = search(self.index(), terms, k=k, filters=filters, min_score=min_score, sort_by_date=sort_by_date,
                          all_copies=self.config.all_copies)
        return self._items(hits)

    def more_like(self, item_id: str, k: int = 12, path_glob: str = "", after: str = "", before: str = "",
                  min_score: float | None = None, sort_by_date: bool = False, label: str = "",
                  kind: str = "") -> list[ResultItem]:
        """Image → image search from an indexed item's stored vector (the item itself excluded)."""
        import numpy as np

        from imgrag.retrieval.queries.search import search

        k = self._check_k(k)
        t = self.index().store.get([item_id], columns=["id", "vector"])
        if t.num_rows == 0:
            raise BadQueryError("that result is no longer in the index; search again")
        vec = np.asarray(t["vector"][0].as_py(), dtype=np.float32)
        hits = search(self.index(), vec, k=k, filters=make_filters(path_glob, after, before, label, kind),
                      min_score=min_score, exclude_ids=[item_id], sort_by_date=sort_by_date,
                      all_copies=self.config.all_copies)
        return self._items(hits)

    def search_image(self, upload_path: str | None, k: int = 12, path_glob: str = "",
                     min_score: float | None = None) -> list[ResultItem]:
        from imgrag.retrieval.queries.search import search

        if not upload_path:
            raise BadQueryError("upload, paste or drop an image first")
        k = self._check_k(k)
        img = load_upload(upload_path, self.config.max_upload_bytes, self.config.max_upload_pixels)
        self.embedder()
        hits = search(self.index(), img, k=k, filters=make_filters(path_glob), min_score=min_score,
                      all_copies=self.config.all_copies)
        return self._items(hits)

    # -- classify --------------------------------------------------------------------------------
    def classifier(self, labels: str, templates: str):
        """A zero-shot classifier for labels (one per line) and templates (one per line), cached."""
        from imgrag.retrieval.queries.classify import ZeroShotClassifier, load_templates, parse_labels

        labs = tuple(parse_labels(labels or ""))
        tmpl_lines = [ln.strip() for ln in (templates or "").splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
        tmpls = tuple(load_templates(tmpl_lines or None))
        from imgrag.retrieval.tune.adapter import active_adapter, tuned_calibration

        adapter = active_adapter(self.index())  # class texts go through a tuned adapter, as in imgrag classify
        key = (labs, tmpls, None if adapter is None else (adapter.meta.get("created_at"), adapter.meta.get("data_digest")))
        with self._lock:
            clf = self._classifiers.get(key)
            if clf is not None:
                self._classifiers.move_to_end(key)
                return clf
        clf = ZeroShotClassifier(self.embedder(), labs, list(tmpls),
                                 calibration=tuned_calibration("auto", adapter is not None))
        if adapter is not None:
            clf.weights = adapter.apply_text(clf.weights)
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
        # one image: calibrated against a random sample of the index (cached per index size)
        probs = clf.probabilities(self.embedder().embed_images([img]), clf.calibration_for(self.index()))[0]
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
        # search results all lie near the query: calibrated against a sample of the index, not themselves
        preds = clf.predict_vectors(np.asarray([by_id[i][1] for i in keep], dtype=np.float32), top_n=3,
                                    calibration=clf.calibration_for(self.index()))
        return [{"id": i, "name": display_name(by_id[i][0]), "label": p.label, "score": p.score, "top": p.top}
                for i, p in zip(keep, preds)]

    def start_classify_index(self, labels: str, templates: str, write: bool = True) -> JobStatus:
        """Classify every stored vector in the background; with ``write`` store the top label."""
        from imgrag.retrieval.queries.classify import classify_index

        clf = self.classifier(labels, templates)  # errors in labels/templates surface now, not in the job
        index = self.index()

        def job(st: JobStatus) -> str:
            st.total = index.store.count()
            counts: dict[str, int] = {}

            def prog(done: int, total: int) -> None:
                st.done, st.total = done, total

            # with write, classify_index holds the index's writer lock (a running `imgrag index` refuses it)
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
        from imgrag.retrieval.tune.adapter import adapter_status

        index = self.index()
        return {**index.info(), "adapter": adapter_status(index)}  # imgrag tune: is an adapter in use?

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
        from imgrag.app.web.folders import check_allowed

        check_allowed(self, p)  # beyond 127.0.0.1 only folders under `imgrag serve --roots`
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

    def start_tune(self, source: str, loss: str = "siglip") -> JobStatus:
        """Train the index's adapter (``imgrag tune``) in the background from a folder-per-class tree or a
        ``path<TAB>caption`` file on this machine; the whole job holds the index's writer lock (an indexer
        running meanwhile makes it fail at once, and queries pick the new adapter up when it is saved)."""
        source = (source or "").strip()
        if not source:
            raise BadQueryError("type the path of a folder per class, or of a captions file (path<TAB>caption)")
        p = Path(os.path.expanduser(source))
        if not p.is_absolute():
            raise BadQueryError("give an absolute path (e.g. /home/me/Pictures/by-subject)")
        if not p.exists():
            raise BadQueryError(f"not found: {source}")
        from imgrag.app.web.folders import check_allowed

        check_allowed(self, p if p.is_dir() else p.parent)  # beyond 127.0.0.1 only under `imgrag serve --roots`
        if not self.has_index():
            raise BadQueryError("index some images first: tune trains on the index's stored vectors")
        if self.jobs.busy():
            raise ImgragError(f"a background job is already running ({self.jobs.status.title}); wait for it")
        index = self.index()

        def job(st: JobStatus) -> str:
            from imgrag.retrieval.tune import data
            from imgrag.retrieval.tune.train import TuneConfig, tune_index

            st.total = 2
            with index.writing():  # held from reading the supervision to saving the adapter
                sup = data.from_folders(index, p) if p.is_dir() else data.from_captions(index, p)
                st.done = 1
                res = tune_index(index, sup, TuneConfig(loss=loss))
            st.done = 2
            st.detail = {**sup.summary(), **res.to_json()}
            b, a = res.before, res.after
            return (f"adapter trained on {len(sup.item_ids)} images ({sup.embedded} embedded now); held-out "
                    f"image→text top-1 {100 * b['i2t_top1']:.1f}% → {100 * a['i2t_top1']:.1f}%, text→image R@1 "
                    f"{100 * b['t2i_r1']:.1f}% → {100 * a['t2i_r1']:.1f}%; search, classify and ask now use it")

        return self.jobs.start("tune", f"tune an adapter on {p}", job)

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

