"""OCR with Tesseract (Debian ``tesseract-ocr`` + ``tesseract-ocr-eng``), run as a subprocess.

Chosen over rapidocr-onnxruntime by measurement on real pages (R manuals rendered at 300 DPI without
their text layer, scored against the text layer): Tesseract 5.3 read 99.2–100 % of the words at
5.7–8.0 s/page on one core, rapidocr 1.4.4 (PP-OCRv4 models, shipped in its wheel) 96.3–100 % at
10.6–16 s/page and pulls OpenCV + onnxruntime. See docs/documents.md.

Text read from an image is *data*: it is stored, searched and quoted to a generator as untrusted
content, never followed as instructions.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgrag.retrieval.errors import ImgragError

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

#: Words below this Tesseract confidence are dropped from photo OCR (scans/screenshots keep all words).
PHOTO_MIN_CONF = 60.0
#: A photo's OCR text is kept only with at least this many confident words (no noise from textures).
PHOTO_MIN_WORDS = 3
#: Images are scaled so the longer side is at most this many pixels before OCR.
MAX_OCR_SIDE = 4000
TIMEOUT_S = 180


class OcrUnavailableError(ImgragError):
    """No OCR engine on this machine."""


INSTALL_HINT = "install Tesseract: apt-get install tesseract-ocr tesseract-ocr-eng (or your OS's package)"


def tesseract_path() -> str | None:
    return os.environ.get("IMGRAG_TESSERACT") or shutil.which("tesseract")


def available(lang: str = "eng") -> bool:
    exe = tesseract_path()
    if not exe:
        return False
    try:
        out = subprocess.run([exe, "--list-langs"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return lang in out.stdout.split()


def require(lang: str = "eng") -> None:
    """Raise :class:`OcrUnavailableError` with an install hint when OCR cannot run."""
    if not tesseract_path():
        raise OcrUnavailableError(f"OCR needs the tesseract program, which is not installed; {INSTALL_HINT}")
    if not available(lang):
        raise OcrUnavailableError(f"tesseract has no {lang!r} language data; {INSTALL_HINT}")


@dataclass
class OcrResult:
    text: str
    words: int
    mean_conf: float  # mean word confidence 0..100 (0 when no words)


def ocr_image(image: "Image.Image", lang: str = "eng", min_conf: float = 0.0) -> OcrResult:
    """Read the text in ``image``; words with confidence below ``min_conf`` are dropped.

    Lines keep Tesseract's reading order (block, paragraph, line). Raises :class:`OcrUnavailableError`
    when tesseract is missing, ``RuntimeError`` when it fails on this image.
    """
    exe = tesseract_path()
    if not exe:
        raise OcrUnavailableError(f"OCR needs the tesseract program, which is not installed; {INSTALL_HINT}")
    img = image.convert("L") if image.mode not in ("L", "RGB") else image
    w, h = img.size
    if max(w, h) > MAX_OCR_SIDE:
        s = MAX_OCR_SIDE / max(w, h)
        img = img.resize((max(1, int(w * s)), max(1, int(h * s))))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    env = dict(os.environ, OMP_THREAD_LIMIT="1")  # one core per call: decode workers parallelise
    try:
        out = subprocess.run([exe, "stdin", "stdout", "-l", lang, "--psm", "3", "tsv"], input=buf.getvalue(),
                             capture_output=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"OCR timed out after {TIMEOUT_S}s") from None
    except OSError as e:
        raise OcrUnavailableError(f"cannot run tesseract ({e.strerror or e}); {INSTALL_HINT}") from None
    if out.returncode != 0:
        err = out.stderr.decode("utf-8", "replace").strip().splitlines()
        raise RuntimeError(f"OCR failed ({err[-1] if err else 'exit ' + str(out.returncode)})")
    return parse_tsv(out.stdout.decode("utf-8", "replace"), min_conf)


def parse_tsv(tsv: str, min_conf: float = 0.0) -> OcrResult:
    """Tesseract TSV → text (one line per OCR line, blank line between blocks) and word statistics."""
    lines: dict[tuple[int, int, int], list[str]] = {}
    confs: list[float] = []
    for row in tsv.splitlines()[1:]:
        parts = row.split("\t")
        if len(parts) < 12 or parts[0] != "5":
            continue
        word = parts[11].strip()
        try:
            conf = float(parts[10])
        except ValueError:
            continue
        if not word or conf < min_conf:
            continue
        confs.append(conf)
        key = (int(parts[2]), int(parts[3]), int(parts[4]))  # block, paragraph, line
        lines.setdefault(key, []).append(word)
    out: list[str] = []
    prev_block = None
    for (block, _par, _line), words in sorted(lines.items()):
        if prev_block is not None and block != prev_block:
            out.append("")
        out.append(" ".join(words))
        prev_block = block
    return OcrResult("\n".join(out), len(confs), sum(confs) / len(confs) if confs else 0.0)


def ocr_photo(image: "Image.Image", lang: str = "eng") -> str | None:
    """OCR for images in photo folders (``imgrag index --ocr``): confident words only; None when the
    image holds no real text (a landscape gives a few low-confidence fragments, a screenshot many words)."""
    r = ocr_image(image, lang=lang, min_conf=PHOTO_MIN_CONF)
    long_words = sum(1 for w in r.text.split() if len(w) >= 2)
    return r.text if long_words >= PHOTO_MIN_WORDS else None
