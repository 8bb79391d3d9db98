"""The on-disk cache of the lite model's class-name embeddings (1000 × 384 float32, ≈ 1.5 MB).

Embedding the 1,000 class names with MiniLM takes seconds; the result depends only on the texts and the
text weights, so it is keyed by their hash and rebuilt whenever the file is missing or fails the checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from imgrag.retrieval.atomic import atomic_write_bytes
from imgrag.retrieval.embedders.lite.assets import TEXT_MODEL
from imgrag.retrieval.embedders.lite.spec import DIM, NUM_CLASSES, WORDINGS

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$IMGRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgrag``, else ``~/.cache/imgrag``."""
    if os.environ.get("IMGRAG_CACHE_DIR"):
        return Path(os.path.expanduser(os.environ["IMGRAG_CACHE_DIR"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgrag"


def class_cache_path(wording: str, texts: Sequence[str], text_weights: dict[str, Any]) -> Path:
    """Where the embeddings of ``texts`` (one wording) under these text weights are cached."""
    payload = json.dumps({"texts": list(texts), "model": TEXT_MODEL, "weights": text_weights},
                         sort_keys=True, ensure_ascii=False)
    key = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    return cache_dir() / f"lite-classes-{WORDINGS[wording]}-{key[:16]}.npy"


def load_cached(path: Path) -> np.ndarray | None:
    """The cached (1000, 384) unit rows, or None when absent, unreadable or not what they should be."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.shape != (NUM_CLASSES, DIM) or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    if not np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-3):
        return None
    return arr


def save_cached(path: Path, arr: np.ndarray) -> None:
    """Write the cache atomically (readers never see half a file); failures only cost a rebuild."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue(), durable=False)  # a cache: no fsync
    except OSError as e:  # read-only home, full disk: the in-memory copy is enough
        log.debug("lite: cannot write class-name cache %s: %s", path, e)
