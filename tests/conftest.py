"""Shared test fixtures. Tests never download anything: HF offline mode is forced below.

- ``tests/model_configs/`` holds tiny random-init open_clip architectures (``imgrag-tiny-clip``,
  ``imgrag-tiny-siglip``); they are registered with ``open_clip.add_model_config`` and, through
  ``IMGRAG_MODEL_CONFIGS``, in any subprocess (CLI tests) too.
- ``IMGRAG_ALLOW_RANDOM_WEIGHTS=1`` lets bare ``NAME`` specs build random (name-seeded, reproducible)
  weights.
- ``IMGRAG_STRICT_SKIPS=1`` (exported by .ci/run) turns every skip into a failure except those listed in
  ``ALLOWED_SKIPS``: CI installs every dependency a test may skip for, so a skip there hides a broken
  setup (tests/test_ci_strict.py checks the mechanism).
"""

from __future__ import annotations

import fnmatch
import os
import re
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
# strict skips: in CI (IMGRAG_STRICT_SKIPS=1, set by .ci/run) a skip is a failure
# ------------------------------------------------------------------------------------------------
STRICT_SKIPS_ENV = "IMGRAG_STRICT_SKIPS"

#: Skips CI may keep: (test id pattern, reason pattern, why CI cannot provide what the test needs).
#: Everything else a test can skip for (Chromium, Tesseract, the extras, model files in packages) is
#: installed by .ci/run / `make install`, so a skip there means a broken setup, not a missing option.
ALLOWED_SKIPS: list[tuple[str, str, str]] = [
    ("tests/test_bad_input.py::test_unreadable_files_and_folders*", r"without CAP_SETPCAP",
     "root in a container without CAP_SETPCAP cannot drop CAP_DAC_OVERRIDE, so file modes cannot be tested "
     "for real; a capability of the CI host, not a package; test_permission_reason_without_privileges "
     "covers the same reasons"),
]


def strict_skips() -> bool:
    return os.environ.get(STRICT_SKIPS_ENV, "").strip() not in ("", "0")


def _skip_reason(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: reason")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _allowed(nodeid: str, reason: str) -> bool:
    return any(fnmatch.fnmatchcase(nodeid, ids) and re.search(why, reason)
               for ids, why, _ in ALLOWED_SKIPS)


def _strict_message(nodeid: str, reason: str) -> str:
    return (f"{nodeid} was skipped ({reason}), and {STRICT_SKIPS_ENV}=1 (CI) turns skips into failures: "
            f"CI installs what the tests need, so install it; if CI truly cannot provide it, add the test "
            f"to ALLOWED_SKIPS in tests/conftest.py with the reason")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    if rep.skipped and not hasattr(rep, "wasxfail") and strict_skips():
        reason = _skip_reason(rep.longrepr)
        if not _allowed(rep.nodeid, reason):
            rep.outcome = "failed"
            rep.longrepr = _strict_message(rep.nodeid, reason)
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    """A whole module skipped at import (a module-level ``importorskip``): a collection error."""
    rep = yield
    if rep.skipped and strict_skips():
        reason = _skip_reason(rep.longrepr)
        if not _allowed(rep.nodeid, reason):
            rep.outcome = "failed"
            rep.longrepr = _strict_message(rep.nodeid, reason)
    return rep


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


# A CI runner that starts the suite in the background (`cmd &` in a non-interactive shell) hands it SIGINT
# ignored, and every child inherits that: the Ctrl-C tests would then test nothing. Python handlers are reset
# to the default in exec'd children, so installing the normal one here gives them (and us) real Ctrl-C.
import signal as _signal  # noqa: E402

if _signal.getsignal(_signal.SIGINT) is _signal.SIG_IGN:
    _signal.signal(_signal.SIGINT, _signal.default_int_handler)
