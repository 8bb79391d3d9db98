"""Shared test fixtures. Tests never download anything: HF offline mode is forced below.

- ``tests/model_configs/`` holds tiny random-init open_clip architectures (``imgrag-tiny-clip``,
  ``imgrag-tiny-siglip``); they are registered with ``open_clip.add_model_config`` and, through
  ``IMGRAG_MODEL_CONFIGS``, in any subprocess (CLI tests) too.
- ``IMGRAG_ALLOW_RANDOM_WEIGHTS=1`` lets bare ``NAME`` specs build random (name-seeded, reproducible)
  weights.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
MODEL_CONFIGS_DIR = TESTS_DIR / "model_configs"

# Set before anything imports huggingface_hub / open_clip, and inherited by subprocesses.
os.environ["IMGRAG_ALLOW_RANDOM_WEIGHTS"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
_extra = os.environ.get("IMGRAG_MODEL_CONFIGS", "")
if str(MODEL_CONFIGS_DIR) not in _extra.split(os.pathsep):
    os.environ["IMGRAG_MODEL_CONFIGS"] = os.pathsep.join(p for p in (_extra, str(MODEL_CONFIGS_DIR)) if p)


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_model_configs() -> Path:
    """Register tests/model_configs with open_clip (imports torch, so only when a test needs it)."""
    import open_clip

    if "imgrag-tiny-clip" not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIGS_DIR)
    return MODEL_CONFIGS_DIR


@pytest.fixture(scope="session")
def tiny_clip(tiny_model_configs):
    """CLIP-style tiny ViT (32 px input, 32-d embeddings), CPU, fp32. Loads on first use."""
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    return OpenClipEmbedder("imgrag-tiny-clip", device="cpu", precision="fp32", batch_size=4)


@pytest.fixture(scope="session")
def tiny_siglip(tiny_model_configs):
    """SigLIP-style tiny model (sigmoid logit_bias, 48 px input, 32-d), CPU, fp32."""
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    return OpenClipEmbedder("imgrag-tiny-siglip", device="cpu", precision="fp32", batch_size=4)


# ------------------------------------------------------------------------------------------------
# images
# ------------------------------------------------------------------------------------------------

#: name -> (scikit-image loader, file format)
SAMPLE_IMAGES = {
    "astronaut": ("astronaut", "JPEG"),
    "chelsea": ("chelsea", "PNG"),
    "coffee": ("coffee", "JPEG"),
    "rocket": ("rocket", "JPEG"),
    "camera": ("camera", "PNG"),  # greyscale
}


def load_sample(name: str):
    """A real photo from scikit-image's bundled data as an RGB PIL image."""
    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, SAMPLE_IMAGES[name][0])()
    return Image.fromarray(arr).convert("RGB")


@pytest.fixture
def sample_images(tmp_path) -> list[Path]:
    """Five real photos written to ``tmp_path/images`` as JPEG/PNG (sorted paths)."""
    import skimage.data
    from PIL import Image

    out_dir = tmp_path / "images"
    out_dir.mkdir()
    paths = []
    for name, (loader, fmt) in SAMPLE_IMAGES.items():
        img = Image.fromarray(getattr(skimage.data, loader)())
        path = out_dir / f"{name}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(path, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
        paths.append(path)
    return sorted(paths)
