"""Answer generators: ``hf:`` (transformers vision-language models), ``anthropic:``, ``openai:`` and the
offline text-only ``smollm2``. :func:`load_generator` turns a spec string into a cached generator."""

from __future__ import annotations

import threading

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.generators.base import EvidenceItem, Generator

__all__ = ["EvidenceItem", "Generator", "load_generator", "DEFAULT_GENERATOR", "SPEC_HELP"]

DEFAULT_GENERATOR = "smollm2"
SPEC_HELP = "hf:HUB_ID_OR_DIR, anthropic:MODEL, openai:MODEL or smollm2"

_CACHE: dict[tuple, Generator] = {}
_LOCK = threading.Lock()


def load_generator(spec: str | None = None, device: str = "auto", precision: str = "auto") -> Generator:
    """The generator for ``spec`` (None → ``smollm2``), built once per process and spec (thread-safe).

    Building is cheap: model weights load lazily on the first answer.
    """
    spec = (spec or DEFAULT_GENERATOR).strip()
    key = (spec, device, precision)
    with _LOCK:
        gen = _CACHE.get(key)
        if gen is None:
            gen = _build(spec, device, precision)
            _CACHE[key] = gen
        return gen


def _build(spec: str, device: str, precision: str) -> Generator:
    kind, _, arg = spec.partition(":")
    kind = kind.lower()
    if kind in ("smollm2", "smollm"):
        from imgrag.retrieval.generators.smollm import SmolLMGenerator

        return SmolLMGenerator(device=device)
    if kind == "hf":
        if not arg:
            raise ImgragError("generator 'hf:' needs a hub id or a local directory, e.g. hf:llava-hf/llava-1.5-7b-hf")
        from imgrag.retrieval.generators.hf import HFGenerator

        return HFGenerator(arg, device=device, precision=precision)
    if kind in ("anthropic", "claude"):
        from imgrag.retrieval.generators.api import AnthropicGenerator

        return AnthropicGenerator(arg or None)
    if kind in ("openai", "gpt"):
        from imgrag.retrieval.generators.api import OpenAIGenerator

        return OpenAIGenerator(arg or None)
    raise ImgragError(f"unknown generator {spec!r}; choose {SPEC_HELP}")
