"""open_clip embedders: CLIP, SigLIP, MobileCLIP, … with their own preprocessing and tokenizer.

Model specs (see docs/models.md):

- ``NAME:TAG`` — an open_clip architecture and pretrained tag, e.g. ``ViT-B-32:laion2b_s34b_b79k``.
- ``NAME`` — random weights; refused unless ``IMGRAG_ALLOW_RANDOM_WEIGHTS=1`` (tests). The random
  initialisation is seeded from the name, so every process gets the same weights.
- ``hf-hub:org/repo`` — an open_clip model on the Hugging Face hub (or in the local HF cache).
- ``NAME:/path/to/checkpoint.(pt|pth|bin|safetensors)`` — architecture plus a local weights file.
- ``/path/to/dir`` (or ``local-dir:/path``) — a directory laid out like a downloaded open_clip HF repo:
  ``open_clip_config.json`` (with ``model_cfg`` and ``preprocess_cfg``) + weights (+ tokenizer files).

Nothing touches the network unless weights are missing from the local caches *and* the network is
reachable (a short probe) *and* ``HF_HUB_OFFLINE`` is not set. When weights cannot be had, one
:class:`~imgrag.retrieval.errors.ModelUnavailableError` explains how to supply them.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence
from urllib.parse import urlsplit

import numpy as np

from imgrag.retrieval.device import resolve_device, resolve_dtype
from imgrag.retrieval.embedders.base import Embedder, Embeddings
from imgrag.retrieval.errors import ImgragError, ModelUnavailableError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_SPEC = "ViT-B-32:laion2b_s34b_b79k"
#: Environment switch that allows ``NAME`` specs (random weights). Only tests should set it.
ALLOW_RANDOM_ENV = "IMGRAG_ALLOW_RANDOM_WEIGHTS"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")
#: Seconds the network probe waits before declaring the hub unreachable.
NETWORK_PROBE_TIMEOUT_S = 3.0
#: Fraction of the long side kept around the centre for extreme aspect ratios (see _OpenClipTransform).
_MAX_ASPECT_BEFORE_CROP = 2.0

_HF_DEFAULT_WEIGHTS = "open_clip_pytorch_model.bin"
_HOW_TO_SUPPLY = (
    "supply weights with {local}, "
    "a pre-populated Hugging Face cache (set HF_HOME to it and HF_HUB_OFFLINE=1), "
    "or use --model lite (the built-in offline model)"
)


# --------------------------------------------------------------------------------------------------
# spec parsing
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``kind`` is one of ``tag``, ``random``, ``file``, ``dir``, ``hf-hub``."""

    kind: str
    canonical: str
    name: str | None = None  # open_clip architecture name (tag/random/file)
    tag: str | None = None  # pretrained tag (tag)
    path: str | None = None  # absolute path (file/dir)
    repo: str | None = None  # org/repo (hf-hub)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _random_allowed() -> bool:
    return _truthy(os.environ.get(ALLOW_RANDOM_ENV))


#: Extra open_clip model-config files/dirs to register (``os.pathsep``-separated), e.g. custom or
#: test architectures; they then work as NAME specs in every process, CLI subprocesses included.
MODEL_CONFIGS_ENV = "IMGRAG_MODEL_CONFIGS"
_registered_config_paths: set[str] = set()
_register_lock = threading.Lock()


def register_model_configs(*paths: str | os.PathLike) -> None:
    """Register open_clip model-config JSON files or directories (idempotent)."""
    import open_clip

    with _register_lock:
        for p in paths:
            key = str(Path(os.path.expanduser(str(p))).resolve())
            if key in _registered_config_paths:
                continue
            if not os.path.exists(key):
                raise ImgragError(f"model config path not found: {key}")
            open_clip.add_model_config(key)
            _registered_config_paths.add(key)


def _register_env_configs() -> None:
    raw = os.environ.get(MODEL_CONFIGS_ENV, "")
    paths = [p for p in raw.split(os.pathsep) if p.strip()]
    if paths:
        register_model_configs(*paths)


