"""The worker side of ``imgrag index --preprocess tensor``: workers read bytes, the model's device decodes.

A decode worker reads and hashes a file as in :mod:`imgrag.indexer.decode`, then hands on one of:

- ``("jpeg", bytes)`` — a plain JPEG (8-bit RGB or grey, no EXIF rotation, ends with its EOI marker,
  not worth a DCT-scaled draft): decoded later in batches by :class:`JpegDecoder` (nvImageCodec or
  ``torchvision.io.decode_jpeg`` with nvJPEG on CUDA; the same torchvision call on the CPU);
- ``("u8", (3, H, W) uint8)`` — anything else (PNG, WebP, CMYK, 16-bit, alpha, EXIF-rotated, huge, and
  large JPEGs whose cheap draft decode beats a full one): decoded here by the PIL path
  (:func:`imgrag.retrieval.imageio.decode_image`: orientation, alpha on white, CMYK, 16-bit exactly as
  there), so only the resize and normalisation differ from the PIL path, and those are tensor ops;
- ``("page", float views)`` — PDF pages stay on the PIL path (:mod:`imgrag.indexer.documents`): their
  white padding and tiling depend on the rendered page and its text, they are few, and the renderer
  (pdfium) runs on the CPU anyway.

:class:`TensorCollate` gathers a batch; :class:`Finisher` decodes the JPEGs and runs the embedder's
:meth:`~imgrag.retrieval.embedders.base.Embedder.tensor_transform` on the model's device, giving the
``(pixels, rows)`` the PIL path's collate gives. On CUDA the finisher runs in the main process after
the loader has put the batch's uint8 data in pinned memory; on the CPU it runs inside the worker's
collate (the model and the decoders share the cores; the main process should only run the model).
A JPEG the batched decoder refuses is decoded again by the PIL path: its verdict (image or skip reason)
is the PIL path's.
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any, Callable

from imgrag.indexer.decode import MAX_ASPECT, DecodeDataset, DecodeResult

log = logging.getLogger("imgrag.indexer")

#: On CUDA, JPEGs above this many pixels that PIL's DCT scaling can reduce (both sides ≥ 2 × the model's
#: input) are draft-decoded on the CPU worker; smaller ones are decoded at full size on the GPU. nvJPEG
#: has no DCT scaling, so a 12-MP photo costs it ~50× the pixels of a 640×480 one, while PIL's 1/8 draft
#: of it costs a worker about as much as a full 640×480 decode. 2 MP (about 1080p) is the estimate;
#: the measurement on a GPU is pending (docs/gpu.md).
CUDA_DRAFT_ABOVE_PIXELS = 2_000_000
#: On the CPU a draft is always cheaper than a full decode plus a larger resize: draft wherever the PIL
#: path would (so tensor and PIL decode such JPEGs identically).
CPU_DRAFT_ABOVE_PIXELS = 0


def draft_threshold(device: str) -> int:
    return CUDA_DRAFT_ABOVE_PIXELS if str(device).startswith("cuda") else CPU_DRAFT_ABOVE_PIXELS


class TensorDecodeDataset(DecodeDataset):
    """A :class:`DecodeDataset` whose workers stop at uint8 (or at the bytes, for plain JPEGs)."""

    def __init__(self, *args, draft_above_pixels: int = CPU_DRAFT_ABOVE_PIXELS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.draft_above_pixels = int(draft_above_pixels)

    def __getitem__(self, i: int):
        result, payload = super().__getitem__(i)
        if payload is not None and getattr(self.work[i], "page", None) is not None:
            return result, ("page", payload)
        return result, payload

    def _decode(self, entry, data: bytes, meta: dict[str, Any], read_s: float):
        """Plain JPEGs pass on as bytes; anything else is decoded to uint8 by the PIL path."""
        from imgrag.retrieval.imageio import ImageDecodeError

        t1 = time.perf_counter()
        try:
            plain = None if self.ocr_lang else self._plain_jpeg(data)
            if plain is not None:
                meta.update(plain)
                t2 = time.perf_counter()
                return DecodeResult(entry, meta=meta, read_s=read_s, decode_s=t2 - t1), ("jpeg", _as_tensor(data))
            img = _pil_decode(data, self.draft_size, self.max_pixels)
        except ImageDecodeError as e:
            return DecodeResult(entry, error=str(e), read_s=read_s), None
        t2 = time.perf_counter()
        self._describe(meta, img)
        pixels = _pil_to_uint8(img.image)
        return DecodeResult(entry, meta=meta, read_s=read_s, decode_s=t2 - t1), ("u8", pixels)

    def _plain_jpeg(self, data: bytes) -> dict[str, Any] | None:
        """Row metadata of a JPEG the batched decoder can take exactly as the PIL path would; else None."""
        from imgrag.retrieval.imageio import REDUCE_ABOVE_PIXELS, read_jpeg_header

        if not data.startswith(b"\xff\xd8\xff") or not data.endswith(b"\xff\xd9"):
            return None  # not a JPEG, or truncated / trailing data: the PIL path decides
        head = read_jpeg_header(data, self.max_pixels)
        if head is None or head.mode not in ("RGB", "L") or head.bits != 8 or head.orientation != 1:
            return None  # CMYK, 12-bit, EXIF-rotated: the PIL path's conversions
        w, h = head.width, head.height
        if w <= 0 or h <= 0 or w * h > min(self.max_pixels, REDUCE_ABOVE_PIXELS):
            return None  # the PIL path's size checks and reduced decode
        d = self.draft_size
        if d and w * h > self.draft_above_pixels and w // d >= 2 and h // d >= 2:
            return None  # a DCT-scaled draft on this worker is cheaper than a full decode
        return {"width": w, "height": h, "taken_at": head.taken_at, "gps_lat": head.gps_lat,
                "gps_lon": head.gps_lon}


def _pil_decode(data: bytes, draft_size: int | None, max_pixels: int):
    from imgrag.retrieval.imageio import decode_image

    return decode_image(data, draft_size=draft_size, max_pixels=max_pixels)


def _pil_to_uint8(image):
    """Upright RGB PIL image → (3, H, W) uint8, after the indexer's 16:1 aspect bound."""
    import torchvision.transforms.functional as TF

    from imgrag.indexer.decode import bound_aspect

    return TF.pil_to_tensor(bound_aspect(image))


