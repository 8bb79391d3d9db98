"""OpenClipEmbedder: an open_clip model (CLIP, SigLIP, MobileCLIP, …) with its own preprocessing and
tokenizer, loaded lazily from the spec (:mod:`.spec`) with weights found offline-safe (:mod:`.hub`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from imgrag.retrieval.device import resolve_device, resolve_dtype
from imgrag.retrieval.embedders.base import (Embedder, Embeddings, ModelDefaults, check_batch_size,
                                             default_batch_size, pixel_batch)
from imgrag.retrieval.embedders.openclip import hub
from imgrag.retrieval.embedders.openclip.spec import DEFAULT_SPEC, parse_spec
from imgrag.retrieval.embedders.openclip.transform import (OpenClipTransform, make_transform, shared_tag_settings,
                                                           tag_preprocess)
from imgrag.retrieval.errors import ImgragError, ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

#: No-answer thresholds (cosine similarity of the question to the best image): conservative starting points
#: from these families' usual score ranges, not measured here (lite's is, docs/generators.md).
CLIP_DEFAULTS = ModelDefaults(family="clip", min_score=0.18)
SIGLIP_DEFAULTS = ModelDefaults(family="siglip", min_score=0.05)


def _seed_for(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _jsonable(x: Any) -> Any:
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


class OpenClipEmbedder(Embedder):
    """An open_clip model. Cheap to construct; weights load on first use (thread-safe)."""

    def __init__(self, spec: str = DEFAULT_SPEC, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None):
        self.spec = parse_spec(spec)
        self.model_id = self.spec.canonical
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        self.batch_size = check_batch_size(batch_size) or default_batch_size(self.device)
        self._lock = threading.Lock()
        self._model = None
        self._pending_model = None
        self._tokenizer = None
        self._transform: OpenClipTransform | None = None
        self._model_cfg: dict[str, Any] = {}
        self._preprocess_cfg: dict[str, Any] = {}
        self._weights: dict[str, Any] | None = None
        self._quick_gelu = False
        self._channels_last = False

    @classmethod
    def defaults(cls, spec: str) -> ModelDefaults:
        """SigLIP (sigmoid loss) scores sit far lower than CLIP's; the family shows in every SigLIP name."""
        return SIGLIP_DEFAULTS if "siglip" in (spec or "").lower() else CLIP_DEFAULTS

    # ---------------------------------------------------------------- loading
    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        with self._lock:
            if self._model is None:
                self._load()

    def _load(self) -> None:
        s = self.spec
        online: bool | None = None
        name_for_msg = s.name
        try:
            import open_clip  # noqa: F401  (fail here, not half-way)

            if s.kind == "tag":
                online = self._load_tag()
            elif s.kind == "random":
                self._load_random()
            elif s.kind == "file":
                self._load_file()
            elif s.kind == "dir":
                self._load_dir()
            elif s.kind == "hf-hub":
                online = self._load_hf_hub()
            else:  # pragma: no cover
                raise ImgragError(f"unsupported model spec kind {s.kind!r}")
            # publish last: other threads test `_model` without the lock
            self._model, self._pending_model = self._pending_model, None
        except ImgragError:
            self._reset()
            raise
        except (OSError, RuntimeError, ValueError, KeyError, ImportError, EnvironmentError) as e:
            self._reset()
            msg = f"{type(e).__name__}: {e}"
            if "state_dict" in str(e) or "size mismatch" in str(e):
                raise ModelUnavailableError(
                    f"weights for {self.model_id} do not match the architecture: {' '.join(str(e).split())[:300]}"
                ) from e
            if s.kind in ("file", "dir"):
                raise ModelUnavailableError(f"cannot load model {self.model_id}: {' '.join(msg.split())[:300]}") from e
            raise hub.unavailable(self.model_id, name_for_msg, msg, bool(online)) from e
        except Exception as e:  # huggingface_hub / requests / httpx errors are not all OSErrors
            self._reset()
            if type(e).__module__.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3", "transformers"):
                raise hub.unavailable(self.model_id, name_for_msg, f"{type(e).__name__}: {e}", bool(online)) from e
            raise

    def _reset(self) -> None:
        self._model = None
        self._pending_model = None
        self._tokenizer = None
        self._transform = None

    def _create(self, oc_name: str, pretrained: str | None, *, force_preprocess: dict[str, Any] | None = None,
                quick_gelu: bool = False, require: bool = True, cache_dir: str | None = None,
                seed: int | None = None) -> None:
        import open_clip
        import torch

        precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.dtype]
        kwargs: dict[str, Any] = dict(
            device="cpu",
            force_quick_gelu=quick_gelu,
            force_preprocess_cfg=force_preprocess or None,
            require_pretrained=require,
            cache_dir=cache_dir,
            weights_only=True,
        )
        if seed is not None:
            kwargs.update(pretrained_image=False, pretrained_text=False, require_pretrained=False)

        def create(prec: str):
            if seed is None:
                return open_clip.create_model(oc_name, pretrained, precision=prec, **kwargs)
            with torch.random.fork_rng(devices=[]):  # same random weights in every process
                torch.manual_seed(seed)
                return open_clip.create_model(oc_name, pretrained, precision=prec, **kwargs)

        def build():
            try:
                return create(precision)
            except AttributeError as e:
                # open_clip's mixed-precision cast (convert_weights_to_lp) assumes text_projection is a
                # Parameter; with proj_bias it is an nn.Linear and the cast fails. Cast everything.
                if precision in ("fp16", "bf16") and "'data'" in str(e):
                    log.debug("open_clip %s cast failed (%s); using pure_%s", precision, e, precision)
                    return create(f"pure_{precision}")
                raise

        if seed is not None:
            model = build()
        else:
            try:
                model = build()
            except (AttributeError, TypeError, KeyError, IndexError) as e:
                # open_clip's checkpoint massaging trips over foreign state dicts before strict loading
                raise ModelUnavailableError(
                    f"weights for {self.model_id} do not match the architecture "
                    f"({type(e).__name__}: {' '.join(str(e).split())[:200]})"
                ) from e
        model.eval()
        model.requires_grad_(False)
        if self.device != "cpu":
            model.to(self.device)
        if self.device.startswith("cuda"):
            # conv-heavy towers (timm ConvNeXt/FastViT, ResNets) profit from NHWC; ViTs do not care.
            from open_clip.transformer import VisionTransformer

            if not isinstance(model.visual, VisionTransformer):
                model.visual.to(memory_format=torch.channels_last)
                self._channels_last = True
        pp = dict(model.visual.preprocess_cfg)
        self._preprocess_cfg = pp
        self._transform = make_transform(pp)
        self._quick_gelu = quick_gelu or bool(self._model_cfg.get("quick_gelu", False))
        self._pending_model = model  # published by _load() once the tokenizer exists too

    def _make_tokenizer(self, oc_name: str, schema_none: bool, cache_dir: str | None = None):
        import open_clip
        from open_clip.tokenizer import SimpleTokenizer

        text_cfg = self._model_cfg.get("text_cfg", {})
        if schema_none and not text_cfg.get("hf_tokenizer_name"):
            # open_clip would pick a SigLIP tokenizer from the *name* alone and fetch its vocab from
            # Google storage on every start; all real SigLIP configs name their HF tokenizer, so a
            # config without one gets the bundled CLIP BPE tokenizer (offline).
            return SimpleTokenizer(
                context_length=text_cfg.get("context_length", 77),
                **(text_cfg.get("tokenizer_kwargs") or {}),
            )
        try:
            return open_clip.get_tokenizer(oc_name, cache_dir=cache_dir)
        except (OSError, ValueError, RuntimeError) as e:
            tok = text_cfg.get("hf_tokenizer_name") or oc_name
            raise hub.unavailable(
                self.model_id, self.spec.name,
                f"its tokenizer ({tok}) is not in the Hugging Face cache ({type(e).__name__}: {e})",
                online=False,
            ) from e

    def _load_random(self) -> None:
        import open_clip

        name = self.spec.name
        self._model_cfg = open_clip.get_model_config(name) or {}
        self._weights = {"random_init": True, "seed": _seed_for(name)}
        with hub.hf_offline(True):  # random init must never download anything (e.g. HF text configs)
            self._create(name, None, seed=_seed_for(name))
            self._tokenizer = self._make_tokenizer(name, True)

    def _load_file(self) -> None:
        import open_clip

        name, path = self.spec.name, self.spec.path
        self._model_cfg = open_clip.get_model_config(name) or {}
        preprocess, quick_gelu = shared_tag_settings(name)
        self._weights = {"file": os.path.basename(path), "size": os.path.getsize(path)}
        online = hub.network_available(hub.hf_endpoint()) if self._needs_hf_tokenizer() else False
        with hub.hf_offline(not online):
            self._create(name, path, force_preprocess=preprocess, quick_gelu=quick_gelu)
            self._tokenizer = self._make_tokenizer(name, True, cache_dir=hub.hf_cache_dir())

    def _load_dir(self) -> None:
        path = Path(self.spec.path)
        cfg, weights = hub.read_model_dir(path)
        self._model_cfg = cfg["model_cfg"]
        self._weights = {"file": weights.name, "size": weights.stat().st_size}
        with hub.hf_offline(True):  # everything must come from the directory itself
            self._create(f"local-dir:{path}", None)
            self._tokenizer = self._make_tokenizer(f"local-dir:{path}", False)

    def _needs_hf_tokenizer(self) -> bool:
        return bool(self._model_cfg.get("text_cfg", {}).get("hf_tokenizer_name"))

    def _load_tag(self) -> bool:
        import open_clip
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        name, tag = self.spec.name, self.spec.tag
        pcfg = get_pretrained_cfg(name, tag)
        self._model_cfg = open_clip.get_model_config(name) or {}
        cache = hub.hf_cache_dir()
        hf_hub = pcfg.get("hf_hub", "")
        local = hub.cached_pretrained(pcfg)
        online = False
        if local is None or self._needs_hf_tokenizer():
            online = hub.network_available(hub.hf_endpoint() if hf_hub else pcfg.get("url", ""))
        if local is None:
            if not online:
                raise hub.unavailable(self.model_id, name, f"{hf_hub or pcfg.get('url')} is not in the cache", False)
            log.info("downloading weights for %s", self.model_id)
            local = download_pretrained(pcfg, cache_dir=cache)
            if not local or not os.path.isfile(local):
                raise hub.unavailable(self.model_id, name, "download returned no file", True)
        self._weights = {
            "tag": tag,
            "source": hf_hub or pcfg.get("url", ""),
            "file": os.path.basename(local),
            "size": os.path.getsize(local),
        }
        with hub.hf_offline(not online):
            self._create(name, local, force_preprocess=tag_preprocess(pcfg),
                         quick_gelu=bool(pcfg.get("quick_gelu", False)))
            self._tokenizer = self._make_tokenizer(name, True, cache_dir=cache)
        return online

    def _load_hf_hub(self) -> bool:
        repo = self.spec.repo
        cache = hub.hf_cache_dir()
        cfg_path = hub.cached_hf_file(repo, ["open_clip_config.json"])
        weights = hub.cached_hf_file(repo, hub.HF_REPO_WEIGHTS)
        online = False
        if cfg_path is None or weights is None:
            online = hub.network_available(hub.hf_endpoint())
            if not online:
                missing = "open_clip_config.json" if cfg_path is None else "weights"
                raise hub.unavailable(self.model_id, None, f"{missing} of {repo} not in the cache", False)
        else:
            cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
            if cfg.get("model_cfg", {}).get("text_cfg", {}).get("hf_tokenizer_name"):
                online = hub.network_available(hub.hf_endpoint())
        with hub.hf_offline(not online):
            from open_clip.factory import _get_hf_config

            self._model_cfg = _get_hf_config(repo, cache_dir=cache).get("model_cfg", {})
            self._create(f"hf-hub:{repo}", None, cache_dir=cache)
            self._tokenizer = self._make_tokenizer(f"hf-hub:{repo}", False, cache_dir=cache)
        weights = hub.cached_hf_file(repo, hub.HF_REPO_WEIGHTS)
        self._weights = {"repo": repo}
        if weights:
            self._weights.update(file=os.path.basename(weights), size=os.path.getsize(weights))
        return online

    # ---------------------------------------------------------------- properties
    @property
    def dim(self) -> int:
        self._ensure_loaded()
        return int(self._model_cfg.get("embed_dim") or self._probe_dim())

    def _probe_dim(self) -> int:  # pragma: no cover - configs always carry embed_dim
        return int(self.embed_texts(["x"]).shape[1])

    @property
    def image_size(self) -> int:
        self._ensure_loaded()
        size = self._preprocess_cfg.get("size") or getattr(self._model.visual, "image_size", 224)
        if isinstance(size, (tuple, list)):
            return int(max(size))
        return int(size)

    @property
    def logit_scale(self) -> float:
        self._ensure_loaded()
        p = getattr(self._model, "logit_scale", None)
        if p is None:
            return 100.0
        return float(p.detach().float().reshape(-1)[0].exp().item())

    @property
    def logit_bias(self) -> float | None:
        self._ensure_loaded()
        p = getattr(self._model, "logit_bias", None)
        if p is None:
            return None
        return float(p.detach().float().reshape(-1)[0].item())

    @property
    def context_length(self) -> int:
        self._ensure_loaded()
        return int(getattr(self._tokenizer, "context_length", 0) or self._model_cfg.get("text_cfg", {}).get("context_length", 77))

    def fingerprint(self) -> dict[str, Any]:
        """Everything that changes the vectors: weights, architecture config, preprocessing, tokenizer.

        Device and precision are left out on purpose: an index built in fp16 on a GPU is searched with
        fp32 on a laptop (the vectors agree to ~1e-3).
        """
        self._ensure_loaded()
        pp = self._preprocess_cfg
        cfg_json = json.dumps(_jsonable(self._model_cfg), sort_keys=True, separators=(",", ":"))
        fp = {
            "kind": "open_clip",
            "spec": self.model_id,
            "architecture": self.spec.name,
            "config_sha1": hashlib.sha1(cfg_json.encode("utf-8")).hexdigest(),
            "pretrained": self.spec.tag,
            "weights": dict(self._weights or {}),
            "quick_gelu": bool(self._quick_gelu),
            "dim": self.dim,
            "image_size": _jsonable(pp.get("size")),
            "mean": _jsonable(pp.get("mean")),
            "std": _jsonable(pp.get("std")),
            "interpolation": pp.get("interpolation"),
            "resize_mode": pp.get("resize_mode"),
            "fill_color": _jsonable(pp.get("fill_color")),
            "tokenizer": type(self._tokenizer).__name__,
            "context_length": self.context_length,
        }
        return _jsonable(fp)

    def image_transform(self) -> Callable[["Image.Image"], "torch.Tensor"]:
        self._ensure_loaded()
        return self._transform

    def tensor_transform(self) -> Callable[[Sequence["torch.Tensor"]], "torch.Tensor"]:
        from imgrag.retrieval.tensorprep import openclip_prep

        self._ensure_loaded()
        return openclip_prep(self._preprocess_cfg)

    # ---------------------------------------------------------------- forward passes
    def embed_pixels(self, pixels: "torch.Tensor") -> Embeddings:
        import torch

        self._ensure_loaded()
        pixels = pixel_batch(pixels)
        n = pixels.shape[0]
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        cuda = self.device.startswith("cuda")
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                x = pixels[i : i + self.batch_size]
                x = x.to(self.device, non_blocking=cuda).to(self.dtype)
                if self._channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                feats = self._model.encode_image(x)
                out.append(self._finish(feats))
        return np.concatenate(out, axis=0)

    def embed_texts(self, texts: Sequence[str]) -> Embeddings:
        import torch

        self._ensure_loaded()
        if isinstance(texts, str):
            texts = [texts]
        texts = [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        cuda = self.device.startswith("cuda")
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self._tokenizer(texts[i : i + self.batch_size])
                tokens = tokens.to(self.device, non_blocking=cuda)
                feats = self._model.encode_text(tokens)
                out.append(self._finish(feats))
        return np.concatenate(out, axis=0)

    @staticmethod
    def _finish(feats: "torch.Tensor") -> np.ndarray:
        import torch

        feats = feats.float()
        feats = torch.nn.functional.normalize(feats, dim=-1)
        return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)

    def __repr__(self) -> str:
        state = "loaded" if self.is_loaded else "not loaded"
        return f"OpenClipEmbedder({self.model_id!r}, device={self.device!r}, dtype={self.dtype}, {state})"