def _check_name(name: str) -> None:
    import open_clip

    _register_env_configs()
    models = open_clip.list_models()
    if name in models:
        return
    close = difflib.get_close_matches(name, models, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ImgragError(
        f"unknown open_clip model {name!r}.{hint} Valid names: {', '.join(models)}"
    )


def _tags_for(name: str) -> list[str]:
    import open_clip

    return list(open_clip.list_pretrained_tags_by_model(name))


def _looks_like_path(s: str) -> bool:
    return (
        s.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or os.sep in s
        or "/" in s
        or s.lower().endswith(WEIGHT_SUFFIXES + (".npz",))
    )


def parse_spec(spec: str) -> ModelSpec:
    """Parse and validate a model spec without loading anything (imports open_clip for its registry).

    Raises :class:`ImgragError` naming the valid choices, or :class:`ModelUnavailableError` for a
    local path that does not exist.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ImgragError(f"empty model spec; use e.g. --model {DEFAULT_SPEC} or --model lite")
    spec = spec.strip()

    if spec.startswith("hf-hub:"):
        repo = spec[len("hf-hub:") :].strip("/")
        parts = repo.split("/")
        if len(parts) != 2 or not all(parts):
            raise ImgragError(f"bad model spec {spec!r}: expected hf-hub:ORG/REPO")
        return ModelSpec(kind="hf-hub", canonical=f"hf-hub:{repo}", repo=repo)

    if spec.startswith("local-dir:"):
        return _dir_spec(spec[len("local-dir:") :])

    expanded = os.path.expanduser(spec)
    if spec.startswith(("/", "./", "../", "~")) or os.path.isdir(expanded):
        return _dir_spec(spec)

    name, sep, rest = spec.partition(":")
    _check_name(name)
    if not sep:
        if _random_allowed():
            return ModelSpec(kind="random", canonical=name, name=name)
        tags = _tags_for(name)
        choices = f"one of: {', '.join(tags)}" if tags else "this architecture has no pretrained tags in open_clip"
        raise ImgragError(
            f"model {name!r} needs pretrained weights: use {name}:TAG ({choices}) "
            f"or {name}:/path/to/checkpoint.bin"
        )
    if not rest:
        raise ImgragError(f"bad model spec {spec!r}: expected {name}:TAG or {name}:/path/to/checkpoint")
    if _looks_like_path(rest):
        path = Path(os.path.expanduser(rest)).resolve()
        if not path.is_file():
            raise ModelUnavailableError(
                f"checkpoint file not found: {path} (from --model {spec}); "
                + _how_to_supply(name)
            )
        return ModelSpec(kind="file", canonical=f"{name}:{path}", name=name, path=str(path))

    import open_clip
    from open_clip.pretrained import _clean_tag

    tags = _tags_for(name)
    tag = _clean_tag(rest)
    if tag not in tags:
        if tags:
            raise ImgragError(
                f"unknown pretrained tag {rest!r} for {name}; valid tags: {', '.join(tags)}"
            )
        with_tags = sorted({m for m, _ in open_clip.list_pretrained()})
        raise ImgragError(
            f"{name} has no pretrained tags in open_clip; use {name}:/path/to/checkpoint.bin "
            f"or an architecture with tags: {', '.join(with_tags)}"
        )
    return ModelSpec(kind="tag", canonical=f"{name}:{tag}", name=name, tag=tag)


def _dir_spec(raw: str) -> ModelSpec:
    path = Path(os.path.expanduser(raw)).resolve()
    if not path.is_dir():
        if path.is_file():
            raise ImgragError(
                f"{path} is a file; give a weights file as --model NAME:{path} (NAME = open_clip architecture)"
            )
        raise ModelUnavailableError(
            f"model directory not found: {path}; expected a folder holding open_clip_config.json + weights"
        )
    if not (path / "open_clip_config.json").is_file():
        raise ModelUnavailableError(
            f"{path} has no open_clip_config.json; a model folder needs open_clip_config.json + weights "
            "(the layout of an open_clip Hugging Face repo)"
        )
    return ModelSpec(kind="dir", canonical=str(path), path=str(path))


# --------------------------------------------------------------------------------------------------
# offline-safe weight resolution
# --------------------------------------------------------------------------------------------------


def _hf_cache_dir() -> str:
    """The HF hub cache, read from the environment now (not at huggingface_hub import time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    try:
        from huggingface_hub import constants

        return constants.HF_HUB_CACHE
    except ImportError:  # pragma: no cover
        return os.path.join(os.path.expanduser("~/.cache/huggingface"), "hub")


def _offline_requested() -> bool:
    if _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


_probe_cache: dict[tuple[str, int], tuple[float, bool]] = {}
_probe_lock = threading.Lock()


def _probe(host: str, port: int, timeout: float) -> bool:
    """TCP connect (DNS included) within ``timeout`` seconds; run in a thread so DNS cannot hang us."""
    import socket

    result: list[bool] = []

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=attempt, name="imgrag-net-probe", daemon=True)
    t.start()
    t.join(timeout)
    return bool(result and result[0])


def _network_available(url: str = "https://huggingface.co") -> bool:
    """Whether downloads could work: not in HF offline mode and the host (or proxy) answers quickly."""
    if _offline_requested():
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    parts = urlsplit(proxy if proxy else url)
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme in ("https", "") else 80)
    key = (host, port)
    now = time.monotonic()
    with _probe_lock:
        cached = _probe_cache.get(key)
        if cached and now - cached[0] < 60.0:
            return cached[1]
    ok = _probe(host, port, NETWORK_PROBE_TIMEOUT_S)
    with _probe_lock:
        _probe_cache[key] = (now, ok)
    return ok


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


