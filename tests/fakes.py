"""A deterministic fake embedder for store/indexer/query logic tests (no model weights).

Image vector: mean R, G, B of a 16×16 thumbnail plus fixed components, L2-normalised — so a red
image's nearest colour word is "red". Texts: colour words map to their RGB direction; other text hashes
to a fixed pseudo-random vector.
"""

from __future__ import annotations

import hashlib

import numpy as np

from imgrag.retrieval.embedders.base import Embedder, l2_normalize

DIM = 8
COLORS = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "white": (1, 1, 1), "black": (0, 0, 0)}


class ThumbTransform:
    """Picklable PIL → (3, 16, 16) float tensor in [0, 1]."""

    def __call__(self, img):
        import torch

        arr = np.asarray(img.convert("RGB").resize((16, 16)), dtype=np.float32) / 255.0
        return torch.from_numpy(arr.transpose(2, 0, 1).copy())


class FakeEmbedder(Embedder):
    def __init__(self, model_id: str = "fake-rgb", batch_size: int = 8) -> None:
        self.model_id = model_id
        self.batch_size = batch_size
        self.calls = 0  # forward passes
        self.images_embedded = 0

    @property
    def dim(self) -> int:
        return DIM

    @property
    def image_size(self) -> int:
        return 16

    @property
    def logit_scale(self) -> float:
        return 10.0

    def fingerprint(self) -> dict:
        return {"model": self.model_id, "thumb": 16}

    def image_transform(self):
        return ThumbTransform()

    def embed_pixels(self, pixels) -> np.ndarray:
        self.calls += 1
        self.images_embedded += int(pixels.shape[0])
        x = pixels.numpy().astype(np.float32)
        mean = x.mean(axis=(2, 3))  # (n, 3)
        std = x.std(axis=(2, 3))
        v = np.concatenate([mean - 0.5, std, np.full((len(x), 2), 0.05, np.float32)], axis=1)
        return l2_normalize(v)

    def embed_texts(self, texts) -> np.ndarray:
        out = []
        for t in texts:
            t = t.lower().strip()
            if t in COLORS:
                rgb = np.asarray(COLORS[t], np.float32) - 0.5
                out.append(np.concatenate([rgb, np.zeros(3, np.float32), np.full(2, 0.05, np.float32)]))
            else:
                seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
                out.append(np.random.default_rng(seed).standard_normal(DIM).astype(np.float32))
        return l2_normalize(np.stack(out))
