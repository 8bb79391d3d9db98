"""The embedder interface: images and texts → rows of one L2-normalised float32 space."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: (n, d) float32, each row L2-normalised.
Embeddings = np.ndarray


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation in float32; zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class Embedder(ABC):
    """Maps images and texts into one space where cosine similarity means relevance.

    Subclasses load their model lazily: constructing an embedder is cheap, the first call that needs
    weights loads them.

    The indexer splits the work in two so that decoding overlaps compute:
    :meth:`image_transform` (a picklable PIL → tensor callable run in decode worker processes) and
    :meth:`embed_pixels` (a batched forward pass on the stacked tensors).
    """

    #: Canonical model spec stored in the index, e.g. ``"ViT-B-32:laion2b_s34b_b79k"`` or ``"lite"``.
    model_id: str
    #: Default batch size for :meth:`embed_images` / :meth:`embed_texts`.
    batch_size: int = 64

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension d."""

    @property
    @abstractmethod
    def image_size(self) -> int:
        """Square input resolution (pixels); the decoder never decodes JPEGs below this size."""

    @property
    def logit_scale(self) -> float:
        """Multiplier applied to cosine similarities before softmax (CLIP's learned temperature)."""
        return 100.0

    @property
    def logit_bias(self) -> float | None:
        """Sigmoid-loss models (SigLIP) add this bias and use a sigmoid instead of a softmax."""
        return None

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]:
        """JSON-able description of the model and preprocessing; stored in the index manifest.

        Two embedders with different fingerprints produce incompatible vectors.
        """

    @abstractmethod
    def image_transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        """Picklable callable turning one RGB PIL image into a (3, H, W) float tensor."""

    @abstractmethod
    def embed_pixels(self, pixels: "torch.Tensor") -> Embeddings:
        """Batched forward pass: (n, 3, H, W) tensor → (n, d) float32, rows L2-normalised."""

    @abstractmethod
    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        """(n,) strings → (n, d) float32, rows L2-normalised. Batched internally."""

    def embed_images(self, images: Sequence["Image.Image"]) -> Embeddings:
        """(n,) RGB PIL images → (n, d) float32, rows L2-normalised. Batched internally."""
        import torch

        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        tf = self.image_transform()
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = images[i : i + self.batch_size]
            pixels = torch.stack([tf(im.convert("RGB") if im.mode != "RGB" else im) for im in chunk])
            out.append(self.embed_pixels(pixels))
        return np.concatenate(out, axis=0)

    def warmup(self) -> None:
        """Load weights now (e.g. before serving) instead of on first use."""
        self.embed_texts(["warmup"])
