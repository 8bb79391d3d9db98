"""A trained adapter stored in the index: ``v → normalise(v + W v)`` on the text side (and, optionally,
the image side), applied with NumPy at query time (a search never imports torch).

Why the text side: the stored image vectors stay valid (no re-embedding, no store rewrite, the ANN index
untouched), and only queries and class texts pass through the map. An image-side *linear* map without
re-normalisation folds into the query anyway (q·(A x) = (Aᵀq)·x), so a text-side map is as expressive;
the image side exists for measurement (bench/tune_eval.py) and for classify, which reads every vector.

File: ``<index>/adapter.npz`` — the weight matrices plus a ``meta`` JSON string (model and its fingerprint
from the index manifest, data digest, loss, learned temperature/bias, date, dims, validation figures). One
file, written atomically, so a reader sees the old adapter or the new one, never a mix.
"""
from __future__ import annotations

import io
import json
import os
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from imgrag.retrieval.errors import CorruptIndexError, IndexMismatchError

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.retrieval.index import Index

ADAPTER_FILE = "adapter.npz"
FORMAT_VERSION = 1


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@dataclass
class Adapter:
    """Residual linear maps (``None`` = identity on that side) and their provenance."""

    text_w: np.ndarray | None
    image_w: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def apply_text(self, vectors: np.ndarray) -> np.ndarray:
        return _apply(self.text_w, vectors)

    def apply_image(self, vectors: np.ndarray) -> np.ndarray:
        return _apply(self.image_w, vectors)

    # -- bytes --------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps({**self.meta, "format": FORMAT_VERSION}))}
        if self.text_w is not None:
            arrays["text_w"] = np.asarray(self.text_w, np.float32)
        if self.image_w is not None:
            arrays["image_w"] = np.asarray(self.image_w, np.float32)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: str = ADAPTER_FILE) -> "Adapter":
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                text_w = z["text_w"].astype(np.float32) if "text_w" in z.files else None
                image_w = z["image_w"].astype(np.float32) if "image_w" in z.files else None
        except (ValueError, KeyError, OSError, EOFError) as e:
            raise CorruptIndexError(f"adapter {where} is unreadable ({e}); remove it with `imgrag tune --reset`") from e
        return cls(text_w, image_w, meta)


def _apply(w: np.ndarray | None, vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float32)
    if w is None:
        return v
    # row vectors: (x + W x)ᵀ = xᵀ + xᵀ Wᵀ
    return _l2(v + v @ w.T).astype(np.float32)


# -- storage in an index ------------------------------------------------------------------------
def save_adapter(index: "Index", adapter: Adapter) -> None:
    """Write ``adapter.npz`` atomically, under the index's writer lock."""
    data = adapter.to_bytes()
    with index.writing():
        if index.location.local:
            from imgrag.retrieval.atomic import atomic_write_bytes

            atomic_write_bytes(index.location.join(ADAPTER_FILE), data)
        else:  # one PUT is atomic on object stores
            index.location.write_bytes(ADAPTER_FILE, data)


def load_adapter(index: "Index") -> Adapter | None:
    """The index's adapter, or None when it has none. An adapter trained for another model is refused."""
    raw = index.location.read_bytes(ADAPTER_FILE)
    if raw is None:
        return None
    adapter = Adapter.from_bytes(raw, str(index.location.join(ADAPTER_FILE)))
    meta, man = adapter.meta, index.manifest
    if meta.get("model") != man.model or meta.get("model_fingerprint") != man.fingerprint or meta.get("dim") != man.dim:
        raise IndexMismatchError(
            f"the adapter in {index.root} was trained for model {meta.get('model')!r} with other weights or "
            f"preprocessing than this index's {man.model!r}; retrain it with `imgrag tune` or remove it with "
            f"`imgrag tune --index {index.root} --reset`")
    return adapter


_disabled: "weakref.WeakSet[Index]" = weakref.WeakSet()
_cache: dict[str, tuple[tuple[int, int], Adapter]] = {}
_cache_lock = threading.Lock()


def set_adapter_enabled(index: "Index", enabled: bool) -> None:
    """``--no-adapter``: every query on this Index object (search, hybrid, ask, classify) skips the adapter."""
    (_disabled.discard if enabled else _disabled.add)(index)


def active_adapter(index: "Index") -> Adapter | None:
    """The adapter queries should use: None when disabled for ``index`` or absent. A local file is read
    once and kept while its size and mtime are unchanged (a query does not re-read 0.6 MB each time)."""
    if index in _disabled:
        return None
    if not index.location.local:
        return load_adapter(index)
    path = os.fspath(index.location.join(ADAPTER_FILE))
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    stamp = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        hit = _cache.get(path)
    if hit is not None and hit[0] == stamp and hit[1].meta.get("model_fingerprint") == index.manifest.fingerprint:
        return hit[1]
    adapter = load_adapter(index)
    if adapter is not None:
        with _cache_lock:
            _cache[path] = (stamp, adapter)
    return adapter


def reset_adapter(index: "Index") -> bool:
    """Remove the adapter, under the index's writer lock; True if there was one."""
    with index.writing():
        if not index.location.exists(ADAPTER_FILE):
            return False
        index.location.delete(ADAPTER_FILE)
        return True


def adapter_info(index: "Index") -> dict[str, Any] | None:
    """The stored adapter's metadata (no check against the model), or None."""
    raw = index.location.read_bytes(ADAPTER_FILE)
    return None if raw is None else Adapter.from_bytes(raw).meta


def adapter_status(index: "Index") -> dict[str, Any] | None:
    """What ``imgrag info`` and the UI show: None without an adapter, else whether queries use it
    (``active``), its loss, supervision, date and held-out before/after, or why it is not used."""
    try:
        meta = adapter_info(index)
    except CorruptIndexError as e:
        return {"active": False, "problem": str(e)}
    if meta is None:
        return None
    out: dict[str, Any] = {"active": True, "loss": meta.get("loss"), "created_at": meta.get("created_at"),
                           "source": (meta.get("supervision") or {}).get("source"),
                           "validation": meta.get("validation")}
    try:
        load_adapter(index)
    except IndexMismatchError as e:
        out.update(active=False, problem=str(e))
    if index in _disabled:
        out["active"] = False
    return out


def describe_adapter(status: dict[str, Any] | None) -> str:
    """One line for a person: 'none', 'active: siglip on folders …, i2t top-1 42.9% → 35.7% held out'."""
    if status is None:
        return "none (imgrag tune trains one)"
    if status.get("problem"):
        return f"not used: {status['problem']}"
    v = (status.get("validation") or {})
    b, a = v.get("before") or {}, v.get("after") or {}
    fig = "".join(f", {name} {100 * b[k]:.1f}% → {100 * a[k]:.1f}%" for k, name in
                  (("i2t_top1", "image→text top-1"), ("t2i_r1", "text→image R@1")) if k in b and k in a)
    state = "active" if status.get("active") else "off (--no-adapter)"
    return (f"{state}: {status.get('loss')} loss on {status.get('source')}, {status.get('created_at')}"
            + (f"; held out{fig}" if fig else ""))


def tuned_calibration(spec: str | None, tuned: bool) -> str | None:
    """The calibration to use when class vectors are tuned (an active adapter, or few-shot examples):
    ``auto`` becomes ``none``, an explicit method is kept. Measured (BENCHMARKS.md, "Result quality"):
    calibrating on top of a tuned adapter lowers top-1 by 2–4 points, on few-shot prototypes by 2.5–5.5
    from two shots on; the adapter and the examples already correct the label bias calibration removes."""
    return "none" if tuned and spec in (None, "auto") else spec
