"""The batched indexing pipeline: scan → (read, hash, decode, preprocess in workers) → embed → write.

Decoding runs in DataLoader worker processes while the model runs in the main process, so decode
overlaps compute; the loader's bounded prefetch plus chunked commits keep memory bounded whatever the
collection size (only per-file metadata of the work list scales with it).

Crash safety and resume come from one rule: the store is the only record of what is done, and every
chunk is committed atomically (``store.upsert``). A rerun skips files whose size and mtime match a
committed row, so it continues where a crash, Ctrl-C or SIGKILL stopped it — no duplicates, no gaps.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from imgrag.indexer.decode import DEFAULT_MAX_PIXELS, DecodeDataset, DecodeResult, collate
from imgrag.indexer.documents import DocTracker, PageOptions, plan_documents, reuse_key
from imgrag.indexer.lease import writer_lock
from imgrag.indexer.scan import FileEntry, Skip, is_under, normalize_roots, scan
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index
from imgrag.retrieval.layout import PageTransform, crop_fraction_of, pool_views
from imgrag.retrieval.pdf import is_pdf
from imgrag.retrieval.stores.base import META_COLUMNS, make_rows

log = logging.getLogger("imgrag.indexer")


def default_workers(device: str = "cpu") -> int:
    """Decode worker processes, 1..8.

    With the model on a GPU: one per core beyond the first (the main process feeds the GPU). With the
    model on the CPU: one per core, since the model and the decoders share the cores anyway and the OS
    balances them; on 2 cores this indexed 12-MP JPEGs 15-26% faster than one worker (BENCHMARKS.md).
    """
    cores = os.cpu_count() or 2
    return max(1, min(8, cores if str(device).startswith("cpu") else cores - 1))


@dataclass
class IndexOptions:
    batch_size: int = 64
    workers: int | None = None  # None → default_workers(device); 0 → decode in the main process
    draft: bool = True  # JPEG reduced-size DCT decoding to the model's resolution
    commit_every: int = 1024  # rows per atomic commit
    max_pixels: int = DEFAULT_MAX_PIXELS
    retry_skipped: bool = False  # retry files skipped before even if unchanged
    prune: bool = True  # remove rows of files deleted under the given roots
    include_hidden: bool = False
    extensions: frozenset[str] | None = None
    # documents (PDF): render resolution, tiles per page, OCR of pages without a text layer
    dpi: float = 150.0
    page_tiles: int = 2
    ocr_pages: str = "auto"  # "auto" (when tesseract is installed), "on" (required), "off"
    ocr_images: bool = False  # also OCR images (screenshots, scans) so their text is searchable
    ocr_lang: str = "eng"


@dataclass
class Progress:
    done: int
    total: int
    embedded: int
    reused: int
    skipped: int
    elapsed_s: float


@dataclass
class IndexReport:
    roots: list[str]
    scanned: int = 0
    unchanged: int = 0
    new_or_changed: int = 0
    embedded: int = 0
    reused: int = 0  # renamed/duplicated/touched files whose vector was reused by content hash
    deleted: int = 0
    skipped: list[dict] = field(default_factory=list)  # skips found in this run (with reasons)
    total_items: int = 0
    interrupted: bool = False
    seconds: dict[str, float] = field(default_factory=dict)  # stage → seconds
    documents: int = 0  # new/changed PDFs planned in this run
    pages: int = 0  # their pages
    ocr_pages: int = 0  # pages whose text came from OCR
    pages_without_text: int = 0  # pages with no text layer left un-OCR'd (no OCR engine)

    @property
    def images_per_s(self) -> float:
        t = self.seconds.get("total", 0.0)
        return (self.embedded + self.reused) / t if t > 0 else 0.0

    def to_dict(self) -> dict:
        return {"roots": self.roots, "scanned": self.scanned, "unchanged": self.unchanged,
                "new_or_changed": self.new_or_changed, "embedded": self.embedded, "reused": self.reused,
                "deleted": self.deleted, "skipped": len(self.skipped), "total_items": self.total_items,
                "interrupted": self.interrupted, "images_per_s": round(self.images_per_s, 2),
                "documents": self.documents, "pages": self.pages, "ocr_pages": self.ocr_pages,
                "pages_without_text": self.pages_without_text,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}}


def supported_extensions() -> frozenset[str]:
    from imgrag.retrieval import pdf
    from imgrag.retrieval.imageio import SUPPORTED_EXTENSIONS

    return frozenset(SUPPORTED_EXTENSIONS) | pdf.PDF_EXTENSIONS  # without pypdfium2: skipped, saying why


def build_index(index: Index, roots: Iterable[str | Path], options: IndexOptions | None = None,
                progress: Callable[[Progress], None] | None = None) -> IndexReport:
    """Bring ``index`` up to date with the images under ``roots``; returns what was done.

    Holds the index's writer lock for the whole run (a second writer gets :class:`IndexLockedError`).
    """
    opts = options or IndexOptions()
    roots_n = normalize_roots(roots)
    for r in roots_n:
        if not os.path.exists(r):
            raise ImgragError(f"path not found: {r}")
    with writer_lock(index.root):  # flock locally, a lease object on s3:// etc.
        return _run(index, roots_n, opts, progress)


def _run(index: Index, roots: list[str], opts: IndexOptions, progress) -> IndexReport:
    t_start = time.perf_counter()
    rep = IndexReport(roots=roots)
    store = index.store
    exts = opts.extensions or supported_extensions()
    if opts.ocr_images or opts.ocr_pages == "on":
        from imgrag.retrieval import ocr

        ocr.require(opts.ocr_lang)

    # --- plan: what is new, changed, unchanged, deleted ---------------------------------------------
    t0 = time.perf_counter()
    states = store.file_states()
    known: dict[str, tuple[int, int]] = {}
    known_path: dict[str, str] = {}
    hash_to_id: dict[str, str] = {}  # reuse key (content hash, + page for documents) → a row id
    doc_rows: dict[str, list[str]] = {}  # document path → its page row ids
    doc_states: dict[str, set] = {}
    for i, p, s, m, h in zip(*(states[c].to_pylist() for c in ("id", "path", "size", "mtime_ns", "hash"))):
        known[i] = (s, m)
        known_path[i] = p
        if i != p:  # a document page "<path>#page=<n>"
            doc_rows.setdefault(p, []).append(i)
            doc_states.setdefault(p, set()).add((s, m))
        if h:
            hash_to_id.setdefault(h if i == p else f"{h}#page={i[len(p) + 6:]}", i)
    prev_skips = {r["path"]: r for r in index.skipped()}
    kept_skips = [r for p, r in prev_skips.items() if not is_under(p, roots)]
    run_skips: list[dict] = []
    seen: set[str] = set()
    work: list = []  # FileEntry (images) and PageWork (document pages)
    doc_entries: list[FileEntry] = []
    page_skips: dict[str, list[dict]] = {}  # document path → skips of single pages
    for sp, r in prev_skips.items():
        if "#page=" in sp:
            page_skips.setdefault(sp.rsplit("#page=", 1)[0], []).append(r)
    for item in scan(roots, exts, exclude=[index.root] if index.location.local else [], include_hidden=opts.include_hidden):
        rep.scanned += 1
        seen.add(item.path)
        if isinstance(item, Skip):
            run_skips.append(item.to_dict())
            continue
        is_doc = is_pdf(item.path)
        k = known.get(item.path)
        if is_doc and doc_states.get(item.path) == {(item.size, item.mtime_ns)} and not (
                opts.retry_skipped and item.path in page_skips):
            rep.unchanged += 1  # every page row carries the current size and mtime: complete, unchanged
            run_skips.extend(page_skips.get(item.path, []))
            continue
        if k is not None and k == (item.size, item.mtime_ns):
            rep.unchanged += 1
            continue
        ps = prev_skips.get(item.path)
        if ps is not None and not opts.retry_skipped and (ps.get("size"), ps.get("mtime_ns")) == (item.size, item.mtime_ns):
            run_skips.append(ps)  # unchanged since it failed: don't retry
            continue
        (doc_entries if is_doc else work).append(item)
    gone = [i for i, p in known_path.items() if is_under(p, roots) and p not in seen] if opts.prune else []
    rep.new_or_changed = len(work) + len(doc_entries)
    dplan = plan_documents(doc_entries, doc_rows)  # opens each changed PDF once (no rendering)
    run_skips.extend(dplan.skips)
    work.extend(dplan.work)
    docs = DocTracker(dplan)
    rep.documents, rep.pages = len(dplan.old_ids), dplan.pages_total
    rep.seconds["plan"] = time.perf_counter() - t0
    log.info("scan: %d files, %d unchanged, %d to index, %d gone", rep.scanned, rep.unchanged, len(work), len(gone))

    def save_skips() -> None:
        index.write_skipped(kept_skips + run_skips)

    # --- embed --------------------------------------------------------------------------------------
    secs = {"read": 0.0, "decode": 0.0, "preprocess": 0.0, "model": 0.0, "write": 0.0, "wait": 0.0}
    pending_meta: list[dict] = []
    pending_vecs: list[np.ndarray] = []
    pending_reuse: list[dict] = []  # metas whose vector comes from another row with the same hash
    new_errors: list[dict] = []
    done = 0
    cleaned_docs: set[str] = set()
    if dplan.failed_ids:  # documents that were indexed and can no longer be read: drop their pages
        store.delete(dplan.failed_ids)
    t_embed = time.perf_counter()

    def commit() -> None:
        nonlocal pending_meta, pending_vecs, pending_reuse
        if not (pending_meta or pending_reuse or new_errors):
            return
        tw = time.perf_counter()
        # a document goes in whole: pages of a document still being read wait for the next commit
        held = lambda m: docs.is_doc(m["path"]) and not docs.complete(m["path"])  # noqa: E731
        keep = [j for j, m in enumerate(pending_meta) if not held(m)]
        metas = [pending_meta[j] for j in keep]
        vecs = [pending_vecs[j] for j in keep]
        reuse = [m for m in pending_reuse if not held(m)]
        later = ([m for m in pending_meta if held(m)],
                 [v for m, v in zip(pending_meta, pending_vecs) if held(m)],
                 [m for m in pending_reuse if held(m)])
        if reuse:
            src_ids = list({hash_to_id[reuse_key(m)] for m in reuse})
            src = store.get(src_ids)
            by_id = {r["id"]: r for r in src.to_pylist()}
            for m in reuse:
                s = by_id.get(hash_to_id[reuse_key(m)])
                if s is None:  # source row vanished (pruned in this run): cannot reuse; rare
                    new_errors.append({**_skip(m, "content matched a deleted item; will be re-embedded next run")})
                    continue
                full = {c: s.get(c) for c in META_COLUMNS}
                full.update({k: m[k] for k in ("id", "path", "size", "mtime_ns", "hash")})
                full["label"], full["label_score"] = s.get("label"), s.get("label_score")
                metas.append(full)
                vecs.append(np.asarray(s["vector"], dtype=np.float32)[None, :])
        if metas:
            now = datetime.now()
            for m in metas:
                m.setdefault("indexed_at", now)
            store.upsert(make_rows(metas, np.concatenate(vecs, axis=0)))
        failed_known = [e["path"] for e in new_errors if e["path"] in known]
        for path in list(docs.remaining):  # pages a re-indexed document no longer has
            if path not in cleaned_docs and docs.complete(path):
                cleaned_docs.add(path)
                failed_known += [i for i in docs.old_ids.get(path, [])
                                 if int(i.rsplit("#page=", 1)[1]) > docs.pages[path]]
        if failed_known:  # a file that was indexed and is now unreadable: drop its stale row
            store.delete(failed_known)
        run_skips.extend(new_errors)
        new_errors.clear()
        save_skips()
        secs["write"] += time.perf_counter() - tw
        pending_meta, pending_vecs, pending_reuse = later

    try:
        if work:
            import torch  # noqa: F401 — imported in the parent before DataLoader forks its workers

            emb = index.embedder
            transform = emb.image_transform()  # loads the model
            draft = emb.image_size if opts.draft else None
            if opts.ocr_images:
                draft = None  # OCR needs the full resolution
            ds = DecodeDataset(work, transform, draft, opts.max_pixels, frozenset(hash_to_id),
                               page_transform=PageTransform(transform, crop_fraction_of(emb), opts.page_tiles),
                               page_options=PageOptions(opts.dpi, opts.page_tiles, opts.ocr_pages, opts.ocr_lang),
                               ocr_lang=opts.ocr_lang if opts.ocr_images else None)
            device = str(getattr(emb, "device", "cpu"))
            cuda = device.startswith("cuda")
            workers = default_workers(device) if opts.workers is None else max(0, opts.workers)
            workers = min(workers, max(0, (len(work) + opts.batch_size - 1) // opts.batch_size))
            tw = time.perf_counter()
            # Workers only read files and run the image transform; they never touch the store, so
            # LanceDB's "fork support is experimental" warning (about its runtime in the child) does
            # not apply to them.
            warnings.filterwarnings("ignore", message=".*fork support is experimental.*")
            for results, pixels, rows in decoded_batches(ds, opts.batch_size, workers, cuda):
                secs["wait"] += time.perf_counter() - tw
                for r in results:
                    docs.page_done(r.entry.path)
                    if r.meta is not None:
                        rep.ocr_pages += bool(r.meta.get("ocr"))
                        rep.pages_without_text += bool(r.meta.get("needs_ocr"))
                    secs["read"] += r.read_s
                    secs["decode"] += r.decode_s
                    secs["preprocess"] += r.preprocess_s
                    if r.error is not None:
                        new_errors.append(Skip(_key(r.entry), r.error, r.entry.size, r.entry.mtime_ns).to_dict())
                    elif r.reused:
                        pending_reuse.append(r.meta)
                if pixels is not None:
                    tm = time.perf_counter()
                    vecs = emb.embed_pixels(pixels)
                    vecs, rows = pool_views(vecs, rows)  # a page's views → one vector
                    secs["model"] += time.perf_counter() - tm
                    bad = ~np.isfinite(vecs).all(axis=1)
                    for j, ri in enumerate(rows):
                        r = results[ri]
                        if bad[j]:
                            new_errors.append(Skip(_key(r.entry), "model produced a non-finite vector",
                                                   r.entry.size, r.entry.mtime_ns).to_dict())
                            continue
                        pending_meta.append(r.meta)
                        pending_vecs.append(vecs[j : j + 1])
                    rep.embedded += int((~bad).sum())
                rep.reused += sum(1 for r in results if r.reused)
                done += len(results)
                if len(pending_meta) + len(pending_reuse) >= opts.commit_every:
                    commit()
                if progress is not None:
                    progress(Progress(done, len(work), rep.embedded, rep.reused,
                                      len(new_errors) + sum(1 for s in run_skips if s.get("path")),
                                      time.perf_counter() - t_embed))
                tw = time.perf_counter()
        commit()
    except KeyboardInterrupt:
        commit()
        rep.interrupted = True
    finally:
        save_skips()
    secs["embed_total"] = time.perf_counter() - t_embed
    if rep.pages_without_text:
        log.warning("%d PDF pages have no text layer and were not OCR'd (%s)", rep.pages_without_text,
                    "OCR is off" if opts.ocr_pages == "off" else "tesseract is not installed")
    if gone:  # after the embeds, so a renamed file can still reuse the vector stored under its old name
        tw = time.perf_counter()
        store.delete(gone)
        rep.deleted = len(gone)
        secs["write"] += time.perf_counter() - tw
    if not rep.interrupted:
        to = time.perf_counter()
        store.optimize()
        secs["optimize"] = time.perf_counter() - to
    rep.seconds.update(secs)
    rep.skipped = [s for s in run_skips]
    rep.total_items = store.count()
    rep.seconds["total"] = time.perf_counter() - t_start
    return rep


def _key(entry) -> str:
    """Skip-list key of a work item: the file path, or ``"<path>#page=<n>"`` for a document page."""
    page = getattr(entry, "page", None)
    return f"{entry.path}#page={page}" if page is not None else entry.path


CRASH_REASON = "the image decoder crashed on this file (its worker process died); not retried until the file changes"


class _Range:
    """Items ``start:stop`` of a map-style dataset (picklable, for DataLoader workers)."""

    def __init__(self, ds, start: int, stop: int) -> None:
        self.ds, self.start, self.stop = ds, start, stop

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        return self.ds[self.start + i]


#: What a DataLoader raises when a worker dies: torch's RuntimeError("DataLoader worker ... exited"), or,
#: when the worker dies while handing a batch over through a shared file descriptor, the connection error
#: (or EOF) of that hand-over.
_WORKER_DEATH = (RuntimeError, ConnectionError, EOFError)


def _worker_died(e: BaseException) -> bool:
    if isinstance(e, RuntimeError):
        return "DataLoader worker" in str(e)
    return isinstance(e, (ConnectionError, EOFError))


def decoded_batches(ds: DecodeDataset, batch_size: int, workers: int, pin_memory: bool = False):
    """Yield collated batches of ``ds`` in order, decoding in ``workers`` processes.

    A hostile file can crash a native decoder (a segfault in a codec library) and with it the worker
    process. Then the batches that were in flight are replayed one file at a time in a fresh worker,
    the file that kills it is reported with :data:`CRASH_REASON`, and decoding goes on: one such
    file never costs the run, and is not retried by the next run either (it is a recorded skip).
    """
    from torch.utils.data import DataLoader

    if workers <= 0:
        yield from DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=collate)
        return
    try:  # torch raises worker deaths from a SIGCHLD handler at any point of the main thread (in the
        # middle of a commit, say); leave detection to the loader's own status check inside this loop
        from torch.utils.data._utils import signal_handling

        signal_handling._SIGCHLD_handler_set = True
    except Exception:  # noqa: BLE001  # pragma: no cover - private torch API moved
        pass
    n, start = len(ds), 0
    while start < n:
        loader = DataLoader(_Range(ds, start, n), batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate, pin_memory=pin_memory, prefetch_factor=2, persistent_workers=False)
        try:
            for batch in loader:
                start += len(batch[0])
                yield batch
            return
        except _WORKER_DEATH as e:
            if not _worker_died(e):
                raise
            log.warning("a decode worker died (%s); finding the file that crashed it", e)
        window = min(n, start + (2 * workers + 1) * batch_size)  # every file that was in flight
        while start < window:
            iso = DataLoader(_Range(ds, start, window), batch_size=1, shuffle=False, num_workers=1,
                             collate_fn=collate, prefetch_factor=1, persistent_workers=False)
            try:
                for batch in iso:  # one file at a time: the worker only holds the file asked for
                    start += 1
                    yield batch
            except _WORKER_DEATH as e:
                if not _worker_died(e):
                    raise
                log.warning("decoder crashed on %s", ds.work[start].path)
                yield [DecodeResult(ds.work[start], error=CRASH_REASON)], None, []
                start += 1


def _skip(meta: dict, reason: str) -> dict:
    return {"path": meta["path"], "reason": reason, "size": meta.get("size"), "mtime_ns": meta.get("mtime_ns")}
