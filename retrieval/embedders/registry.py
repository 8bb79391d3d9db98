"""Embedders registered by spec prefix, in the spirit of simonw/llm's plugin hooks.

An entry maps prefixes (``lite`` matches ``lite`` and ``lite:…``) to an :class:`Embedder` subclass, or to a
zero-argument function returning one so that registering imports nothing. Specs no prefix claims go to the
fallback (open_clip: ``NAME:TAG``, ``NAME``, paths). The class answers both "build it" (its constructor) and
"what are its defaults" (``defaults(spec)``, from the string alone: no weights, no torch).

Add a model family: subclass :class:`Embedder`, give it ``__init__(spec, device, precision, batch_size)`` and
``defaults(spec)``, and call :func:`register_embedder` with its prefix.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence, Union

from imgrag.retrieval.embedders.base import Embedder, ModelDefaults

Target = Union[type[Embedder], Callable[[], type[Embedder]]]

_entries: list[tuple[tuple[str, ...], Target]] = []
_fallback: list[Target] = []
_lock = threading.Lock()


def register_embedder(prefixes: str | Sequence[str], target: Target, *, fallback: bool = False) -> None:
    """Route specs ``PREFIX`` and ``PREFIX:…`` to ``target`` (a class, or a function returning it).

    Later registrations win over earlier ones for the same prefix. ``fallback=True`` makes ``target`` the
    class of every spec no prefix claims.
    """
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    with _lock:
        _entries.insert(0, (prefixes, target))
        if fallback:
            _fallback.insert(0, target)


def _resolve(target: Target) -> type[Embedder]:
    return target if isinstance(target, type) else target()


def embedder_class_for(spec: str) -> type[Embedder]:
    """The embedder class registered for ``spec`` (imports its module; loads no weights)."""
    s = (spec or "").strip()
    with _lock:
        entries, fallback = list(_entries), list(_fallback)
    for prefixes, target in entries:
        if any(s == p or s.startswith(p + ":") for p in prefixes):
            return _resolve(target)
    return _resolve(fallback[0])


def model_defaults(spec: str | None) -> ModelDefaults:
    """Family defaults (no-answer threshold, hybrid weights, calibration, class names) for ``spec``,
    e.g. the model of an index manifest. Never loads weights or imports torch."""
    return embedder_class_for(spec or "").defaults(spec or "")


# ---------------------------------------------------------------------------------------------- built-ins


def _lite() -> type[Embedder]:
    from imgrag.retrieval.embedders.lite.model import LiteEmbedder

    return LiteEmbedder


def _openclip() -> type[Embedder]:
    from imgrag.retrieval.embedders.openclip.model import OpenClipEmbedder

    return OpenClipEmbedder


register_embedder(("hf-hub", "local-dir"), _openclip, fallback=True)
register_embedder("lite", _lite)
