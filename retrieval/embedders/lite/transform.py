"""The lite model's picklable image transform: EfficientNet-Lite eval preprocessing, alpha on white."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from imgrag.retrieval.embedders.base import crop_extreme_aspect

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from PIL import Image

#: Classifier input (``efficientnet_params('efficientnet-lite0')`` → 224) and the resize before the
#: centre crop: TF EfficientNet eval preprocessing keeps the central 224/(224+32) = 87.5 %.
IMAGE_SIZE = 224
RESIZE_SIZE = 256
#: EfficientNet-Lite was trained in TensorFlow on (x - 127) / 128 for x in 0..255 (MEAN_RGB=127,
#: STDDEV_RGB=128 in efficientnet/lite/efficientnet_lite_builder.py), not the torchvision ImageNet
#: mean/std; on held-out data the TF normalisation is better (docs/lite-model.md).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
INTERPOLATION = "bicubic"
MAX_ASPECT_BEFORE_CROP = 2.0


class LiteTransform:
    """PIL image → (3, 224, 224) float tensor, EfficientNet-Lite eval preprocessing.

    Alpha is composited onto white (clip art), the shorter side is resized to 256 (bicubic), the centre
    224×224 is cropped and pixels are mapped to (x - 127) / 128. Extreme aspect ratios are first cropped
    to 2:1 around the centre (the final centre square is unchanged) to bound memory.
    """

    def __init__(self, image_size: int = IMAGE_SIZE, resize_size: int = RESIZE_SIZE,
                 mean: Sequence[float] = MEAN, std: Sequence[float] = STD):
        self.image_size = int(image_size)
        self.resize_size = int(resize_size)
        self.mean = tuple(float(x) for x in mean)
        self.std = tuple(float(x) for x in std)

    def __call__(self, image: "Image.Image") -> "torch.Tensor":
        import torchvision.transforms.functional as TF

        image = crop_extreme_aspect(to_rgb(image), MAX_ASPECT_BEFORE_CROP)
        image = TF.resize(image, self.resize_size, interpolation=TF.InterpolationMode.BICUBIC)
        image = TF.center_crop(image, [self.image_size, self.image_size])
        x = TF.pil_to_tensor(image).float().div_(255.0)
        return TF.normalize(x, self.mean, self.std)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LiteTransform) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return (f"LiteTransform(image_size={self.image_size}, resize_size={self.resize_size}, "
                f"mean={self.mean}, std={self.std})")


def to_rgb(image: "Image.Image") -> "Image.Image":
    """RGB with transparency composited onto white and 16-bit/float greys stretched to 0..255."""
    from PIL import Image

    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return image.convert("RGB")
