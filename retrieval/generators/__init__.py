"""Answer generators: ``hf:`` (transformers vision-language models), ``anthropic:``, ``openai:``, ``gemini:``
and the offline text-only ``smollm2``, registered by spec prefix (:mod:`imgrag.retrieval.generators.registry`).
:func:`load_generator` turns a spec string into a cached generator."""

from __future__ import annotations

import threading

from imgrag.retrieval.generators.base import EvidenceItem, Generator
from imgrag.retrieval.generators.registry import SPEC_HELP, build_generator, generator_class_for, register_generator

__all__ = ["EvidenceItem", "Generator", "load_generator", "DEFAULT_GENERATOR", "SPEC_HELP", "register_generator",
           "generator_class_for"]

DEFAULT_GENERATOR = "smollm2"

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
            gen = build_generator(spec, device, precision)
            _CACHE[key] = gen
        return gen
