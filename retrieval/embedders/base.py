"""The embedder interface: images and texts → rows of one L2-normalised float32 space."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from imgrag.retrieval.errors import ImgragError

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


@dataclass(frozen=True)
class ModelDefaults:
    """What a model family needs downstream, known from its spec string alone (no weights, no torch).

    Obtained with :func:`imgrag.retrieval.embedders.model_defaults` (``Embedder.defaults(spec)`` of the
    class registered for the spec), so that queries pick thresholds and weights without loading a model.
    """

    #: ``clip``, ``siglip`` or ``lite``: the score range of the family.
    family: str = "clip"
    #: No-answer threshold of ``imgrag ask``: cosine similarity of the question to the best image.
    min_score: float = 0.18
    #: Hybrid search: (vector weight, text weight) of the reciprocal rank fusion.
    hybrid_weights: tuple[float, float] = (1.0, 1.0)
    #: Hybrid search: the vector ranking takes part only when its best score exceeds the median by this.
    vector_gate: float = 0.0
    #: Calibration of zero-shot probabilities: a fixed cosine → logit multiplier, or None for the model's
    #: own learned one (``Embedder.logit_scale``).
    logit_scale: float | None = None
    #: Whether :meth:`Embedder.nearest_class_names` names what a stored vector looks like.
    class_names: bool = False


def default_batch_size(device: str) -> int:
    """Batch size when none is given: large on CUDA, small on CPU/MPS (memory, not speed, bounds it)."""
    return 128 if device.startswith("cuda") else 32


def check_batch_size(batch_size: int | None) -> int | None:
    """``batch_size`` as an int (None stays None); below 1 is a user error."""
    if batch_size is not None and int(batch_size) < 1:
        raise ImgragError(f"batch size must be >= 1, got {batch_size}")
    return int(batch_size) if batch_size else None


def pixel_batch(pixels: Any, size: int | None = None) -> "torch.Tensor":
    """``pixels`` as an (n, 3, H, W) tensor (a single (3, H, W) image gains the batch axis); with ``size``,
    H and W must equal it. Anything else is a ValueError naming the shape."""
    import torch

    if not isinstance(pixels, torch.Tensor):
        pixels = torch.as_tensor(np.asarray(pixels))
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    ok = pixels.ndim == 4 and pixels.shape[1] == 3
    if ok and size is not None:
        ok = tuple(pixels.shape[2:]) == (size, size)
    if not ok:
        want = f"(n, 3, {size}, {size})" if size is not None else "(n, 3, H, W)"
        raise ValueError(f"expected pixels of shape {want}, got {tuple(pixels.shape)}")
    return pixels


def crop_extreme_aspect(image: "Image.Image", max_aspect: float = 2.0) -> "Image.Image":
    """Crop the centre of an image longer than ``max_aspect`` : 1 down to that ratio.

    Models that resize the short side and take the centre square would first blow a 20000×10 strip up to
    ~450000×224 (and a 100000×2 one to gigabytes). Cropping to 2:1 beforehand leaves the final centre
    square the same (up to sub-pixel resampling at the crop border) while bounding memory.
    """
    w, h = image.size
    short, long = min(w, h), max(w, h)
    if short > 0 and long > max_aspect * short:
        keep = int(round(max_aspect * short))
        if w > h:
            left = (w - keep) // 2
            return image.crop((left, 0, left + keep, h))
        top = (h - keep) // 2
        return image.crop((0, top, w, top + keep))
    return image


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

    @classmethod
    def defaults(cls, spec: str) -> ModelDefaults:
        """The family defaults for ``spec`` (a spec this class is registered for). Must not load weights
        or import torch: queries call it for every search and answer."""
        return ModelDefaults()

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

    def tensor_transform(self) -> Callable[[Sequence["torch.Tensor"]], "torch.Tensor"]:
        """The same preprocessing as tensor ops (``imgrag index --preprocess tensor``): a picklable callable
        turning a list of uint8 (3, H, W) tensors, on any device, into an (n, 3, H, W) float batch on that
        device (see :class:`imgrag.retrieval.tensorprep.TensorPrep`). Embedders without one say so."""
        raise ImgragError(f"{type(self).__name__} has no tensor preprocessing; use --preprocess pil")

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

    def nearest_class_names(self, vector: np.ndarray, k: int = 3) -> list[str]:
        """Names of the ``k`` known classes nearest a stored image vector, best first (what the image looks
        like, shown to generators as evidence). Embedders without a class vocabulary return ``[]``; those
        with one say so in ``defaults(spec).class_names``."""
        return []

    def warmup(self) -> None:
        """Load weights now (e.g. before serving) instead of on first use."""
        self.embed_texts(["warmup"])
