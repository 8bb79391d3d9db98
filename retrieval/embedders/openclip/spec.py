"""open_clip model specs: parsing and checking them (open_clip's factory names), and registering extra
model configs.

- ``NAME:TAG`` — an open_clip architecture and pretrained tag, e.g. ``ViT-B-32:laion2b_s34b_b79k``.
- ``NAME`` — random weights; refused unless ``IMGRAG_ALLOW_RANDOM_WEIGHTS=1`` (tests).
- ``hf-hub:org/repo`` — an open_clip model on the Hugging Face hub (or in the local HF cache).
- ``NAME:/path/to/checkpoint.(pt|pth|bin|safetensors)`` — architecture plus a local weights file.
- ``/path/to/dir`` (or ``local-dir:/path``) — a directory laid out like a downloaded open_clip HF repo.
"""

from __future__ import annotations

import difflib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from imgrag.retrieval.embedders.openclip.hub import how_to_supply, truthy
from imgrag.retrieval.errors import ImgragError, ModelUnavailableError

DEFAULT_SPEC = "ViT-B-32:laion2b_s34b_b79k"
#: Environment switch that allows ``NAME`` specs (random weights). Only tests should set it.
ALLOW_RANDOM_ENV = "IMGRAG_ALLOW_RANDOM_WEIGHTS"
#: Extra open_clip model-config files/dirs to register (``os.pathsep``-separated), e.g. custom or
#: test architectures; they then work as NAME specs in every process, CLI subprocesses included.
MODEL_CONFIGS_ENV = "IMGRAG_MODEL_CONFIGS"
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec. ``kind`` is one of ``tag``, ``random``, ``file``, ``dir``, ``hf-hub``."""

    kind: str
    canonical: str
    name: str | None = None  # open_clip architecture name (tag/random/file)
    tag: str | None = None  # pretrained tag (tag)
    path: str | None = None  # absolute path (file/dir)
    repo: str | None = None  # org/repo (hf-hub)


def random_allowed() -> bool:
    return truthy(os.environ.get(ALLOW_RANDOM_ENV))


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


def check_name(name: str) -> None:
    """Refuse an architecture open_clip does not know, suggesting close names."""
    import open_clip

    _register_env_configs()
    models = open_clip.list_models()
    if name in models:
        return
    close = difflib.get_close_matches(name, models, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ImgragError(f"unknown open_clip model {name!r}.{hint} Valid names: {', '.join(models)}")


def tags_for(name: str) -> list[str]:
    """The pretrained tags open_clip lists for architecture ``name``."""
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
    check_name(name)
    if not sep:
        if random_allowed():
            return ModelSpec(kind="random", canonical=name, name=name)
        tags = tags_for(name)
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
                f"checkpoint file not found: {path} (from --model {spec}); " + how_to_supply(name)
            )
        return ModelSpec(kind="file", canonical=f"{name}:{path}", name=name, path=str(path))

    import open_clip
    from open_clip.pretrained import _clean_tag

    tags = tags_for(name)
    tag = _clean_tag(rest)
    if tag not in tags:
        if tags:
            raise ImgragError(f"unknown pretrained tag {rest!r} for {name}; valid tags: {', '.join(tags)}")
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
