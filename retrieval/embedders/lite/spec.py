"""The ``lite`` model spec and its tuned defaults: ``lite`` or ``lite:top=5,tau=1,wording=first``.

Defaults (T=20, tau=3, class names = all WordNet lemmas joined, logit scale 12) were tuned on held-out
data; see docs/lite-model.md for the numbers.
"""

from __future__ import annotations

import math

from imgrag.retrieval.embedders.base import ModelDefaults
from imgrag.retrieval.errors import ImgragError

MODEL_ID = "lite"
DIM = 384
NUM_CLASSES = 1000

DEFAULT_TOP_T = 20
DEFAULT_TAU = 3.0
DEFAULT_WORDING = "lemmas"
#: Cosine × 12 → softmax minimises the zero-shot NLL on the tuning data (clip art best at 8–12,
#: photos at 16–18); CLIP's 100 would make every zero-shot answer ~100 % confident.
LOGIT_SCALE = 12.0

#: Class-name wordings (each a version: changing one changes the vectors and the fingerprint).
WORDINGS = {
    "lemmas": "lemmas-v1",  # "tabby, tabby cat" — every WordNet lemma, comma-joined (default)
    "first": "first-v1",  # "tabby"
    "photo": "photo-lemmas-v1",  # "a photo of a tabby, tabby cat"
}

#: Downstream defaults of the family. ``min_score`` 0.25 was measured on data/samples
#: (docs/generators.md); hybrid weights 0.5,1 and vector gate 0.10 on the document benchmark
#: (bench/docs_retrieval.py, BENCHMARKS.md "Documents"): lite cannot read, so its ranking of pages
#: only helps when its best match stands out.
LITE_DEFAULTS = ModelDefaults(family="lite", min_score=0.25, hybrid_weights=(0.5, 1.0), vector_gate=0.10,
                              logit_scale=LOGIT_SCALE, class_names=True)

_OPTION_KEYS = ("top", "tau", "wording")


def parse_lite_spec(spec: str) -> tuple[int, float, str]:
    """``lite`` or ``lite:top=N,tau=X,wording=W`` → (top_t, tau, wording)."""
    spec = (spec or MODEL_ID).strip()
    if spec == MODEL_ID:
        return DEFAULT_TOP_T, DEFAULT_TAU, DEFAULT_WORDING
    if not spec.startswith(MODEL_ID + ":"):
        raise ImgragError(f"not a lite model spec: {spec!r}")
    top, tau, wording = DEFAULT_TOP_T, DEFAULT_TAU, DEFAULT_WORDING
    body = spec[len(MODEL_ID) + 1 :]
    for item in [x.strip() for x in body.split(",") if x.strip()]:
        key, sep, value = item.partition("=")
        key, value = key.strip().lower(), value.strip()
        if not sep or key not in _OPTION_KEYS:
            raise ImgragError(f"bad lite option {item!r} in {spec!r}; use lite:top=N,tau=X,wording=W")
        try:
            if key == "top":
                top = int(value)
                if not 1 <= top <= NUM_CLASSES:
                    raise ValueError
            elif key == "tau":
                tau = float(value)
                if not (tau > 0 and math.isfinite(tau)):
                    raise ValueError
            else:
                if value not in WORDINGS:
                    raise ValueError
                wording = value
        except ValueError:
            allowed = {"top": f"an integer 1..{NUM_CLASSES}", "tau": "a number > 0",
                       "wording": " or ".join(WORDINGS)}[key]
            raise ImgragError(f"bad lite option {item!r}: {key} must be {allowed}") from None
    return top, tau, wording


def canonical_spec(top: int, tau: float, wording: str) -> str:
    parts = []
    if top != DEFAULT_TOP_T:
        parts.append(f"top={top}")
    if tau != DEFAULT_TAU:
        parts.append(f"tau={tau:g}")
    if wording != DEFAULT_WORDING:
        parts.append(f"wording={wording}")
    return MODEL_ID + (":" + ",".join(parts) if parts else "")
