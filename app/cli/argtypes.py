"""Argument types shared by the ``imgrag`` subcommands' parsers (a leaf module: the parsers of
:mod:`commands_watch` and :mod:`commands_groups` use them without importing :mod:`parser`)."""

from __future__ import annotations

import argparse
from typing import Callable


def _number(s: str, convert: Callable[[str], float], what: str):
    """``convert(s)``, or the one-line error argparse shows ("not an integer: 'x'")."""
    try:
        return convert(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {s!r}") from None


def positive_int(s: str) -> int:
    v = _number(s, int, "an integer")
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def nonneg_int(s: str) -> int:
    v = _number(s, int, "an integer")
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {v}")
    return v


def megapixels(s: str) -> float:
    v = _number(s, float, "a number")
    if not 0 < v <= 100_000:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a number of megapixels above 0 (at most 100000), got {s}")
    return v


def dpi(s: str) -> float:
    v = _number(s, float, "a number")
    if not 0 < v <= 1200:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be between 1 and 1200 dots per inch, got {s}")
    return v
