"""LiteEmbedder: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2 joined by ConSE (see the package doc)."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from imgrag.retrieval.device import check_precision, resolve_device, resolve_dtype
from imgrag.retrieval.embedders.base import (Embedder, Embeddings, ModelDefaults, check_batch_size,
                                             default_batch_size, pixel_batch)
from imgrag.retrieval.embedders.lite import assets, cache
from imgrag.retrieval.embedders.lite.spec import (DIM, LITE_DEFAULTS, LOGIT_SCALE, MODEL_ID, NUM_CLASSES, WORDINGS,
                                                  canonical_spec, parse_lite_spec)
from imgrag.retrieval.embedders.lite.transform import (IMAGE_SIZE, INTERPOLATION, MAX_ASPECT_BEFORE_CROP, MEAN,
                                                       RESIZE_SIZE, STD, LiteTransform)
from imgrag.retrieval.errors import ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image


class LiteEmbedder(Embedder):
    """EfficientNet-Lite0 + MiniLM (ConSE). Cheap to construct; weights load on first use (thread-safe)."""

    #: The preprocessing keeps the central 224/256 of a square; document pages are padded for it.
    crop_fraction = IMAGE_SIZE / RESIZE_SIZE

    def __init__(self, spec: str = MODEL_ID, device: str = "auto", batch_size: int | None = None,
                 precision: str = "auto"):
        self.top_t, self.tau, self.wording = parse_lite_spec(spec)
        self.model_id = canonical_spec(self.top_t, self.tau, self.wording)
        # "auto" is resolved on first use: finding out whether CUDA exists imports torch (≈ 1 s), which
        # a text query (NumPy MiniLM) never needs
        self._device = None if device == "auto" else resolve_device(device)
        self._batch_size = check_batch_size(batch_size)
        self._precision = check_precision(precision)  # resolved on first use, like the device
        self._dtype = None
        self._lock = threading.Lock()
        self._classifier = None
        self._text_model = None
        self._class_emb_np: np.ndarray | None = None
        self._class_emb = None  # torch tensor on self.device
        self._class_names: list[str] | None = None
        self._transform = LiteTransform()

    @classmethod
    def defaults(cls, spec: str) -> ModelDefaults:
        return LITE_DEFAULTS

    @property
    def device(self) -> str:
        if self._device is None:
            self._device = resolve_device("auto")
        return self._device

    @property
    def dtype(self) -> "torch.dtype":
        """The classifier's compute precision (autocast). ``auto`` is fp32 on every device: unlike CLIP
        (cosine >= 0.9999 in bf16), ConSE's top-20 re-weighting amplifies logit rounding: bf16 moved some
        image vectors to cosine 0.988 of fp32 and swapped a truck and a bus for the query "a truck".
        ``--precision bf16`` is 2-3x faster on CPUs with native bf16 (docs/lite-model.md)."""
        if self._dtype is None:
            self._dtype = resolve_dtype("fp32" if self._precision == "auto" else self._precision, self.device)
        return self._dtype

    def _autocast(self):
        import torch

        kind = self.device.split(":")[0]
        if self.dtype == torch.float32 or kind not in ("cpu", "cuda"):
            return contextlib.nullcontext()
        return torch.autocast(device_type=kind, dtype=self.dtype)

    @property
    def batch_size(self) -> int:
        return self._batch_size or default_batch_size(self.device)

    # ---------------------------------------------------------------- loading
    @property
    def is_loaded(self) -> bool:
        return self._class_emb is not None

    def _ensure_text(self) -> None:
        if self._text_model is not None:
            return
        with self._lock:
            if self._text_model is None:
                self._text_model = self._load_text_model()

    def _ensure_class_texts(self) -> np.ndarray:
        """The (1000, 384) class-name embeddings (text tower only: no torch)."""
        if self._class_emb_np is None:
            self._ensure_text()
            with self._lock:
                if self._class_emb_np is None:
                    self._class_emb_np = self._class_embeddings()
        return self._class_emb_np

    def _ensure_loaded(self) -> None:
        if self._class_emb is not None:
            return
        emb = self._ensure_class_texts()
        with self._lock:
            if self._class_emb is None:
                classifier = self._load_classifier()
                import torch

                self._classifier = classifier
                self._class_emb = torch.from_numpy(emb).to(self.device)

    @staticmethod
    def _load_text_model():
        # NumPy MiniLM: a text query never imports torch or transformers (cold search, docs/lite-model.md)
        from imgrag.retrieval.embedders.lite import minilm

        return minilm.load(assets.text_model_dir())

    def _load_classifier(self):
        weights = assets.image_weights_path()
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ModelUnavailableError(f"lite model: {e}; {assets.extra_hint()}") from e
        try:
            # from_name + our own load (from_pretrained prints, and torch.loads without map_location).
            model = EfficientNet.from_name(assets.IMAGE_MODEL)
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise ModelUnavailableError(f"lite model: cannot load {weights}: {' '.join(str(e).split())[:300]}") from e
        # channels_last: oneDNN's depthwise/pointwise convolutions run 1.7x faster in NHWC on CPU
        # (45 vs 27 img/s at batch 64 on 2 cores, BENCHMARKS.md), with the same results to float rounding
        return model.eval().to(self.device, memory_format=torch.channels_last)

    def _class_embeddings(self) -> np.ndarray:
        """(1000, 384) MiniLM embeddings of the class names; cached on disk."""
        texts = assets.class_texts(self.wording)
        path = cache.class_cache_path(self.wording, texts, self._text_weights())
        cached = cache.load_cached(path)
        if cached is not None:
            return cached
        emb = self._encode(texts)
        cache.save_cached(path, emb)
        return emb

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        return DIM

    @property
    def image_size(self) -> int:
        return IMAGE_SIZE

    @property
    def logit_scale(self) -> float:
        return LOGIT_SCALE

    @property
    def logit_bias(self) -> float | None:
        return None

    @staticmethod
    def _text_weights() -> dict[str, Any]:
        return assets.file_info(assets.text_model_dir() / "model.safetensors")

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the vectors. Device is left out (CPU and GPU agree to ~1e-5)."""
        texts = assets.class_texts(self.wording)
        return {
            "kind": "lite",
            "spec": self.model_id,
            "method": "conse",
            "image_model": assets.IMAGE_MODEL,
            "image_weights": assets.file_info(assets.image_weights_path()),
            "text_model": assets.TEXT_MODEL,
            "text_weights": self._text_weights(),
            "classes": "imagenet-1k",
            "class_wording": WORDINGS[self.wording],
            "class_texts_sha1": hashlib.sha1("\n".join(texts).encode("utf-8")).hexdigest(),
            "top_t": self.top_t,
            "tau": float(self.tau),
            "dim": DIM,
            "image_size": IMAGE_SIZE,
            "resize_size": RESIZE_SIZE,
            "interpolation": INTERPOLATION,
            "mean": list(MEAN),
            "std": list(STD),
            "alpha": "white",
        }

    def image_transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        # imported here, in the parent, so that forked decode workers do not each import it (≈ 1 s)
        import torchvision.transforms.functional  # noqa: F401

        return self._transform

    def tensor_transform(self) -> Callable[[Sequence["torch.Tensor"]], "torch.Tensor"]:
        from imgrag.retrieval.tensorprep import TensorPrep

        t = self._transform  # alpha on white happened in the decoder (pixels.to_rgb), as for the PIL path
        return TensorPrep(size=(t.image_size, t.image_size), mean=t.mean, std=t.std, interpolation=INTERPOLATION,
                          resize_mode="shortest", resize_size=t.resize_size, max_aspect=MAX_ASPECT_BEFORE_CROP)

    def nearest_class_names(self, vector: np.ndarray, k: int = 3) -> list[str]:
        """The ``k`` ImageNet classes whose names embed nearest ``vector`` (first lemma each), best first.

        Uses only the text tower and the class-name cache: no torch, no classifier."""
        emb = self._ensure_class_texts()
        if self._class_names is None:
            self._class_names = [names[0] for names in assets.imagenet_lemmas()]
        sims = emb @ np.asarray(vector, dtype=np.float32).reshape(-1)
        return [self._class_names[i] for i in np.argsort(-sims)[: max(0, int(k))]]

    # ---------------------------------------------------------------- forward passes
    def class_probabilities(self, pixels: "torch.Tensor", temperature: float = 1.0) -> np.ndarray:
        """(n, 3, 224, 224) → (n, 1000) ImageNet-1k probabilities (softmax of logits / temperature).

        Class order and names: :func:`~imgrag.retrieval.embedders.lite.assets.imagenet_lemmas`.
        ``temperature=1`` is the classifier's own output; the embedding uses ``self.tau``.
        """
        import torch

        self._ensure_loaded()
        pixels = pixel_batch(pixels, IMAGE_SIZE)
        out = []
        with torch.inference_mode():
            for i in range(0, pixels.shape[0], self.batch_size):
                out.append(self._softmax(pixels[i : i + self.batch_size], temperature).cpu().numpy())
        if not out:
            return np.zeros((0, NUM_CLASSES), dtype=np.float32)
        return np.concatenate(out, axis=0).astype(np.float32)

    def embed_pixels(self, pixels: "torch.Tensor") -> Embeddings:
        import torch

        self._ensure_loaded()
        pixels = pixel_batch(pixels, IMAGE_SIZE)
        n = pixels.shape[0]
        if n == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                probs = self._softmax(pixels[i : i + self.batch_size], self.tau)
                top_p, top_i = probs.topk(self.top_t, dim=-1)  # (b, T)
                vec = torch.einsum("bt,btd->bd", top_p, self._class_emb[top_i])
                vec = torch.nn.functional.normalize(vec, dim=-1)
                out.append(vec.cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out, axis=0), dtype=np.float32)

    def _softmax(self, batch: "torch.Tensor", temperature: float) -> "torch.Tensor":
        """One batch through the classifier (channels_last, autocast per :attr:`dtype`) → fp32 class
        probabilities at ``temperature``, on the device."""
        import torch

        x = batch.to(self.device, dtype=torch.float32, non_blocking=self.device.startswith("cuda"),
                     memory_format=torch.channels_last)
        with self._autocast():
            logits = self._classifier(x)
        return torch.softmax(logits.float() / temperature, dim=-1)

    def embed_images(self, images: Sequence["Image.Image"]) -> Embeddings:
        """Like the base class, but images go to the transform as they are, so transparent clip art is
        put on white (the base class's ``convert("RGB")`` would put it on black)."""
        import torch

        if len(images) == 0:
            return np.zeros((0, DIM), dtype=np.float32)
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = torch.stack([self._transform(im) for im in images[i : i + self.batch_size]])
            out.append(self.embed_pixels(pixels))
        return np.concatenate(out, axis=0)

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        self._ensure_text()
        return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        return self._text_model.encode(list(texts), batch_size=64)  # float32, L2-normalised

    def warmup(self) -> None:
        self._ensure_loaded()

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"LiteEmbedder({self.model_id!r}, device={self.device!r}, {state})"
