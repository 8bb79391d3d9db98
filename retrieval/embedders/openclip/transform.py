"""The picklable image transform of open_clip models and the preprocessing settings of their weights."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable

from imgrag.retrieval.embedders.base import crop_extreme_aspect
from imgrag.retrieval.embedders.openclip.spec import tags_for

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: Long side kept around the centre, in multiples of the short side, before a "shortest" resize.
MAX_ASPECT_BEFORE_CROP = 2.0


class OpenClipTransform:
    """The model's own ``preprocess_val`` plus a guard for extreme aspect ratios.

    For ``resize_mode == "shortest"`` open_clip resizes the short side to the input size and takes the
    centre square; images longer than 2:1 are first cropped around the centre
    (:func:`~imgrag.retrieval.embedders.base.crop_extreme_aspect`) to bound memory. Other aspect ratios
    are passed through untouched, so ordinary photos go through exactly open_clip's pipeline.
    """

    def __init__(self, preprocess: Callable, resize_mode: str):
        self.preprocess = preprocess
        self.resize_mode = resize_mode

    def __call__(self, image: "Image.Image") -> "torch.Tensor":
        if image.mode != "RGB":
            image = image.convert("RGB")
        if self.resize_mode == "shortest":
            image = crop_extreme_aspect(image, MAX_ASPECT_BEFORE_CROP)
        return self.preprocess(image)

    def __repr__(self) -> str:
        return f"OpenClipTransform(resize_mode={self.resize_mode!r}, preprocess={self.preprocess!r})"


def make_transform(preprocess_cfg: dict[str, Any]) -> OpenClipTransform:
    """The eval transform for a model's ``visual.preprocess_cfg``."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    preprocess_val = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return OpenClipTransform(preprocess_val, preprocess_cfg.get("resize_mode", "shortest"))


def tag_preprocess(pcfg: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing fields of a pretrained config, as open_clip merges them."""
    from open_clip.transform import merge_preprocess_dict

    return merge_preprocess_dict({}, pcfg)


def shared_tag_settings(name: str) -> tuple[dict[str, Any], bool]:
    """Preprocessing fields (and quick_gelu) on which all of ``name``'s pretrained tags agree.

    A bare checkpoint file does not say how it was trained; when every published tag of the
    architecture agrees (e.g. all SigLIP checkpoints use mean/std 0.5 and squash resize), use that
    instead of open_clip's CLIP defaults.
    """
    from open_clip.pretrained import get_pretrained_cfg

    cfgs = [get_pretrained_cfg(name, t) for t in tags_for(name)]
    if not cfgs:
        return {}, False
    shared: dict[str, Any] = {}
    for key in ("mean", "std", "interpolation", "resize_mode"):
        values = {json.dumps(c.get(key), default=list) for c in cfgs}
        if len(values) == 1 and cfgs[0].get(key) is not None:
            shared[key] = cfgs[0][key]
    quick_gelu = all(c.get("quick_gelu", False) for c in cfgs)
    return tag_preprocess(shared), quick_gelu