@contextlib.contextmanager
def _hf_offline(enabled: bool):
    """Temporarily put huggingface_hub (and transformers) in offline mode: cache only, no retries."""
    if not enabled:
        yield
        return
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    old_const = constants.HF_HUB_OFFLINE
    old_env = os.environ.get("HF_HUB_OFFLINE")
    constants.HF_HUB_OFFLINE = True
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _hf_weight_candidates(filename: str) -> list[str]:
    """open_clip prefers a .safetensors sibling of the named weights file; mirror that order."""
    out = []
    if filename == _HF_DEFAULT_WEIGHTS:
        out.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        out.append(filename[:-4] + ".safetensors")
    out.append(filename)
    return out


def _cached_hf_file(repo: str, filenames: Sequence[str]) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    cache = _hf_cache_dir()
    for fn in filenames:
        try:
            hit = try_to_load_from_cache(repo, fn, cache_dir=cache)
        except Exception:  # noqa: BLE001 - a malformed cache is simply a miss
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def _how_to_supply(name: str | None) -> str:
    if name:
        local = f"a local checkpoint (--model {name}:/path/to/open_clip_pytorch_model.bin)"
    else:  # hf-hub / directory specs: the repo itself, copied to disk
        local = "a local copy of the repo (--model /path/to/repo-dir with open_clip_config.json + weights)"
    return _HOW_TO_SUPPLY.format(local=local)


