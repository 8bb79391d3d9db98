"""The local indexing engine: plan (:mod:`~imgrag.indexer.plan`) → decode in worker processes
(:mod:`~imgrag.indexer.loader`) → embed → commit (:mod:`~imgrag.indexer.commit`) → finalise.

Decoding runs in DataLoader worker processes while the model runs in the main process, so decode
overlaps compute; the loader's bounded prefetch plus chunked commits keep memory bounded whatever the
collection size (only per-file metadata of the work list scales with it).

Crash safety and resume come from one rule: the store is the only record of what is done, and every
chunk is committed atomically (``store.upsert``). A rerun skips files whose size and mtime match a
committed row, so it continues where a crash, Ctrl-C or SIGKILL stopped it — no duplicates, no gaps.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from imgrag.indexer.commit import LocalCommitter, SkipLog
from imgrag.indexer.decode import DEFAULT_MAX_PIXELS, DecodeDataset, collate
from imgrag.indexer.documents import DocTracker, PageOptions, plan_documents, reuse_key
from imgrag.retrieval.locking import writer_lock
from imgrag.indexer.loader import CRASH_REASON, decoded_batches, default_workers
from imgrag.indexer.plan import make_plan, reuse_sources
from imgrag.indexer.replicas import ReplicaPool, build_replicas, parse_devices, precision_of, resolve_devices
from imgrag.indexer.report import IndexReport, Progress
from imgrag.indexer.scan import Skip, normalize_roots, scan
from imgrag.indexer.tensor_decode import Finisher, resolve_preprocess, tensor_loading
from imgrag.indexer.sources import supported_extensions
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index
from imgrag.retrieval.layout import PageTransform, crop_fraction_of, pool_views
from imgrag.retrieval.paths import to_fs

log = logging.getLogger("imgrag.indexer")

# re-exported: callers and tests import these from here
__all__ = ["CRASH_REASON", "IndexOptions", "IndexReport", "Progress", "build_index", "decoded_batches",
           "default_workers", "supported_extensions"]


@dataclass
class IndexOptions:
    # None → 64 on the CPU, from GPU memory on CUDA (indexer/gpu_plan.local_defaults); per replica
    batch_size: int | None = None
    workers: int | None = None  # None → default_workers(device), the plan's on CUDA; 0 → decode in the main process
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
    # "pil": decode + model transform in the workers; "tensor": workers read bytes (decode what the GPU cannot),
    # JPEG decode and resize/normalise on the model's device (indexer/tensor_decode.py); "auto": tensor on CUDA
    preprocess: str = "auto"
    # one model replica per entry (indexer/replicas.py): None → every visible GPU when the model is on plain
    # "cuda", else the model's device; ("all",) → every visible GPU; ("cpu", "cpu") → two CPU replicas
    devices: tuple[str, ...] | None = None
    replica_factory: Callable[[str], object] | None = None  # device → embedder; default: the index's model

    def validate(self) -> None:
        """Refuse bad options before anything is written (the CLI's parser checks them too)."""
        if not 0 < self.dpi <= 1200:  # NaN fails too
            raise ImgragError(f"--dpi must be between 1 and 1200, got {self.dpi:g}")
        for name, low in (("batch_size", 1), ("commit_every", 1), ("page_tiles", 0), ("max_pixels", 1)):
            if getattr(self, name) is not None and int(getattr(self, name)) < low:
                raise ImgragError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.preprocess not in ("auto", "pil", "tensor"):
            raise ImgragError(f"preprocess must be auto, pil or tensor, got {self.preprocess!r}")
        if self.ocr_pages not in ("auto", "on", "off"):
            raise ImgragError(f"ocr_pages must be auto, on or off, got {self.ocr_pages!r}")
        if self.devices is not None:
            self.devices = parse_devices(",".join(self.devices))


def build_index(index: Index, roots: Iterable[str | Path], options: IndexOptions | None = None,
                progress: Callable[[Progress], None] | None = None) -> IndexReport:
    """Bring ``index`` up to date with the images under ``roots``; returns what was done.

    Holds the index's writer lock for the whole run (a second writer gets :class:`IndexLockedError`).
    Options and paths are checked before anything is written. A draft index (``create_or_open(...,
    rebuild=True)``) is published (:meth:`Index.publish`, under the lock) only when the run completed:
    an interrupted or failed rebuild leaves the old index as it was, and its draft to resume.
    """
    opts = options or IndexOptions()
    opts.validate()
    roots_n = normalize_roots(roots)
    check_roots(roots_n)
    with writer_lock(index.root, outer=True):  # a kernel lock locally, a lease object on s3:// etc.
        for line in index.collect_garbage():  # older generations, drafts of other rebuilds
            log.warning(line)
        rep = _run(index, roots_n, opts, progress)
        if index.draft and not rep.interrupted:
            index.publish()
        return rep


def check_roots(roots: list[str]) -> None:
    """Every root exists and can be read (a rebuild from an unreadable folder would publish an empty index)."""
    for r in roots:
        f = to_fs(r)
        if not os.path.exists(f):
            raise ImgragError(f"path not found: {r}")
        if not os.access(f, os.R_OK | (os.X_OK if os.path.isdir(f) else 0)):
            raise ImgragError(f"cannot read {r} (permission denied); fix its permissions or leave it out")


def _run(index: Index, roots: list[str], opts: IndexOptions, progress) -> IndexReport:
    t_start = time.perf_counter()
    rep = IndexReport(roots=roots)
    store = index.store
    exts = opts.extensions or supported_extensions()
    if opts.ocr_images or opts.ocr_pages == "on":
        from imgrag.retrieval import ocr

        ocr.require(opts.ocr_lang)

    # --- plan: what is new, changed, unchanged, gone ---------------------------------------------------
    t0 = time.perf_counter()
    states = store.file_states()
    listing = scan(roots, exts, exclude=[index.root] if index.location.local else [],
                   include_hidden=opts.include_hidden)
    plan = make_plan(states, listing, roots, index.skipped(), retry_skipped=opts.retry_skipped, prune=opts.prune)
    hash_to_id = reuse_sources(states)
    del states
    work: list = plan.image_entries()  # FileEntry (images), then PageWork (document pages)
    dplan = plan_documents(plan.documents, plan.doc_rows)  # opens each changed PDF once (no rendering)
    work.extend(dplan.work)
    skips = SkipLog(index, plan)
    skips.extend(dplan.skips)
    rep.scanned, rep.unchanged, rep.new_or_changed = plan.scanned, plan.unchanged, plan.new_or_changed
    rep.documents, rep.pages = len(dplan.old_ids), dplan.pages_total
    rep.seconds["plan"] = time.perf_counter() - t0
    log.info("scan: %d files, %d unchanged, %d to index, %d gone", rep.scanned, rep.unchanged, len(work),
             len(plan.gone))

    # --- embed and commit ---------------------------------------------------------------------------
    secs = {"read": 0.0, "decode": 0.0, "preprocess": 0.0, "model": 0.0, "write": 0.0, "wait": 0.0}
    committer = LocalCommitter(store, plan, DocTracker(dplan), hash_to_id, skips, secs)
    if dplan.failed_ids:  # documents that were indexed and can no longer be read: drop their pages
        store.delete(dplan.failed_ids)
    t_embed = time.perf_counter()
    try:
        if work:
            _embed(index, work, opts, committer, rep, secs, progress, t_embed)
        committer.commit()
    except KeyboardInterrupt:
        committer.commit()
        rep.interrupted = True
    finally:
        skips.save()
    secs["embed_total"] = time.perf_counter() - t_embed
    if rep.pages_without_text:
        log.warning("%d PDF pages have no text layer and were not OCR'd (%s)", rep.pages_without_text,
                    "OCR is off" if opts.ocr_pages == "off" else "tesseract is not installed")

    # --- finalise -----------------------------------------------------------------------------------
    if plan.gone:  # after the embeds, so a renamed file can still reuse the vector stored under its old name
        tw = time.perf_counter()
        store.delete(plan.gone)
        rep.deleted = len(plan.gone)
        secs["write"] += time.perf_counter() - tw
    if not rep.interrupted:
        to = time.perf_counter()
        store.optimize()
        secs["optimize"] = time.perf_counter() - to
    rep.seconds.update(secs)
    rep.skipped = list(skips.run)
    rep.total_items = store.count()
    rep.seconds["total"] = time.perf_counter() - t_start
    return rep


def _embed(index: Index, work: list, opts: IndexOptions, committer: LocalCommitter, rep: IndexReport,
           secs: dict[str, float], progress, t_embed: float) -> None:
    """Decode ``work`` in worker processes, embed it on one model replica per device (round-robin,
    :mod:`~imgrag.indexer.replicas`), hand rows to ``committer`` in order (commits every ``commit_every``
    rows)."""
    import torch  # noqa: F401 — imported in the parent before DataLoader forks its workers

    from imgrag.indexer.gpu_plan import local_defaults

    emb = index.embedder
    transform = emb.image_transform()  # loads the model
    device = str(getattr(emb, "device", "cpu"))
    devices = resolve_devices(opts.devices, device)
    batch_size, workers = local_defaults(opts.batch_size, opts.workers, devices)
    draft = emb.image_size if opts.draft else None
    if opts.ocr_images:
        draft = None  # OCR needs the full resolution
    ds_args = (work, transform, draft, opts.max_pixels, frozenset(committer.hash_to_id))
    ds_kwargs = dict(page_transform=PageTransform(transform, crop_fraction_of(emb), opts.page_tiles),
                     page_options=PageOptions(opts.dpi, opts.page_tiles, opts.ocr_pages, opts.ocr_lang),
                     ocr_lang=opts.ocr_lang if opts.ocr_images else None)
    collate_fn, finish = collate, None
    if resolve_preprocess(opts.preprocess, device, emb) == "tensor":
        ds, collate_fn, finish = tensor_loading(emb, device, ds_args, ds_kwargs)
    else:
        ds = DecodeDataset(*ds_args, **ds_kwargs)
    replicas = build_replicas(emb, devices, opts.replica_factory or _replica_factory(index, emb, batch_size))
    # the tensor path on CUDA finishes (GPU JPEG decode, resize) on each replica's own device
    finishers = [finish if finish is None or r is emb else Finisher(r.tensor_transform(), d, ds.max_pixels)
                 for r, d in zip(replicas, devices)]
    if len(replicas) > 1:
        log.info("embedding on %d model replicas: %s", len(replicas), ", ".join(devices))
    workers = min(max(0, workers), max(0, (len(work) + batch_size - 1) // batch_size))
    # Workers only read files and run the image transform; they never touch the store, so LanceDB's
    # "fork support is experimental" warning (about its runtime in the child) does not apply to them.
    warnings.filterwarnings("ignore", message=".*fork support is experimental.*")
    docs = committer.docs
    inflight: set[str] = set()  # reuse keys of batches handed to a replica and not yet back
    known = _Known(committer.hash_to_id, inflight)

    def jobs():
        tw = time.perf_counter()
        for results, pixels, rows in decoded_batches(ds, batch_size, workers, device.startswith("cuda"), collate_fn):
            secs["wait"] += time.perf_counter() - tw
            dup, keys = _mark_reused(results, known)
            inflight.update(keys)
            yield results, pixels, rows, dup, keys
            tw = time.perf_counter()

    def embed(i: int, job):  # in replica i's thread (inline with one replica)
        results, pixels, rows, dup, _keys = job
        if finishers[i] is not None:  # tensor path on CUDA: decode JPEGs + resize/normalise on the GPU
            with _on_device(devices[i]):
                pixels, rows = finishers[i](results, pixels)
        pixels, rows = _drop_rows(pixels, rows, dup)
        if pixels is None:
            return None, rows, 0.0
        tm = time.perf_counter()
        with _on_device(devices[i]):
            vecs = replicas[i].embed_pixels(pixels)
        vecs, rows = pool_views(vecs, rows)  # a page's views → one vector
        return vecs, rows, time.perf_counter() - tm

    done = 0
    batches = jobs()
    with ReplicaPool(devices, embed) as pool, contextlib.closing(batches):  # stops the decode workers on errors
        for (results, _p, _r, _d, keys), (vecs, rows, model_s) in pool.run(batches):
            for r in results:
                docs.page_done(r.entry.path)
                if r.meta is not None:
                    rep.ocr_pages += bool(r.meta.get("ocr"))
                    rep.pages_without_text += bool(r.meta.get("needs_ocr"))
                secs["read"] += r.read_s
                secs["decode"] += r.decode_s
                secs["preprocess"] += r.preprocess_s
                if r.error is not None:
                    committer.errors.append(Skip(_key(r.entry), r.error, r.entry.size, r.entry.mtime_ns).to_dict())
                elif r.reused:
                    committer.reuse.append(r.meta)
            if vecs is not None:
                secs["model"] += model_s
                bad = ~np.isfinite(vecs).all(axis=1)
                for j, ri in enumerate(rows):
                    r = results[ri]
                    if bad[j]:
                        committer.errors.append(Skip(_key(r.entry), "model produced a non-finite vector",
                                                     r.entry.size, r.entry.mtime_ns).to_dict())
                        continue
                    committer.add(r.meta, vecs[j : j + 1])
                rep.embedded += int((~bad).sum())
            inflight.difference_update(keys)  # the committer's hash_to_id knows the embedded ones now
            rep.reused += sum(1 for r in results if r.reused)
            done += len(results)
            if committer.pending >= opts.commit_every:
                committer.commit()
            if progress is not None:
                progress(Progress(done, len(work), rep.embedded, rep.reused,
                                  len(committer.errors) + committer.skips.count(), time.perf_counter() - t_embed))


def _replica_factory(index: Index, emb, batch_size: int):
    """device → a replica of the index's model (same precision, loader-sized forward passes), checked
    against the index like the first one."""
    from imgrag.retrieval.embedders import load_embedder
    from imgrag.retrieval.index import check_compatible

    precision = precision_of(emb)

    def make(device: str):
        r = load_embedder(index.manifest.model, device=device, precision=precision, batch_size=batch_size)
        check_compatible(index.manifest, r, index.root)
        return r
    return make


def _on_device(device: str):
    """Make ``device`` the thread's current CUDA device (nvJPEG and the model's kernels run there)."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.device(torch.device(device))
    return contextlib.nullcontext()


class _Known:
    """Reuse keys known before a batch: the committer's (embedded, committed or pending) plus those of
    batches still on a replica — so a copy met in the next batch is reused, as with one replica."""

    def __init__(self, committed: dict[str, str], inflight: set[str]) -> None:
        self.committed, self.inflight = committed, inflight

    def __contains__(self, key: str) -> bool:
        return key in self.committed or key in self.inflight


def _mark_reused(results: list, known) -> tuple[set[int], list[str]]:
    """Mark results whose content was already embedded in this run (in an earlier batch, or earlier in this
    one) as reused → ``(their indices, the reuse keys this batch will embed)``.

    The decode workers only know the hashes the index held when the run started, so copies first met in
    one run (a folder with copied files and symlinks) come back decoded; this spares the model, and the
    committer takes their vector from the pending or committed row (:meth:`LocalCommitter.add` records it).
    On the CUDA tensor path this runs before the GPU decode: a copy of a JPEG that then fails to decode is
    recorded as a skip to retry ("content matched a deleted item"), not as the same decode error.
    """
    seen: list[str] = []
    seen_set: set[str] = set()
    dup: set[int] = set()
    for i, r in enumerate(results):
        key = reuse_key(r.meta) if r.error is None and not r.reused and r.meta is not None else None
        if key is None:
            continue
        if key in known or key in seen_set:
            r.reused = True
            dup.add(i)
        else:
            seen.append(key)
            seen_set.add(key)
    return dup, seen


def _drop_rows(pixels, rows: list[int], dup: set[int]):
    """``(pixels, rows)`` without the rows of results in ``dup``; ``(None, [])`` when none is left."""
    if pixels is None or not dup:
        return pixels, rows
    keep = [j for j, ri in enumerate(rows) if ri not in dup]
    return (pixels[keep], [rows[j] for j in keep]) if keep else (None, [])


def _key(entry) -> str:
    """Skip-list key of a work item: the file path, or ``"<path>#page=<n>"`` for a document page."""
    page = getattr(entry, "page", None)
    return f"{entry.path}#page={page}" if page is not None else entry.path
