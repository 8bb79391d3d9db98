"""open_clip embedders: CLIP, SigLIP, MobileCLIP, … with their own preprocessing and tokenizer.

Laid out like open_clip itself: :mod:`.spec` (model specs and names, as open_clip's factory),
:mod:`.hub` (where weights come from, offline-safe, as open_clip's pretrained), :mod:`.transform` (the
picklable image transform) and :mod:`.model` (:class:`OpenClipEmbedder`). Model specs: docs/models.md.

Nothing touches the network unless weights are missing from the local caches *and* the network is
reachable (a short probe) *and* ``HF_HUB_OFFLINE`` is not set. When weights cannot be had, one
:class:`~imgrag.retrieval.errors.ModelUnavailableError` explains how to supply them.
"""

from __future__ import annotations

from imgrag.retrieval.embedders.openclip.hub import NETWORK_PROBE_TIMEOUT_S
from imgrag.retrieval.embedders.openclip.model import OpenClipEmbedder
from imgrag.retrieval.embedders.openclip.spec import (ALLOW_RANDOM_ENV, DEFAULT_SPEC, MODEL_CONFIGS_ENV,
                                                      WEIGHT_SUFFIXES, ModelSpec, parse_spec,
                                                      register_model_configs)
from imgrag.retrieval.embedders.openclip.transform import OpenClipTransform

__all__ = ["OpenClipEmbedder", "ModelSpec", "parse_spec", "register_model_configs", "OpenClipTransform",
           "DEFAULT_SPEC", "ALLOW_RANDOM_ENV", "MODEL_CONFIGS_ENV", "WEIGHT_SUFFIXES", "NETWORK_PROBE_TIMEOUT_S"]