def _unavailable(spec: str, name: str | None, reason: str, online: bool) -> ModelUnavailableError:
    reason = " ".join(str(reason).split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    what = "cannot be downloaded" if online else "cannot be loaded offline (not cached locally)"
    return ModelUnavailableError(
        f"model {spec} {what}: {reason}; " + _how_to_supply(name)
    )


# --------------------------------------------------------------------------------------------------
# picklable image transform
# --------------------------------------------------------------------------------------------------


class _OpenClipTransform:
    """The model's own ``preprocess_val`` plus a guard for extreme aspect ratios.

    For ``resize_mode == "shortest"`` open_clip resizes the short side to the input size and takes the
    centre square. A 20000×10 strip would first be blown up to ~450000×224 (and a 100000×2 one to
    gigabytes). Cropping the centre to at most 2:1 beforehand leaves the final centre square the same
    (up to sub-pixel resampling at the crop border) while bounding memory. Other aspect ratios are
    passed through untouched, so ordinary photos go through exactly open_clip's pipeline.
    """

    def __init__(self, preprocess: Callable, resize_mode: str):
        self.preprocess = preprocess
        self.resize_mode = resize_mode

    def __call__(self, image: "Image.Image") -> "torch.Tensor":
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.resize_mode == "shortest":
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
        return self.preprocess(image)

    def __repr__(self) -> str:
        return f"_OpenClipTransform(resize_mode={self.resize_mode!r}, preprocess={self.preprocess!r})"


# --------------------------------------------------------------------------------------------------
# the embedder
# --------------------------------------------------------------------------------------------------


def _tag_preprocess(pcfg: dict[str, Any]) -> dict[str, Any]:
    from open_clip.transform import merge_preprocess_dict

    return merge_preprocess_dict({}, pcfg)


def _shared_tag_settings(name: str) -> tuple[dict[str, Any], bool]:
    """Preprocessing fields (and quick_gelu) on which all of ``name``'s pretrained tags agree.

    A bare checkpoint file does not say how it was trained; when every published tag of the
    architecture agrees (e.g. all SigLIP checkpoints use mean/std 0.5 and squash resize), use that
    instead of open_clip's CLIP defaults.
    """
    from open_clip.pretrained import get_pretrained_cfg

    cfgs = [get_pretrained_cfg(name, t) for t in _tags_for(name)]
    if not cfgs:
        return {}, False
    shared: dict[str, Any] = {}
    for key in ("mean", "std", "interpolation", "resize_mode"):
        values = {json.dumps(c.get(key), default=list) for c in cfgs}
        if len(values) == 1 and cfgs[0].get(key) is not None:
            shared[key] = cfgs[0][key]
    quick_gelu = all(c.get("quick_gelu", False) for c in cfgs)
    return _tag_preprocess(shared), quick_gelu


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


def _default_batch_size(device: str) -> int:
    return 128 if device.startswith("cuda") else 32


class OpenClipEmbedder(Embedder):
    """An open_clip model. Cheap to construct; weights load on first use (thread-safe)."""

    def __init__(self, spec: str = DEFAULT_SPEC, device: str = "auto", precision: str = "auto",
                 batch_size: int | None = None):
        self.spec = parse_spec(spec)
        self.model_id = self.spec.canonical
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(precision, self.device)
        if batch_size is not None and int(batch_size) < 1:
            raise ImgragError(f"batch size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size) if batch_size else _default_batch_size(self.device)
        self._lock = threading.Lock()
        self._model = None
        self._pending_model = None
        self._tokenizer = None
        self._transform: _OpenClipTransform | None = None
        self._model_cfg: dict[str, Any] = {}
        self._preprocess_cfg: dict[str, Any] = {}
        self._weights: dict[str, Any] | None = None
        self._quick_gelu = False
        self._channels_last = False

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
            raise _unavailable(self.model_id, name_for_msg, msg, bool(online)) from e
        except Exception as e:  # huggingface_hub / requests / httpx errors are not all OSErrors
            self._reset()
            if type(e).__module__.split(".")[0] in ("huggingface_hub", "requests", "httpx", "urllib3", "transformers"):
                raise _unavailable(self.model_id, name_for_msg, f"{type(e).__name__}: {e}", bool(online)) from e
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
        from open_clip.transform import PreprocessCfg, image_transform_v2

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
        preprocess_val = image_transform_v2(PreprocessCfg(**pp), is_train=False)
        self._transform = _OpenClipTransform(preprocess_val, pp.get("resize_mode", "shortest"))
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
            raise _unavailable(
                self.model_id, self.spec.name,
                f"its tokenizer ({tok}) is not in the Hugging Face cache ({type(e).__name__}: {e})",
                online=False,
            ) from e

    def _load_random(self) -> None:
        import open_clip

        name = self.spec.name
        self._model_cfg = open_clip.get_model_config(name) or {}
        self._weights = {"random_init": True, "seed": _seed_for(name)}
        with _hf_offline(True):  # random init must never download anything (e.g. HF text configs)
            self._create(name, None, seed=_seed_for(name))
            self._tokenizer = self._make_tokenizer(name, True)

    def _load_file(self) -> None:
        import open_clip

        name, path = self.spec.name, self.spec.path
        self._model_cfg = open_clip.get_model_config(name) or {}
        preprocess, quick_gelu = _shared_tag_settings(name)
        self._weights = {"file": os.path.basename(path), "size": os.path.getsize(path)}
        online = _network_available(_hf_endpoint()) if self._needs_hf_tokenizer() else False
        with _hf_offline(not online):
            self._create(name, path, force_preprocess=preprocess, quick_gelu=quick_gelu)
            self._tokenizer = self._make_tokenizer(name, True, cache_dir=_hf_cache_dir())

    def _load_dir(self) -> None:
        path = Path(self.spec.path)
        try:
            cfg = json.loads((path / "open_clip_config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelUnavailableError(f"cannot read {path / 'open_clip_config.json'}: {e}") from e
        if not isinstance(cfg, dict) or "model_cfg" not in cfg:
            raise ModelUnavailableError(
                f"{path / 'open_clip_config.json'} has no 'model_cfg' (expected the open_clip HF repo layout)"
            )
        weights = _find_weights_in_dir(path)
        if weights is None:
            raise ModelUnavailableError(
                f"no weights file (*.safetensors, *.bin, *.pth) in {path}; copy open_clip_pytorch_model.bin "
                "or open_clip_model.safetensors next to open_clip_config.json"
            )
        self._model_cfg = cfg["model_cfg"]
        self._weights = {"file": weights.name, "size": weights.stat().st_size}
        with _hf_offline(True):  # everything must come from the directory itself
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
        cache = _hf_cache_dir()
        hf_hub = pcfg.get("hf_hub", "")
        local: str | None = None
        if hf_hub:
            # open_clip's convention: "org/repo/" = default weights file, "org/repo/file.bin" = that file
            repo, filename = os.path.split(hf_hub)
            local = _cached_hf_file(repo, _hf_weight_candidates(filename or _HF_DEFAULT_WEIGHTS))
        if local is None and pcfg.get("url"):
            clip_cache = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(pcfg["url"]))
            if os.path.isfile(clip_cache):
                local = clip_cache
        online = False
        if local is None or self._needs_hf_tokenizer():
            online = _network_available(_hf_endpoint() if hf_hub else pcfg.get("url", ""))
        if local is None:
            if not online:
                raise _unavailable(self.model_id, name, f"{hf_hub or pcfg.get('url')} is not in the cache", False)
            log.info("downloading weights for %s", self.model_id)
            local = download_pretrained(pcfg, cache_dir=cache)
            if not local or not os.path.isfile(local):
                raise _unavailable(self.model_id, name, "download returned no file", True)
        self._weights = {
            "tag": tag,
            "source": hf_hub or pcfg.get("url", ""),
            "file": os.path.basename(local),
            "size": os.path.getsize(local),
        }
        with _hf_offline(not online):
            self._create(name, local, force_preprocess=_tag_preprocess(pcfg),
                         quick_gelu=bool(pcfg.get("quick_gelu", False)))
            self._tokenizer = self._make_tokenizer(name, True, cache_dir=cache)
        return online

    def _load_hf_hub(self) -> bool:
        repo = self.spec.repo
        cache = _hf_cache_dir()
        cfg_path = _cached_hf_file(repo, ["open_clip_config.json"])
        weights = _cached_hf_file(repo, _hf_weight_candidates(_HF_DEFAULT_WEIGHTS)
                                  + ["open_clip_pytorch_model.safetensors"])
        online = False
        if cfg_path is None or weights is None:
            online = _network_available(_hf_endpoint())
            if not online:
                missing = "open_clip_config.json" if cfg_path is None else "weights"
                raise _unavailable(self.model_id, None, f"{missing} of {repo} not in the cache", False)
        else:
            cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
            if cfg.get("model_cfg", {}).get("text_cfg", {}).get("hf_tokenizer_name"):
                online = _network_available(_hf_endpoint())
        with _hf_offline(not online):
            from open_clip.factory import _get_hf_config

            self._model_cfg = _get_hf_config(repo, cache_dir=cache).get("model_cfg", {})
            self._create(f"hf-hub:{repo}", None, cache_dir=cache)
            self._tokenizer = self._make_tokenizer(f"hf-hub:{repo}", False, cache_dir=cache)
        weights = _cached_hf_file(repo, _hf_weight_candidates(_HF_DEFAULT_WEIGHTS)
                                  + ["open_clip_pytorch_model.safetensors"])
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

    # ---------------------------------------------------------------- forward passes
    def embed_pixels(self, pixels: "torch.Tensor") -> Embeddings:
        import torch

        self._ensure_loaded()
        if not isinstance(pixels, torch.Tensor):
            pixels = torch.as_tensor(np.asarray(pixels))
        if pixels.ndim == 3:
            pixels = pixels.unsqueeze(0)
        if pixels.ndim != 4 or pixels.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (n, 3, H, W), got {tuple(pixels.shape)}")
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


def _find_weights_in_dir(path: Path) -> Path | None:
    """Same preference order as open_clip's local-dir loader."""
    found = [p for ext in (".safetensors", ".bin", ".pth") for p in sorted(path.glob(f"*{ext}"))]
    if not found:
        return None
    preferred = [
        "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
        "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
        "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
    ]
    for name in preferred:
        for p in found:
            if p.name == name:
                return p
    return found[0]