def _as_tensor(data: bytes):
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


class JpegDecoder:
    """Batched JPEG decode to (3, H, W) uint8 on ``device``: nvImageCodec on CUDA where installed (the
    hardware JPEG decoder of A100/H100-class GPUs), else ``torchvision.io.decode_jpeg`` (nvJPEG on CUDA,
    libjpeg-turbo on the CPU). ``None`` in the answer marks a JPEG that this decoder refused."""

    def __init__(self, device: str) -> None:
        self.device = str(device)
        self._nvimgcodec = None
        if self.device.startswith("cuda"):
            try:  # optional extra imgrag[gpu]; never imported on the CPU path
                from nvidia import nvimgcodec  # type: ignore[import-not-found]

                self._nvimgcodec = (nvimgcodec, nvimgcodec.Decoder(device_id=_device_index(self.device)))
            except Exception as e:  # noqa: BLE001 - not installed, or no usable hardware/driver
                log.debug("nvImageCodec not used (%s); torchvision.io.decode_jpeg decodes JPEGs", e)

    @property
    def backend(self) -> str:
        if self._nvimgcodec is not None:
            return "nvimgcodec"
        return "torchvision-nvjpeg" if self.device.startswith("cuda") else "torchvision-cpu"

    def __call__(self, blobs: list) -> list:
        if not blobs:
            return []
        if self._nvimgcodec is not None:
            try:
                return self._decode_nvimgcodec(blobs)
            except Exception as e:  # noqa: BLE001 - fall back for good, with the reason in the log
                log.warning("nvImageCodec failed (%s); using torchvision.io.decode_jpeg from now on", e)
                self._nvimgcodec = None
        with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, which has no batched nvJPEG call
            warnings.simplefilter("ignore", DeprecationWarning)
            from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return list(decode_jpeg(blobs, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:  # one bad file fails the batched call: decode one by one
            out = []
            for b in blobs:
                try:
                    out.append(decode_jpeg(b, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _decode_nvimgcodec(self, blobs: list) -> list:  # pragma: no cover - needs a GPU and the extra
        import torch

        nvimgcodec, dec = self._nvimgcodec
        params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.RGB, apply_exif_orientation=False)
        images = dec.decode([b.numpy().tobytes() for b in blobs], params=params)
        out = []
        for im in images:
            if im is None:
                out.append(None)
                continue
            t = torch.as_tensor(im, device=self.device)  # (H, W, 3) uint8 via __cuda_array_interface__
            out.append(t.permute(2, 0, 1).contiguous())
        return out


def _device_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


class Finisher:
    """Raw batch → ``(pixels on device or None, rows)``: decode the JPEGs, move uint8 images to the device
    (from pinned memory, without blocking), run the tensor transform, keep the PIL path's row order."""

    def __init__(self, transform: Callable, device: str, max_pixels: int) -> None:
        self.transform = transform
        self.device = str(device)
        self.max_pixels = max_pixels
        self._decoder: JpegDecoder | None = None  # made on first use (in the process that uses it)

    @property
    def decoder(self) -> JpegDecoder:
        if self._decoder is None:
            self._decoder = JpegDecoder(self.device)
        return self._decoder

    def __getstate__(self):  # picklable for workers: the decoder is made where it is used
        return {**self.__dict__, "_decoder": None}

    def __call__(self, results: list[DecodeResult], raw: dict | None):
        import torch

        if not raw:
            return None, []
        cuda = self.device.startswith("cuda")
        images: dict[int, Any] = {i: t.to(self.device, non_blocking=cuda) for i, t in raw.get("u8", [])}
        jpegs = raw.get("jpeg", [])
        if jpegs:
            t0 = time.perf_counter()
            decoded = self.decoder([b for _, b in jpegs])
            for (i, blob), im in zip(jpegs, decoded):
                im = self._fallback(results[i], blob) if im is None else _bound(im)
                if im is not None:
                    images[i] = im
            per = (time.perf_counter() - t0) / len(jpegs)
            for i, _ in jpegs:
                results[i].decode_s += per
        pages = {i: v for i, v in raw.get("page", [])}
        order = sorted(set(images) | set(pages))
        if not order:
            return None, []
        t0 = time.perf_counter()
        img_ids = [i for i in order if i in images]
        prepped = self.transform([images[i] for i in img_ids]) if img_ids else None
        where = {i: k for k, i in enumerate(img_ids)}
        parts, rows = [], []
        for i in order:
            if i in pages:
                v = pages[i].to(self.device, non_blocking=cuda)
                v = v if v.ndim == 4 else v.unsqueeze(0)
                parts.append(v)
                rows.extend([i] * v.shape[0])
            else:
                parts.append(prepped[where[i] : where[i] + 1])
                rows.append(i)
        pixels = torch.cat(parts) if len(parts) > 1 else parts[0]
        per = (time.perf_counter() - t0) / len(img_ids) if img_ids else 0.0
        for i in img_ids:
            results[i].preprocess_s += per
        return pixels, rows

    def _fallback(self, result: DecodeResult, blob):
        """A JPEG the batched decoder refused: the PIL path's verdict (its pixels, or its skip reason)."""
        from imgrag.retrieval.imageio import ImageDecodeError

        try:
            img = _pil_decode(blob.numpy().tobytes(), None, self.max_pixels)
        except ImageDecodeError as e:
            result.error, result.meta = str(e), None
            return None
        return _pil_to_uint8(img.image).to(self.device)


def _bound(im):
    from imgrag.retrieval.tensorprep import bound_aspect

    return bound_aspect(im, MAX_ASPECT)


class TensorCollate:
    """Collate of :class:`TensorDecodeDataset` samples: ``(results, raw or pixels, rows)``.

    With a ``finisher`` (CPU target) the batch is finished here, in the worker, and looks exactly like
    the PIL path's; without one, ``raw`` is ``{"jpeg"|"u8"|"page": [(index, tensor)]}`` for the loader to
    pin and the main process to finish on the GPU (``rows`` is then None).
    """

    def __init__(self, finisher: Finisher | None = None) -> None:
        self.finisher = finisher

    def __call__(self, samples):
        results = [r for r, _ in samples]
        raw: dict[str, list] = {}
        for i, (_, p) in enumerate(samples):
            if p is not None:
                kind, t = p
                raw.setdefault(kind, []).append((i, t))
        if self.finisher is not None:
            pixels, rows = self.finisher(results, raw)
            return results, pixels, rows
        return results, raw, None


PREPROCESS_MODES = ("auto", "pil", "tensor")


def resolve_preprocess(mode: str, device: str, embedder) -> str:
    """``auto`` → ``tensor`` when the model runs on CUDA and has a tensor transform, else ``pil``."""
    from imgrag.retrieval.errors import ImgragError

    if mode not in PREPROCESS_MODES:
        raise ImgragError(f"--preprocess must be one of {', '.join(PREPROCESS_MODES)}, got {mode!r}")
    if mode == "pil":
        return "pil"
    try:
        embedder.tensor_transform()
    except ImgragError:
        if mode == "tensor":
            raise
        return "pil"
    return "tensor" if mode == "tensor" or str(device).startswith("cuda") else "pil"


def tensor_loading(embedder, device: str, ds_args: tuple, ds_kwargs: dict):
    """(dataset, collate_fn, main-process finisher or None) of the tensor path for ``device``."""
    ds = TensorDecodeDataset(*ds_args, draft_above_pixels=draft_threshold(device), **ds_kwargs)
    finisher = Finisher(embedder.tensor_transform(), device, ds.max_pixels)
    if str(device).startswith("cuda"):
        return ds, TensorCollate(None), finisher
    return ds, TensorCollate(finisher), None
