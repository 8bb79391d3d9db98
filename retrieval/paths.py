"""File names that are not valid UTF-8: one lossless, unambiguous text form for the index, and how it is shown.

A POSIX file name is bytes. Python hands the ones that are not valid UTF-8 to us as ``str`` holding lone
surrogates (``os.fsdecode``, PEP 383 ``surrogateescape``), which Arrow, Lance, Parquet and JSON cannot
store. So every path is kept in one of three forms, and this module is the only place that converts:

- **file-system form** (``str``, what ``os.scandir`` / ``os.fsdecode`` give and ``open`` takes): each byte
  that is not part of valid UTF-8 is a surrogate ``U+DC80``–``U+DCFF``.
- **stored form** (``str``, valid UTF-8; the ``id`` / ``path`` columns, skip records, URLs): each such
  byte becomes ``NUL`` followed by its two lower-case hex digits (``b"caf\\xe9.png"`` →
  ``"caf\\x00e9.png"``). A file name can never contain NUL, so the form is identity on every valid
  UTF-8 path (existing indexes keep every row, nothing to migrate, no schema change) and no valid name
  can collide with an escaped one; nothing else needs escaping. It keeps ``/``, so prefixes (roots,
  ``is_under``, pruning) and ``#page=`` ids work unchanged.
- **display form** (``str``, printable): what the CLI, ``--json`` and the UI show. Python-literal
  escapes: an undecodable byte is ``\\xe9`` (as ``backslashreplace`` writes it), a literal backslash
  is ``\\\\``, a non-printable character is ``\\x1b`` / ``\\u0085`` / ``\\U000e0001`` (``\\x`` only below
  0x80, so ``\\xhh`` above it is always a byte). Unambiguous
  (:func:`from_display` inverts it); a valid printable name without backslashes shows as itself.
"""

from __future__ import annotations

import os
import re

_ESC = "\0"
_STORED_ESC = re.compile("\0([89a-f][0-9a-f])")  # only bytes >= 0x80 can be undecodable
_SURROGATES = re.compile("[\udc80-\udcff]")
_ANY_SURROGATE = re.compile("[\ud800-\udfff]")
_DISPLAY_ESC = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")


def to_stored(path: str | bytes | os.PathLike) -> str:
    """The stored form of a file-system path (``str`` from ``os.fsdecode`` / ``scandir``, or raw bytes).

    Identity on every valid UTF-8 path. Idempotent: an already stored form (it holds NUL) is returned
    as it is after checking it is canonical. :class:`ValueError` for bytes holding NUL or a ``str``
    holding surrogates that ``surrogateescape`` did not make.
    """
    p = os.fspath(path)
    if isinstance(p, bytes):
        if b"\0" in p:
            raise ValueError("a file name cannot contain NUL")
        s = p.decode("utf-8", "surrogateescape")
    else:
        if _ESC in p:
            _check_stored(p)
            return p
        if p.isascii():
            return p
        try:
            p.encode("utf-8")
            return p
        except UnicodeEncodeError:
            pass
        try:  # normalise: a path built from pieces may hold escaped bytes that together are valid UTF-8
            s = p.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raise ValueError(f"not a file-system path: {p!r}") from None
    return _SURROGATES.sub(lambda m: f"{_ESC}{ord(m.group()) - 0xDC00:02x}", s)


def to_fs(stored: str) -> str:
    """The file-system form of a stored path (for ``open``, ``os.stat``, Pillow). Identity unless the
    path holds escaped bytes; also identity on a file-system form (it never holds NUL)."""
    if _ESC not in stored:
        return stored
    _check_stored(stored)
    return _STORED_ESC.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), stored)


def to_bytes(stored: str) -> bytes:
    """The exact bytes of the file name behind a stored (or file-system) path."""
    return os.fsencode(to_fs(stored))


def is_escaped(stored: str) -> bool:
    """True when the stored path names a file whose name is not valid UTF-8."""
    return _ESC in stored


def is_stored_form(s: str) -> bool:
    """True when ``s`` is text :func:`to_stored` can make (a path, or an id with a ``#page=`` suffix): no
    surrogates, and NUL only as a canonical escape. Use it to refuse forged ids before a lookup."""
    if _ANY_SURROGATE.search(s):
        return False
    if _ESC not in s:
        return True
    try:
        _check_stored(s)
    except ValueError:
        return False
    return True


def display(stored: str) -> str:
    """Printable, unambiguous form of a stored path (or a stored id such as ``"<path>#page=2"``)."""
    s = str(stored)
    if _SURROGATES.search(s):  # a file-system form
        try:
            s = to_stored(s)
        except ValueError:  # other lone surrogates too: not a path, shown as \udxxx escapes
            pass
    if s.isascii() and s.isprintable() and "\\" not in s:
        return s
    out = []
    i, n = 0, len(s)
    while i < n:
        ch = s[i]
        if ch == _ESC and _STORED_ESC.match(s, i):
            out.append("\\x" + s[i + 1 : i + 3])
            i += 3
            continue
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            o = ord(ch)  # \x only below 0x80: a \xhh above that is an undecodable byte
            out.append(f"\\x{o:02x}" if o < 0x80 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
        i += 1
    return "".join(out)


def from_display(shown: str) -> str:
    """The stored path a :func:`display` form stands for (for ids typed or pasted by a user)."""
    def one(m: re.Match) -> str:
        t = m.group(1)
        if t == "\\":
            return "\\"
        o = int(t[1:], 16)
        if t[0] == "x" and o >= 0x80:
            return f"{_ESC}{o:02x}"  # a \\xhh above 0x7f is always an undecodable byte
        return chr(o)

    return _DISPLAY_ESC.sub(one, shown)


def _check_stored(s: str) -> None:
    """A stored form is canonical: NUL only as ``NUL hh``, and the bytes it stands for are not UTF-8."""
    rest = _STORED_ESC.sub("", s)
    if _ESC in rest:
        raise ValueError(f"not a stored path: {s!r}")
    fs = _STORED_ESC.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), s)
    try:
        canon = fs.encode("utf-8", "surrogateescape").decode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(f"not a stored path: {s!r}") from None
    if canon != fs:  # escaped bytes that decode as UTF-8: not the form to_stored makes
        raise ValueError(f"not a stored path: {s!r}")
