"""Distributed indexing on Ray Data: ``imgrag index --engine ray [--ray-address ADDR] SOURCE... --index URI``.

Stages (one Ray Dataset, streamed, so memory stays bounded on every node):

1. **Plan** (driver): list the sources — local folders (the local indexer's scanner) or object-storage
   prefixes (``s3://bucket/photos/`` through :mod:`pyarrow.fs`) — and compare with the index's rows by
   size and mtime, exactly like the local indexer: unchanged files are skipped, files that failed before
   and did not change are not retried, rows of deleted files are pruned.
2. **Decode** (CPU tasks; fused into the embedding actors on CPU-only clusters, where the resource
   requests match): read, hash, decode and preprocess with the local indexer's own code
   (:class:`~imgrag.indexer.decode.DecodeDataset`, :func:`~imgrag.retrieval.imageio.decode_image` and the
   embedder's ``image_transform``); a bad file becomes a skip record, never a failed task.
3. **Embed** (actor pool): one model per actor, loaded once (``num_gpus=1`` per actor on GPU clusters,
   CPU actors otherwise), the same :class:`~imgrag.retrieval.embedders.base.Embedder` code as locally; each
   actor checks its model's fingerprint against the index manifest before embedding anything.
4. **Write** (CPU tasks): rows of new files are written as Lance fragments straight into the index's
   table (``lance.fragment.write_fragments``), in parallel; nothing is visible yet.
5. **Commit** (driver): fragments are committed with one ``Append`` per ``commit_every`` rows — an
   atomic new table version. Rows of *changed* files go through the store's ``merge_insert`` on ``id``
   instead, so they replace their old row atomically. Skip records are saved at every commit.
6. **ANN index** (driver): built once writing finishes (the store's ``optimize``).

Resume and no duplicates: the table is the only record of what is done. A file is planned at most once
per run and only if the committed table has no up-to-date row for it; a task that Ray retries writes new
fragment files, but only the fragments the driver receives are committed, once. After a crash, fragments
written but not committed are unreferenced files (removed by the store's cleanup); the rerun plans their
files again. The differences from the local engine: renamed/duplicated files are re-embedded rather than
matched by content hash, and the writer is the driver (it holds the index lock or lease).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from imgrag.indexer.decode import DEFAULT_MAX_PIXELS
from imgrag.indexer.lease import writer_lock
from imgrag.indexer.pipeline import IndexReport, Progress, supported_extensions
from imgrag.indexer.scan import FileEntry, Skip, is_under, normalize_roots, scan
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.index import Index
from imgrag.retrieval.location import filesystem_for, is_uri, storage_options_for

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
def list_sources(sources: Sequence[str | Path], exts: frozenset[str], exclude: Sequence[str | Path] = (),
                 include_hidden: bool = False) -> tuple[list[str], Iterator[FileEntry | Skip]]:
    """``(normalised roots, entries)`` for local folders/files and object-storage prefixes/objects.

    The entries are a generator (a 100M-file listing is never held as Python objects)."""
    local = normalize_roots([s for s in sources if not is_uri(s)])
    for r in local:
        if not os.path.exists(r):
            raise ImgragError(f"path not found: {r}")
    uris = [str(s).rstrip("/") for s in sources if is_uri(s)]
    return local + uris, _iter_sources(local, uris, exts, exclude, include_hidden)


def _iter_sources(local: list[str], uris: list[str], exts: frozenset[str], exclude, include_hidden: bool):
    if local:
        yield from scan(local, exts, exclude=exclude, include_hidden=include_hidden)
    for uri in uris:
        import pyarrow.fs as pfs

        fs, base = filesystem_for(uri)
        scheme = uri.split("://", 1)[0]
        info = fs.get_file_info(base)
        if info.type == pfs.FileType.NotFound:
            raise ImgragError(f"path not found: {uri}")
        infos = [info] if info.type == pfs.FileType.File else fs.get_file_info(pfs.FileSelector(base, recursive=True))
        for fi in sorted(infos, key=lambda f: f.path):
            if fi.type != pfs.FileType.File:
                continue
            rel = fi.path[len(base):].lstrip("/")
            if not include_hidden and any(part.startswith(".") for part in rel.split("/")[:-1]):
                continue
            if os.path.splitext(fi.path)[1].lower() not in exts:
                continue
            mtime_ns = int(fi.mtime_ns) if fi.mtime_ns is not None else 0
            yield FileEntry(f"{scheme}://{fi.path}", int(fi.size or 0), mtime_ns)


@dataclass
class Plan:
    work: Any  # pyarrow.Table: path, size, mtime_ns, replace (an id already in the index with other size/mtime)
    skips: list[dict]  # skip records of this run (unusable files, unchanged failures, PDFs)
    gone: list[str]  # ids of rows whose files disappeared under the roots (to prune)
    known_ids: Any  # pyarrow.Array of the index's ids
    scanned: int = 0
    unchanged: int = 0


_CHUNK = 65_536


def plan_work(states, items: Iterable[FileEntry | Skip], roots: Sequence[str], prev_skips: dict[str, dict],
              image_exts: frozenset[str], retry_skipped: bool = False, prune: bool = True) -> Plan:
    """What to index: the local indexer's rules, computed with Arrow joins so memory per file stays small.

    ``states`` is the store's ``file_states()`` table (id, path, size, mtime_ns). A file is *unchanged* when a
    row with its id has the same size and mtime; a file that failed before (``prev_skips``) with the same size
    and mtime is not retried unless ``retry_skipped``; rows under ``roots`` whose file was not listed are gone.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    states = states.select(["id", "path", "size", "mtime_ns"]).cast(pa.schema(
        [("id", pa.string()), ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())]))
    skips: list[dict] = []
    seen_chunks: list = []  # every listed path (pruning must not drop rows of files that exist)
    cand_chunks: list = []
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    other: list[FileEntry] = []  # documents: kept by the local engine, never planned here
    scanned = 0

    def flush() -> None:
        if paths:
            cand_chunks.append(pa.table({"path": pa.array(paths, pa.string()), "size": pa.array(sizes, pa.int64()),
                                         "mtime_ns": pa.array(mtimes, pa.int64())}))
            paths.clear(), sizes.clear(), mtimes.clear()
    for item in items:
        scanned += 1
        if isinstance(item, Skip):
            skips.append(item.to_dict())
            seen_chunks.append(pa.array([item.path], pa.string()))
            continue
        if os.path.splitext(item.path)[1].lower() not in image_exts:
            other.append(item)
            continue
        paths.append(item.path)
        sizes.append(item.size)
        mtimes.append(item.mtime_ns)
        if len(paths) >= _CHUNK:
            flush()
    flush()
    schema = pa.schema([("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64())])
    cand = pa.concat_tables(cand_chunks) if cand_chunks else schema.empty_table()
    del cand_chunks
    known_ids = states["id"].combine_chunks() if states.num_rows else pa.array([], pa.string())
    indexed_paths = states["path"].combine_chunks() if states.num_rows else pa.array([], pa.string())

    unchanged = 0
    if other:  # documents (PDF): the local engine indexes them; never pruned here
        doc_paths = pa.array([d.path for d in other], pa.string())
        seen_chunks.append(doc_paths)
        indexed = pc.is_in(doc_paths, value_set=indexed_paths).to_pylist()
    for item, done_before in zip(other, indexed if other else []):
        if done_before:
            unchanged += 1
        else:
            skips.append(Skip(item.path, "documents (PDF) are indexed by the local engine; run imgrag index without "
                                         "--engine ray for them", item.size, item.mtime_ns).to_dict())

    st = states.select(["id", "size", "mtime_ns"]).rename_columns(["path", "old_size", "old_mtime_ns"])
    joined = cand.join(st, keys="path", join_type="left outer") if cand.num_rows else \
        cand.append_column("old_size", pa.nulls(0, pa.int64())).append_column("old_mtime_ns", pa.nulls(0, pa.int64()))
    same = pc.fill_null(pc.and_(pc.equal(joined["size"], joined["old_size"]),
                                pc.equal(joined["mtime_ns"], joined["old_mtime_ns"])), False)
    unchanged += int(pc.sum(same).as_py() or 0)
    todo = joined.filter(pc.invert(same))
    if prev_skips and not retry_skipped and todo.num_rows:  # failed before and unchanged since: don't retry
        failed = pc.is_in(todo["path"], value_set=pa.array(list(prev_skips), pa.string()))
        keep = []
        for p, sz, mt, f in zip(todo["path"].to_pylist(), todo["size"].to_pylist(), todo["mtime_ns"].to_pylist(),
                                failed.to_pylist()):
            ps = prev_skips.get(p) if f else None
            if ps is not None and (ps.get("size"), ps.get("mtime_ns")) == (sz, mt):
                skips.append(ps)
                keep.append(False)
            else:
                keep.append(True)
        todo = todo.filter(pa.array(keep, pa.bool_()))
    work = pa.table({"path": todo["path"], "size": todo["size"], "mtime_ns": todo["mtime_ns"],
                     "replace": pc.is_valid(todo["old_size"])})
    gone: list[str] = []
    if prune and states.num_rows:
        seen = pa.concat_arrays([cand["path"].combine_chunks(), *seen_chunks]) if (cand.num_rows or seen_chunks) \
            else pa.array([], pa.string())
        under = None
        for r in roots:
            m = pc.or_(pc.equal(indexed_paths, r), pc.starts_with(indexed_paths, r.rstrip("/") + "/"))
            under = m if under is None else pc.or_(under, m)
        if under is not None:
            mask = pc.and_(under, pc.invert(pc.is_in(indexed_paths, value_set=seen)))
            gone = known_ids.filter(mask).to_pylist()
    return Plan(work=work, skips=skips, gone=gone, known_ids=known_ids, scanned=scanned, unchanged=unchanged)


# ------------------------------------------------------------------------------------------------
# stage functions (run in Ray workers; module-level so they pickle by reference)
# ------------------------------------------------------------------------------------------------
def _meta_json(meta: dict[str, Any]) -> str:
    d = dict(meta)
    if isinstance(d.get("taken_at"), datetime):
        d["taken_at"] = d["taken_at"].isoformat()
    return json.dumps(d, ensure_ascii=False)


def _meta_from_json(s: str) -> dict[str, Any]:
    d = json.loads(s)
    if d.get("taken_at"):
        d["taken_at"] = datetime.fromisoformat(d["taken_at"])
    return d


def _read_remote(entry: FileEntry, transform, draft_size, max_pixels):
    """Like DecodeDataset._load for an object-storage file (bytes through pyarrow.fs)."""
    from imgrag.indexer.decode import DecodeResult
    from imgrag.retrieval.imageio import ImageDecodeError, content_hash, decode_image

    try:
        fs, key = filesystem_for(entry.path)
        with fs.open_input_file(key) as f:
            data = f.read()
    except (OSError, ImgragError) as e:
        return DecodeResult(entry, error=f"cannot read object ({' '.join(str(e).split())[:200]})"), None
    if len(data) != entry.size:
        return DecodeResult(entry, error="object changed while being read (will be retried next run)"), None
    meta: dict[str, Any] = {"id": entry.path, "path": entry.path, "size": entry.size, "mtime_ns": entry.mtime_ns,
                            "hash": content_hash(data)}
    try:
        img = decode_image(data, draft_size=draft_size, max_pixels=max_pixels)
    except ImageDecodeError as e:
        return DecodeResult(entry, error=str(e)), None
    meta.update(width=img.width, height=img.height, taken_at=img.taken_at, gps_lat=img.gps_lat, gps_lon=img.gps_lon)
    return DecodeResult(entry, meta=meta), transform(img.image)


def decode_batch(batch: dict[str, np.ndarray], transform, draft_size: int | None, max_pixels: int,
                 pixel_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Ray map_batches UDF: paths → preprocessed pixels + metadata, or an error per row."""
    from imgrag.indexer.decode import DecodeDataset

    t0 = time.perf_counter()
    entries = [FileEntry(str(p), int(s), int(m)) for p, s, m in zip(batch["path"], batch["size"], batch["mtime_ns"])]
    local = DecodeDataset(entries, transform, draft_size, max_pixels)
    n = len(entries)
    pixels = np.zeros((n, *pixel_shape), dtype=np.float32)
    metas, errors, ok = [], [], np.zeros(n, dtype=bool)
    for i, e in enumerate(entries):
        try:
            res, px = _read_remote(e, transform, draft_size, max_pixels) if is_uri(e.path) else local[i]
        except Exception as ex:  # noqa: BLE001 - one odd file must never fail the task
            res, px = None, None
            err = f"unexpected error: {type(ex).__name__}: {ex}"
        else:
            err = res.error
        if err is None and px is not None:
            arr = np.asarray(px, dtype=np.float32)
            if arr.shape != tuple(pixel_shape):
                err = f"preprocessing produced shape {arr.shape}, expected {tuple(pixel_shape)}"
            else:
                pixels[i] = arr
                ok[i] = True
        metas.append(_meta_json(res.meta) if ok[i] else "")
        errors.append("" if ok[i] else (err or "no pixels"))
    return {"path": batch["path"], "size": batch["size"], "mtime_ns": batch["mtime_ns"], "replace": batch["replace"],
            "meta": np.array(metas, dtype=object), "error": np.array(errors, dtype=object), "ok": ok,
            "pixels": pixels, "decode_s": np.full(n, (time.perf_counter() - t0) / max(1, n))}


class EmbedActor:
    """One model per actor, loaded once; refuses to embed if it is not the index's model."""

    def __init__(self, spec: str, fingerprint: dict, dim: int, device: str, precision: str, batch_size: int,
                 threads: int) -> None:
        import torch

        from imgrag.retrieval.embedders import load_embedder

        if threads > 0:
            torch.set_num_threads(threads)
        self.emb = load_embedder(spec, device=device, precision=precision, batch_size=batch_size)
        self.emb.image_transform()  # load now
        if self.emb.fingerprint() != fingerprint or self.emb.dim != dim:
            raise ImgragError(f"the Ray worker's model {spec!r} differs from the index's (weights or preprocessing); "
                              "install the same imgrag and weights on every node")
        self.dim = dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        t0 = time.perf_counter()
        ok = np.asarray(batch["ok"], dtype=bool).copy()
        errors = list(batch["error"])
        n = len(ok)
        vectors = np.zeros((n, self.dim), dtype=np.float32)
        if ok.any():
            v = self.emb.embed_pixels(torch.from_numpy(np.ascontiguousarray(batch["pixels"][ok])))
            idx = np.flatnonzero(ok)
            vectors[idx] = v
            bad = ~np.isfinite(v).all(axis=1)
            for j in np.flatnonzero(bad):
                ok[idx[j]] = False
                errors[idx[j]] = "model produced a non-finite vector"
                vectors[idx[j]] = 0
        return {"path": batch["path"], "size": batch["size"], "mtime_ns": batch["mtime_ns"],
                "replace": batch["replace"], "meta": batch["meta"], "error": np.array(errors, dtype=object),
                "ok": ok, "vector": vectors, "decode_s": batch["decode_s"],
                "embed_s": np.full(n, (time.perf_counter() - t0) / max(1, n))}


def write_batch(batch: dict[str, np.ndarray], table_uri: str, storage_options: dict, dim: int,
                data_storage_version: str | None) -> dict[str, np.ndarray]:
    """Ray map_batches UDF: new rows → Lance fragment files (not committed); changed rows and skips go back."""
    import pyarrow as pa

    from imgrag.retrieval.stores.base import make_rows

    t0 = time.perf_counter()
    ok = np.asarray(batch["ok"], dtype=bool)
    replace = np.asarray(batch["replace"], dtype=bool)
    now = datetime.now()
    frags_json, repl_ipc = "[]", b""
    new = np.flatnonzero(ok & ~replace)
    if len(new):
        from lance.fragment import write_fragments

        metas = [dict(_meta_from_json(batch["meta"][i]), indexed_at=now) for i in new]
        rows = make_rows(metas, np.asarray(batch["vector"][new], dtype=np.float32))
        frags = write_fragments(rows, table_uri, schema=rows.schema, storage_options=storage_options or None,
                                data_storage_version=data_storage_version, max_rows_per_file=max(1, len(new)))
        frags_json = json.dumps([f.to_json() for f in frags])
    rep = np.flatnonzero(ok & replace)
    if len(rep):
        metas = [dict(_meta_from_json(batch["meta"][i]), indexed_at=now) for i in rep]
        rows = make_rows(metas, np.asarray(batch["vector"][rep], dtype=np.float32))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, rows.schema) as w:
            w.write_table(rows)
        repl_ipc = sink.getvalue().to_pybytes()
    skips = [{"path": str(p), "reason": str(e), "size": int(s), "mtime_ns": int(m)}
             for p, e, s, m, good in zip(batch["path"], batch["error"], batch["size"], batch["mtime_ns"], ok) if not good]
    return {"fragments": np.array([frags_json], dtype=object), "new_rows": np.array([len(new)], dtype=np.int64),
            "replace_ipc": np.array([repl_ipc], dtype=object), "replace_rows": np.array([len(rep)], dtype=np.int64),
            "skips": np.array([json.dumps(skips, ensure_ascii=False)], dtype=object),
            "done": np.array([len(ok)], dtype=np.int64),
            "decode_s": np.array([float(np.sum(batch["decode_s"]))]), "embed_s": np.array([float(np.sum(batch["embed_s"]))]),
            "write_s": np.array([time.perf_counter() - t0])}


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
    with writer_lock(index.root) as guard:
        if not ray.is_initialized():
            _init_ray(ray, opts.address)
        return _run(ray, index, sources, opts, progress, guard)


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
    import lance
    import ray.data

    t_start = time.perf_counter()
    store = index.store
    exts = opts.extensions or supported_extensions()
    image_exts = _image_extensions()
    exclude = [index.root] if index.location.local else []
    roots, items = list_sources(sources, exts, exclude=exclude, include_hidden=opts.include_hidden)
    rep = IndexReport(roots=roots)

    # --- plan (same rules as the local indexer) -------------------------------------------------------
    t0 = time.perf_counter()
    prev_skips = {r["path"]: r for r in index.skipped()}
    kept_skips = [r for p, r in prev_skips.items() if not is_under(p, roots)]
    plan = plan_work(store.file_states(), items, roots, prev_skips, image_exts, retry_skipped=opts.retry_skipped,
                     prune=opts.prune)
    work, run_skips, gone, known_ids = plan.work, plan.skips, plan.gone, plan.known_ids
    rep.scanned, rep.unchanged = plan.scanned, plan.unchanged
    rep.new_or_changed = work.num_rows
    rep.seconds["plan"] = time.perf_counter() - t0
    log.info("ray plan: %d files, %d unchanged, %d to index, %d gone", rep.scanned, rep.unchanged, work.num_rows,
             len(gone))

    def save_skips() -> None:
        index.write_skipped(kept_skips + run_skips)

    t_embed = time.perf_counter()
    if work.num_rows:
        rep_embed = _embed_and_write(ray, index, store, work, opts, rep, run_skips, known_ids, save_skips, progress,
                                     t_embed, guard)
        rep.seconds.update(rep_embed)
    save_skips()
    rep.seconds["embed_total"] = time.perf_counter() - t_embed
    index._store = None  # reopen: the table has versions this handle has not seen
    store = index.store
    if gone:
        store.delete(gone)
        rep.deleted = len(gone)
    to = time.perf_counter()
    store.optimize()  # compaction + the ANN index, once, after all writes
    rep.seconds["optimize"] = time.perf_counter() - to
    rep.skipped = list(run_skips)
    rep.total_items = store.count()
    rep.seconds["total"] = time.perf_counter() - t_start
    lance  # noqa: B018 - imported above so a missing pylance fails before any work
    return rep


def _embed_and_write(ray, index, store, work, opts: RayOptions, rep: IndexReport, run_skips: list, known_ids,
                     save_skips, progress, t_embed, guard=None) -> dict[str, float]:
    import lance
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray.data

    emb = index.embedder
    transform = emb.image_transform()
    draft = emb.image_size if opts.draft else None
    pixel_shape = tuple(np.asarray(transform(_probe_image(emb.image_size))).shape)
    resources = ray.cluster_resources()
    has_gpu = float(resources.get("GPU", 0)) >= 1
    gpus = opts.gpus_per_actor if opts.gpus_per_actor is not None else (1.0 if has_gpu else 0.0)
    actors = opts.actors or (max(1, int(resources.get("GPU", 0))) if gpus else 1)
    table_uri = store.table_uri
    so = storage_options_for(table_uri) if is_uri(table_uri) else {}
    ds_version = _storage_version(table_uri, so)

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
    ds = ds.map_batches(write_batch, batch_size=max(1, opts.rows_per_fragment), batch_format="numpy",
                        num_cpus=min(1.0, opts.cpus_per_decode_task),
                        fn_kwargs={"table_uri": table_uri, "storage_options": so, "dim": index.manifest.dim,
                                   "data_storage_version": ds_version})

    pending_frags: list = []
    pending_new = 0
    pending_replace: list = []
    pending_skips: list[dict] = []
    done = 0
    secs = {"commit": 0.0, "decode": 0.0, "model": 0.0, "write": 0.0}  # summed over workers

    def commit() -> None:
        nonlocal pending_frags, pending_new, pending_replace, pending_skips
        if getattr(guard, "lost", False):  # our lease on object storage was taken: never commit beside another writer
            from imgrag.retrieval.errors import IndexLockedError

            raise IndexLockedError(f"index {index.root}: another imgrag process took over the writer lease; "
                                   "this run stopped without committing its last batch")
        tc = time.perf_counter()
        if pending_frags:
            cur = lance.dataset(table_uri, storage_options=so or None)
            lance.LanceDataset.commit(table_uri, lance.LanceOperation.Append(pending_frags), read_version=cur.version,
                                      storage_options=so or None)
        if pending_replace:
            store.upsert(pa.concat_tables(pending_replace))
        failed = [s["path"] for s in pending_skips]
        failed_known = ([p for p, k in zip(failed, pc.is_in(pa.array(failed, pa.string()), value_set=known_ids).to_pylist())
                         if k] if failed else [])
        if failed_known:  # indexed before, unreadable now: drop the stale row (as the local engine does)
            store.delete(failed_known)
        run_skips.extend(pending_skips)
        save_skips()
        rep.embedded += pending_new + sum(t.num_rows for t in pending_replace)
        pending_frags, pending_new, pending_replace, pending_skips = [], 0, [], []
        secs["commit"] += time.perf_counter() - tc

    from lance.fragment import FragmentMetadata

    try:
        for row in ds.iter_rows():
            for fj in json.loads(row["fragments"]):
                pending_frags.append(FragmentMetadata.from_json(json.dumps(fj) if isinstance(fj, dict) else fj))
            pending_new += int(row["new_rows"])
            if int(row["replace_rows"]):
                pending_replace.append(pa.ipc.open_stream(pa.py_buffer(row["replace_ipc"])).read_all())
            pending_skips.extend(json.loads(row["skips"]))
            done += int(row["done"])
            secs["decode"] += float(row["decode_s"])
            secs["model"] += float(row["embed_s"])
            secs["write"] += float(row["write_s"])
            if pending_new + sum(t.num_rows for t in pending_replace) >= opts.commit_every:
                commit()
            if progress is not None:
                progress(Progress(done, n, rep.embedded + pending_new, 0, len(run_skips) + len(pending_skips),
                                  time.perf_counter() - t_embed))
        commit()
    except KeyboardInterrupt:
        commit()
        rep.interrupted = True
    return secs


def _image_extensions() -> frozenset[str]:
    from imgrag.retrieval.imageio import SUPPORTED_EXTENSIONS

    return frozenset(SUPPORTED_EXTENSIONS)


def _probe_image(size: int):
    from PIL import Image

    return Image.new("RGB", (max(1, size), max(1, size)), (127, 127, 127))


def _storage_version(table_uri: str, so: dict) -> str | None:
    """The table's Lance file format version, so new fragments match the ones lancedb wrote."""
    import lance

    try:
        return str(lance.dataset(table_uri, storage_options=so or None).data_storage_version)
    except Exception:  # noqa: BLE001 - fall back to pylance's default
        return None
