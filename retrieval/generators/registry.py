"""Generators registered by spec prefix, in the spirit of simonw/llm's plugin hooks.

A spec is ``KIND`` or ``KIND:ARG`` (``hf:llava-hf/llava-1.5-7b-hf``, ``anthropic:claude-3-5-sonnet-latest``,
``gemini:gemini-2.0-flash``, ``smollm2``); the kind (case-insensitive) picks the class, which builds itself with
``Generator.from_spec(arg, device, precision)``. Targets are classes or zero-argument functions returning one,
so registering imports nothing.

Add a generator: subclass :class:`Generator`, override ``from_spec`` if it takes arguments, and call
:func:`register_generator` with its kind(s).
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence, Union

from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.generators.base import Generator

Target = Union[type[Generator], Callable[[], type[Generator]]]

SPEC_HELP = "hf:HUB_ID_OR_DIR, anthropic:MODEL, openai:MODEL, gemini:MODEL or smollm2"

_kinds: dict[str, Target] = {}
_lock = threading.Lock()


def register_generator(kinds: str | Sequence[str], target: Target) -> None:
    """Route specs ``KIND`` and ``KIND:ARG`` (for each of ``kinds``) to ``target``; later registrations win."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    with _lock:
        for k in kinds:
            _kinds[k.lower()] = target


def generator_class_for(spec: str) -> type[Generator]:
    """The generator class registered for ``spec``'s kind (imports its module; loads no weights)."""
    kind = spec.strip().partition(":")[0].lower()
    with _lock:
        target = _kinds.get(kind)
    if target is None:
        raise ImgragError(f"unknown generator {spec!r}; choose {SPEC_HELP}")
    return target if isinstance(target, type) else target()


def build_generator(spec: str, device: str = "auto", precision: str = "auto") -> Generator:
    """A new generator for ``spec`` (uncached; :func:`imgrag.retrieval.generators.load_generator` caches)."""
    arg = spec.strip().partition(":")[2]
    return generator_class_for(spec).from_spec(arg, device=device, precision=precision)


# ---------------------------------------------------------------------------------------------- built-ins


def _smollm() -> type[Generator]:
    from imgrag.retrieval.generators.smollm import SmolLMGenerator

    return SmolLMGenerator


def _hf() -> type[Generator]:
    from imgrag.retrieval.generators.hf import HFGenerator

    return HFGenerator


def _anthropic() -> type[Generator]:
    from imgrag.retrieval.generators.api import AnthropicGenerator

    return AnthropicGenerator


def _openai() -> type[Generator]:
    from imgrag.retrieval.generators.api import OpenAIGenerator

    return OpenAIGenerator


def _gemini() -> type[Generator]:
    from imgrag.retrieval.generators.gemini import GeminiGenerator

    return GeminiGenerator


register_generator(("smollm2", "smollm"), _smollm)
register_generator("hf", _hf)
register_generator(("anthropic", "claude"), _anthropic)
register_generator(("openai", "gpt"), _openai)
register_generator(("gemini", "google"), _gemini)
