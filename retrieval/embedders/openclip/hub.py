"""Where weights come from, offline-safe: the Hugging Face cache, the network check, local weight files, and
the one message that says how to supply weights.

Nothing touches the network unless a file is missing from the local caches *and* the network is reachable
(a short probe) *and* ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` are not set. The hf generator
(:mod:`imgrag.retrieval.generators.hf`) asks :func:`network_available` too, so embedders and generators agree
on "can this load only from disk?".
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Iterator, Sequence
from urllib.parse import urlsplit

from imgrag.retrieval.errors import ModelUnavailableError

#: Seconds the network probe waits before declaring the hub unreachable.
NETWORK_PROBE_TIMEOUT_S = 3.0
#: Seconds a probe result is reused.
_PROBE_TTL_S = 60.0
#: open_clip's default weights file name in a hub repo.
HF_DEFAULT_WEIGHTS = "open_clip_pytorch_model.bin"
#: Weights files of an open_clip hub repo, in open_clip's order of preference.
HF_REPO_WEIGHTS = ["open_clip_model.safetensors", HF_DEFAULT_WEIGHTS, "open_clip_pytorch_model.safetensors"]

_HOW_TO_SUPPLY = (
    "supply weights with {local}, "
    "a pre-populated Hugging Face cache (set HF_HOME to it and HF_HUB_OFFLINE=1), "
    "or use --model lite (the built-in offline model)"
)


def truthy(value: str | None) -> bool:
    """An environment switch that is on (``1``, ``true``, ``yes``, ``on``)."""
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def hf_cache_dir() -> str:
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


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def offline_requested() -> bool:
    """The user asked for no network: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` (or huggingface_hub's
    own constant, set at its import)."""
    if truthy(os.environ.get("HF_HUB_OFFLINE")) or truthy(os.environ.get("TRANSFORMERS_OFFLINE")):
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


def network_available(url: str | None = None) -> bool:
    """Whether downloads could work: not in offline mode and the host (or proxy) answers quickly.

    ``url`` defaults to the HF endpoint. Results are cached for a minute per host.
    """
    if offline_requested():
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy") or os.environ.get("ALL_PROXY")
    parts = urlsplit(proxy if proxy else (url if url is not None else hf_endpoint()))
    host = parts.hostname
    if not host:
        return False
    port = parts.port or (443 if parts.scheme in ("https", "") else 80)
    key = (host, port)
    now = time.monotonic()
    with _probe_lock:
        cached = _probe_cache.get(key)
        if cached and now - cached[0] < _PROBE_TTL_S:
            return cached[1]
    ok = _probe(host, port, NETWORK_PROBE_TIMEOUT_S)
    with _probe_lock:
        _probe_cache[key] = (now, ok)
    return ok


@contextlib.contextmanager
def hf_offline(enabled: bool) -> Iterator[None]:
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


def hf_weight_candidates(filename: str) -> list[str]:
    """open_clip prefers a .safetensors sibling of the named weights file; mirror that order."""
    out = []
    if filename == HF_DEFAULT_WEIGHTS:
        out.append("open_clip_model.safetensors")
    elif filename.endswith((".bin", ".pth")):
        out.append(filename[:-4] + ".safetensors")
    out.append(filename)
    return out


def cached_hf_file(repo: str, filenames: Sequence[str]) -> str | None:
    """The first of ``filenames`` of hub ``repo`` present in the local HF cache, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    cache = hf_cache_dir()
    for fn in filenames:
        try:
            hit = try_to_load_from_cache(repo, fn, cache_dir=cache)
        except Exception:  # noqa: BLE001 - a malformed cache is simply a miss
            hit = None
        if isinstance(hit, str) and os.path.isfile(hit):
            return hit
    return None


def cached_pretrained(pcfg: dict) -> str | None:
    """The local weights file of an open_clip pretrained config (HF cache, then open_clip's URL cache)."""
    local: str | None = None
    hf_hub = pcfg.get("hf_hub", "")
    if hf_hub:
        # open_clip's convention: "org/repo/" = default weights file, "org/repo/file.bin" = that file
        repo, filename = os.path.split(hf_hub)
        local = cached_hf_file(repo, hf_weight_candidates(filename or HF_DEFAULT_WEIGHTS))
    if local is None and pcfg.get("url"):
        clip_cache = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(pcfg["url"]))
        if os.path.isfile(clip_cache):
            local = clip_cache
    return local


def read_model_dir(path: Path) -> tuple[dict, Path]:
    """A local model folder's ``open_clip_config.json`` (with ``model_cfg``) and weights file."""
    try:
        cfg = json.loads((path / "open_clip_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelUnavailableError(f"cannot read {path / 'open_clip_config.json'}: {e}") from e
    if not isinstance(cfg, dict) or "model_cfg" not in cfg:
        raise ModelUnavailableError(
            f"{path / 'open_clip_config.json'} has no 'model_cfg' (expected the open_clip HF repo layout)"
        )
    weights = find_weights_in_dir(path)
    if weights is None:
        raise ModelUnavailableError(
            f"no weights file (*.safetensors, *.bin, *.pth) in {path}; copy open_clip_pytorch_model.bin "
            "or open_clip_model.safetensors next to open_clip_config.json"
        )
    return cfg, weights


def find_weights_in_dir(path: Path) -> Path | None:
    """The weights file of a local model folder, in open_clip's local-dir preference order."""
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


def how_to_supply(name: str | None) -> str:
    """How to get weights without the network (``name``: the open_clip architecture, if known)."""
    if name:
        local = f"a local checkpoint (--model {name}:/path/to/open_clip_pytorch_model.bin)"
    else:  # hf-hub / directory specs: the repo itself, copied to disk
        local = "a local copy of the repo (--model /path/to/repo-dir with open_clip_config.json + weights)"
    return _HOW_TO_SUPPLY.format(local=local)


def unavailable(spec: str, name: str | None, reason: str, online: bool) -> ModelUnavailableError:
    """The one-line error for weights that cannot be had, with :func:`how_to_supply`."""
    reason = " ".join(str(reason).split())
    if len(reason) > 300:
        reason = reason[:297] + "..."
    what = "cannot be downloaded" if online else "cannot be loaded offline (not cached locally)"
    return ModelUnavailableError(f"model {spec} {what}: {reason}; " + how_to_supply(name))
