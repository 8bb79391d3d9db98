"""Distributed indexing on Ray Data: ``imgrag index --engine ray [--ray-address ADDR] SOURCE... --index URI``.

Stages (one Ray Dataset, streamed, so memory stays bounded on every node):

1. **Plan** (driver): list the sources (:mod:`~imgrag.indexer.sources`: local folders or object-storage
   prefixes such as ``s3://bucket/photos/``) and plan with the local indexer's own planner
   (:mod:`~imgrag.indexer.plan`): unchanged files are skipped, files that failed before and did not change
   are not retried, rows of deleted files are pruned. New or changed documents (PDF) become skips that say
   to use the local engine.
2. **Decode** (CPU tasks; fused into the embedding actors on CPU-only clusters, where the resource
   requests match): read, hash, decode and preprocess with the local indexer's own code
   (:class:`~imgrag.indexer.decode.DecodeDataset`, :func:`~imgrag.retrieval.imageio.decode_image` and the
   embedder's ``image_transform``); a bad file becomes a skip record, never a failed task.
3. **Embed** (actor pool): one model per actor, loaded once (``num_gpus=1`` per actor on GPU clusters,
   CPU actors otherwise), the same :class:`~imgrag.retrieval.embedders.base.Embedder` code as locally; each
   actor checks its model's fingerprint against the index manifest before embedding anything.
4. **Write** (CPU tasks): rows of new files go to the store's staged writer
   (:meth:`~imgrag.retrieval.stores.base.VectorStore.staged_writer`; LanceDB: fragment files of the
   index's table), in parallel; nothing is visible yet.
5. **Commit** (driver): staged rows are committed with one ``store.commit_staged`` per ``commit_every``
   rows (LanceDB: one ``Append``, an atomic new table version). Rows of *changed* files go through
   ``store.upsert`` instead, so they replace their old row atomically. Skip records are saved at every
   commit.
6. **ANN index** (driver): built once writing finishes (the store's ``optimize``).

Resume and no duplicates: the table is the only record of what is done. A file is planned at most once
per run and only if the committed table has no up-to-date row for it; a task that Ray retries writes new
staged files, but only the tokens the driver receives are committed, once. After a crash, rows staged
but not committed are unreferenced files (removed by the store's cleanup); the rerun plans their files
again. The differences from the local engine: renamed/duplicated files are re-embedded rather than
matched by content hash, and the writer is the driver (it holds the index lock or lease).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from imgrag.indexer.commit import SkipLog
from imgrag.indexer.decode import DEFAULT_MAX_PIXELS
from imgrag.retrieval.locking import writer_lock
from imgrag.indexer.plan import Plan, make_plan
from imgrag.indexer.ray_stages import EmbedActor, decode_batch, write_batch
from imgrag.indexer.report import IndexReport, Progress
from imgrag.indexer.scan import FileEntry, Skip
from imgrag.indexer.sources import list_sources, supported_extensions
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index

log = logging.getLogger("imgrag.indexer")

INSTALL_HINT = "pip install 'imgrag[distributed]'"


@dataclass
class RayOptions:
    address: str | None = None  # None: join a running cluster if RAY_ADDRESS is set, else start a local one
    actors: int | None = None  # embedding actors; None: one per GPU, else 1 (CPU)
    gpus_per_actor: float | None = None  # None: 1 when the cluster has GPUs, else 0
    cpus_per_actor: float = 1.0
    cpus_per_decode_task: float = 1.0
    batch_size: int = 64  # images per forward pass
    rows_per_fragment: int = 4096  # rows each write task puts in one Lance fragment
    commit_every: int = 16384  # rows per atomic Append commit
    draft: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS
    retry_skipped: bool = False
    prune: bool = True
    include_hidden: bool = False
    extensions: frozenset[str] | None = None
    device: str = "auto"  # in the actors
    precision: str = "auto"


def import_ray():
    """``ray`` (and check ``lance``), or an :class:`ImgragError` naming the extra to install."""
    try:
        import lance  # noqa: F401 - fragments are written with pylance
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise ImgragError(f"--engine ray needs Ray Data and pylance ({e.name} is missing): {INSTALL_HINT}") from None
    return ray


# ------------------------------------------------------------------------------------------------
# plan
# ------------------------------------------------------------------------------------------------
DOCUMENT_REASON = "documents (PDF) are indexed by the local engine; run imgrag index without --engine ray for them"


def plan_work(states, items: Iterable[FileEntry | Skip], roots: Sequence[str],
              prev_skips: Iterable[dict] | dict[str, dict], retry_skipped: bool = False, prune: bool = True) -> Plan:
    """The shared plan (:func:`~imgrag.indexer.plan.make_plan`), with new or changed documents turned into
    skips: documents are indexed by the local engine (their rows are kept, never pruned here)."""
    plan = make_plan(states, items, roots, prev_skips, retry_skipped=retry_skipped, prune=prune)
    # without size and mtime: the local engine must not take the record for a failure of this very file
    plan.skips.extend(Skip(d.path, DOCUMENT_REASON).to_dict() for d in plan.documents)
    plan.documents = []
    return plan


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------
def build_index_ray(index: Index, sources: Iterable[str | Path], options: RayOptions | None = None,
                    progress: Callable[[Progress], None] | None = None) -> IndexReport:
    """Bring ``index`` (a LanceDB index, local or on object storage) up to date with ``sources`` on Ray."""
    opts = options or RayOptions()
    ray = import_ray()
    if index.manifest.store != "lancedb":
        raise ImgragError("--engine ray writes LanceDB indexes; this index uses the "
                          f"{index.manifest.store} store (use the local engine, or a new --index)")
    sources = list(sources)
    if not sources:
        raise ImgragError("give at least one folder or object-storage prefix to index")
    with writer_lock(index.root, outer=True) as guard:
        for line in index.collect_garbage():  # older generations, drafts of other rebuilds
            log.warning(line)
        if not ray.is_initialized():
            _init_ray(ray, opts.address)
        rep = _run(ray, index, sources, opts, progress, guard)
        if index.draft and not rep.interrupted:  # a rebuild, built beside the old index, is complete: switch
            index.publish()
        return rep


def _init_ray(ray, address: str | None) -> None:
    kw: dict[str, Any] = {"ignore_reinit_error": True, "log_to_driver": False}
    if address:
        kw["address"] = address
    elif not os.environ.get("RAY_ADDRESS"):  # start a local cluster, without the dashboard
        kw["include_dashboard"] = False
    try:
        ray.init(**kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ImgragError(f"cannot start or join a Ray cluster ({' '.join(str(e).split())[:200]}); "
                          "check --ray-address (e.g. auto, or HOST:6379)") from e


def _run(ray, index: Index, sources: list, opts: RayOptions, progress, guard=None) -> IndexReport:
    t_start = time.perf_counter()
    store = index.store
    exts = opts.extensions or supported_extensions()
    exclude = [index.root] if index.location.local else []
    roots, items = list_sources(sources, exts, exclude=exclude, include_hidden=opts.include_hidden)
    rep = IndexReport(roots=roots)

    # --- plan (the local indexer's planner) ----------------------------------------------------------
    t0 = time.perf_counter()
    plan = plan_work(store.file_states(), items, roots, index.skipped(), retry_skipped=opts.retry_skipped,
                     prune=opts.prune)
    skips = SkipLog(index, plan)
    rep.scanned, rep.unchanged, rep.new_or_changed = plan.scanned, plan.unchanged, plan.images.num_rows
    rep.seconds["plan"] = time.perf_counter() - t0
    log.info("ray plan: %d files, %d unchanged, %d to index, %d gone", rep.scanned, rep.unchanged,
             plan.images.num_rows, len(plan.gone))

    # --- embed and commit ----------------------------------------------------------------------------
    t_embed = time.perf_counter()
    if plan.images.num_rows:
        rep.seconds.update(_embed_and_write(ray, index, plan, opts, rep, skips, progress, t_embed, guard))
    skips.save()
    rep.seconds["embed_total"] = time.perf_counter() - t_embed

    # --- finalise ------------------------------------------------------------------------------------
    if plan.gone:
        store.delete(plan.gone)
        rep.deleted = len(plan.gone)
    to = time.perf_counter()
    store.optimize()  # compaction + the ANN index, once, after all writes
    rep.seconds["optimize"] = time.perf_counter() - to
    rep.skipped = list(skips.run)
    rep.total_items = store.count()
    rep.seconds["total"] = time.perf_counter() - t_start
    return rep


def _pipeline(ray, index: Index, work, opts: RayOptions):
    """The Ray Dataset: decode tasks → embedding actors → write tasks (streamed)."""
    import ray.data

    emb = index.embedder
    transform = emb.image_transform()
    draft = emb.image_size if opts.draft else None
    pixel_shape = tuple(np.asarray(transform(_probe_image(emb.image_size))).shape)
    resources = ray.cluster_resources()
    has_gpu = float(resources.get("GPU", 0)) >= 1
    gpus = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if has_gpu else 0.0)
    actors = opts.actors or (max(1, int(resources.get("GPU", 0))) if gpus else 1)

    ray.data.DataContext.get_current().enable_progress_bars = False  # the caller draws progress
    n = work.num_rows
    n_blocks = max(1, min(n, (n + opts.batch_size - 1) // opts.batch_size, 100_000))
    ds = ray.data.from_arrow(work).repartition(n_blocks)
    ds = ds.map_batches(decode_batch, batch_size=opts.batch_size, batch_format="numpy",
                        num_cpus=opts.cpus_per_decode_task,
                        fn_kwargs={"transform": transform, "draft_size": draft, "max_pixels": opts.max_pixels,
                                   "pixel_shape": pixel_shape})
    # On GPU clusters decode tasks (CPU) and embedding actors (GPU) are separate operators; on CPU-only
    # clusters their resource requests match and Ray Data fuses decode into the actors, so each actor
    # decodes its own batches and no float pixels cross process boundaries.
    ds = ds.map_batches(EmbedActor, batch_size=opts.batch_size, batch_format="numpy",
                        compute=ray.data.ActorPoolStrategy(size=actors),
                        num_gpus=gpus or None, num_cpus=opts.cpus_per_actor,
                        fn_constructor_kwargs={"spec": index.manifest.model, "fingerprint": index.manifest.fingerprint,
                                               "dim": index.manifest.dim,
                                               "device": "cuda" if gpus else opts.device,
                                               "precision": opts.precision, "batch_size": opts.batch_size,
                                               "threads": 0 if gpus else max(1, int(opts.cpus_per_actor))})
    return ds.map_batches(write_batch, batch_size=max(1, opts.rows_per_fragment), batch_format="numpy",
                          num_cpus=min(1.0, opts.cpus_per_decode_task),
                          fn_kwargs={"writer": index.store.staged_writer()})


def _embed_and_write(ray, index: Index, plan: Plan, opts: RayOptions, rep: IndexReport, skips: SkipLog, progress,
                     t_embed: float, guard=None) -> dict[str, float]:
    """Stream the pipeline's results into commits of ``commit_every`` rows, all through the store."""
    import pyarrow as pa

    store = index.store
    ds = _pipeline(ray, index, plan.images, opts)
    n = plan.images.num_rows
    tokens: list[str] = []
    pending_new = 0
    replaced: list = []
    pending_skips: list[dict] = []
    done = 0
    secs = {"commit": 0.0, "decode": 0.0, "model": 0.0, "write": 0.0}  # summed over workers

    def commit() -> None:
        nonlocal tokens, pending_new, replaced, pending_skips
        if getattr(guard, "lost", False):  # our lease on object storage was taken: never commit beside another writer
            from imgrag.retrieval.errors import IndexLockedError

            raise IndexLockedError(f"index {index.root}: another imgrag process took over the writer lease; "
                                   "this run stopped without committing its last batch")
        tc = time.perf_counter()
        store.commit_staged(tokens)
        if replaced:
            store.upsert(pa.concat_tables(replaced))
        failed_known = plan.indexed([s["path"] for s in pending_skips])
        if failed_known:  # indexed before, unreadable now: drop the stale row (as the local engine does)
            store.delete(failed_known)
        skips.extend(pending_skips)
        skips.save()
        rep.embedded += pending_new + sum(t.num_rows for t in replaced)
        tokens, pending_new, replaced, pending_skips = [], 0, [], []
        secs["commit"] += time.perf_counter() - tc

    try:
        for row in ds.iter_rows():
            if row["staged"]:
                tokens.append(row["staged"])
            pending_new += int(row["new_rows"])
            if int(row["replace_rows"]):
                replaced.append(pa.ipc.open_stream(pa.py_buffer(row["replace_ipc"])).read_all())
            pending_skips.extend(json.loads(row["skips"]))
            done += int(row["done"])
            secs["decode"] += float(row["decode_s"])
            secs["model"] += float(row["embed_s"])
            secs["write"] += float(row["write_s"])
            if pending_new + sum(t.num_rows for t in replaced) >= opts.commit_every:
                commit()
            if progress is not None:
                progress(Progress(done, n, rep.embedded + pending_new, 0, len(skips.run) + len(pending_skips),
                                  time.perf_counter() - t_embed))
        commit()
    except KeyboardInterrupt:
        commit()
        rep.interrupted = True
    return secs


def _probe_image(size: int):
    from PIL import Image

    return Image.new("RGB", (max(1, size), max(1, size)), (127, 127, 127))
