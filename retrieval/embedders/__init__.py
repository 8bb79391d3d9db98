"""Embedders: open_clip models (CLIP, SigLIP, …) and the offline ``lite`` model."""

from __future__ import annotations

from imgrag.retrieval.embedders.base import Embedder, Embeddings, l2_normalize

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"

__all__ = ["Embedder", "Embeddings", "l2_normalize", "load_embedder", "DEFAULT_MODEL"]


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
    if spec == "lite" or spec.startswith("lite:"):
        from imgrag.retrieval.embedders.lite import LiteEmbedder

        return LiteEmbedder(spec=spec, device=device, batch_size=batch_size, precision=precision)
    from imgrag.retrieval.embedders.openclip import OpenClipEmbedder

    return OpenClipEmbedder(spec, device=device, precision=precision, batch_size=batch_size)
