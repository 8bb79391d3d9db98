"""The Ray engine's stage functions: decode (CPU tasks), embed (actors), write (CPU tasks).

They run in Ray workers and are module-level so they pickle by reference. Decoding reuses the local
indexer's code (:class:`~imgrag.indexer.decode.DecodeDataset`); objects on object storage are read
through :mod:`pyarrow.fs`. A bad file becomes a skip record, never a failed task.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Any, Callable

import numpy as np

from imgrag.indexer.scan import FileEntry
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.location import filesystem_for, is_uri


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


def write_batch(batch: dict[str, np.ndarray], writer: Callable[[Any], str]) -> dict[str, np.ndarray]:
    """Ray map_batches UDF: new rows → the store's staged writer (nothing visible yet; a token goes back to
    the driver, which commits it); changed rows and skips go back to the driver."""
    import pyarrow as pa

    from imgrag.retrieval.stores.base import make_rows

    t0 = time.perf_counter()
    ok = np.asarray(batch["ok"], dtype=bool)
    replace = np.asarray(batch["replace"], dtype=bool)
    now = datetime.now()
    token, repl_ipc = "", b""
    new = np.flatnonzero(ok & ~replace)
    if len(new):
        metas = [dict(_meta_from_json(batch["meta"][i]), indexed_at=now) for i in new]
        token = writer(make_rows(metas, np.asarray(batch["vector"][new], dtype=np.float32)))
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
    return {"staged": np.array([token], dtype=object), "new_rows": np.array([len(new)], dtype=np.int64),
            "replace_ipc": np.array([repl_ipc], dtype=object), "replace_rows": np.array([len(rep)], dtype=np.int64),
            "skips": np.array([json.dumps(skips, ensure_ascii=False)], dtype=object),
            "done": np.array([len(ok)], dtype=np.int64),
            "decode_s": np.array([float(np.sum(batch["decode_s"]))]), "embed_s": np.array([float(np.sum(batch["embed_s"]))]),
            "write_s": np.array([time.perf_counter() - t0])}
