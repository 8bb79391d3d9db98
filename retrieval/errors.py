"""User-facing errors.

Every error that a person can cause or fix (bad flag, missing weights, wrong index, locked index)
is an :class:`ImgragError` whose message is one line that says what happened and what to do next.
The CLI prints ``imgrag: error: <message>`` and exits non-zero; the UI shows the message.
"""

from __future__ import annotations


class ImgragError(Exception):
    """An error with a message meant for the user (no traceback is shown)."""

    exit_code = 2


class ModelUnavailableError(ImgragError):
    """Model weights cannot be loaded (offline, not cached, bad path)."""


class IndexMismatchError(ImgragError):
    """The index was built with another model, store or schema version."""


class IndexNotFoundError(ImgragError):
    """No index at the given location."""


class IndexLockedError(ImgragError):
    """Another process is writing the index."""

    exit_code = 3


class CorruptIndexError(ImgragError):
    """An index file is truncated, foreign or otherwise unreadable."""


class BadQueryError(ImgragError):
    """A query, filter or label set is malformed."""
