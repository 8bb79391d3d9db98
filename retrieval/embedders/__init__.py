"""Embedders: open_clip models (CLIP, SigLIP, …) and the offline ``lite`` model, registered by spec prefix
(:mod:`imgrag.retrieval.embedders.registry`)."""

from __future__ import annotations

from imgrag.retrieval.embedders.base import Embedder, Embeddings, ModelDefaults, l2_normalize
from imgrag.retrieval.embedders.registry import embedder_class_for, model_defaults, register_embedder

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"

__all__ = ["Embedder", "Embeddings", "ModelDefaults", "l2_normalize", "load_embedder", "DEFAULT_MODEL",
           "embedder_class_for", "model_defaults", "register_embedder"]


def load_embedder(spec: str = DEFAULT_MODEL, device: str = "auto", precision: str = "auto",
                  batch_size: int | None = None) -> Embedder:
    """Build an embedder from a model spec (no weights are loaded until first use).

    Specs:
      - ``lite`` — offline EfficientNet-Lite0 + MiniLM model (extra ``imgrag[lite]``).
      - ``NAME:TAG`` — open_clip architecture and pretrained tag, e.g. ``ViT-B-32:laion2b_s34b_b79k``.
      - ``NAME`` — open_clip architecture with random weights only if ``pretrained`` is not needed (tests).
      - ``hf-hub:org/repo`` — open_clip model hosted on the Hugging Face hub (or in the local HF cache).
      - ``NAME:/path/to/checkpoint.pt`` — architecture plus a local checkpoint file.
      - ``/path/to/dir`` — a local directory holding ``open_clip_config.json`` + weights.
    """
    cls = embedder_class_for(spec)
    return cls(spec, device=device, precision=precision, batch_size=batch_size)
