"""``hf:HUB_ID_OR_DIR``: transformers vision-language models (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision,
Qwen2-VL, PaliGemma, BLIP-2, Idefics2/3, InternVL, … — anything ``AutoModelForImageTextToText`` loads).

Loading is lazy and in two steps: the processor and config (cheap: no weights) when the image cap or
resolution is first needed, the weights on the first answer. Device and precision are resolved like
the embedders' (:mod:`imgrag.retrieval.device`: CUDA → fp16, CPU → fp32). The prompt goes through the
processor's chat template with one ``{"type": "image"}`` entry per image, in slot order; processors
without a chat template (PaliGemma, BLIP-2) get plain text and place the image tokens themselves.
Answers stream through ``TextIteratorStreamer``.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any, Iterator

from imgrag.retrieval.errors import ImgragError, ModelUnavailableError
from imgrag.retrieval.generators.base import EvidenceItem, Generator, GeneratorError, generate_streaming
from imgrag.retrieval.generators.prompt import ImageSlot, build_prompt

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 256
#: Tokens kept free for the text of the prompt and the answer when capping images by context.
TEXT_RESERVE_TOKENS = 1024
#: Architectures that take exactly one image per prompt (BLIP-2's Q-Former reads one image).
SINGLE_IMAGE = {"blip-2", "instructblip"}
#: Architectures whose processor wants images as a nested list (one list per prompt).
NESTED_IMAGES = {"idefics2", "idefics3", "smolvlm", "paligemma", "mllama"}
#: Architectures whose processor inserts the image tokens itself (no placeholder in the text).
AUTO_IMAGE_TOKENS = {"paligemma", "blip-2", "instructblip"}
MAX_IMAGE_SIDE = 1024


class HFGenerator(Generator):
    def __init__(self, model: str, device: str = "auto", precision: str = "auto",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> None:
        self.model_ref = os.path.expanduser(model) if model.startswith(("/", "~", ".")) else model
        self.name = f"hf:{model}"
        self.text_only = False
        self.device_request = device
        self.precision = precision
        self.max_new_tokens = max_new_tokens
        self._processor = None
        self._config = None
        self._model = None
        self._lock = threading.RLock()
        self._per_image_tokens: int | None = None

    @classmethod
    def from_spec(cls, arg: str, device: str = "auto", precision: str = "auto") -> "HFGenerator":
        if not arg:
            raise ImgragError("generator 'hf:' needs a hub id or a local directory, e.g. hf:llava-hf/llava-1.5-7b-hf")
        return cls(arg, device=device, precision=precision)

    # -- lazy parts ---------------------------------------------------------------------------------
    def _from_pretrained_kwargs(self) -> dict[str, Any]:
        """Cache only for a local directory, or when the hub cannot be reached: the embedders' answer
        (:func:`~imgrag.retrieval.embedders.openclip.hub.network_available`: HF_HUB_OFFLINE or
        TRANSFORMERS_OFFLINE set, or a short probe fails), so transformers fails fast instead of retrying."""
        from imgrag.retrieval.embedders.openclip import hub

        if os.path.isdir(self.model_ref) or not hub.network_available(hub.hf_endpoint()):
            return {"local_files_only": True}
        return {}

    def _ensure_processor(self) -> None:
        if self._processor is not None:
            return
        with self._lock:
            if self._processor is not None:
                return
            from transformers import AutoConfig, AutoProcessor

            kw = self._from_pretrained_kwargs()
            try:
                self._config = AutoConfig.from_pretrained(self.model_ref, **kw)
                self._processor = AutoProcessor.from_pretrained(self.model_ref, **kw)
            except (OSError, ValueError, KeyError) as e:
                raise ModelUnavailableError(self._unavailable(e)) from e

    def _unavailable(self, e: Exception) -> str:
        msg = " ".join(str(e).split())[:240]
        where = ("local directory " + self.model_ref) if os.path.isdir(self.model_ref) else f"hub id {self.model_ref!r}"
        return (f"{self.name}: cannot load {where}: {msg}. Without network, download it elsewhere and pass "
                "hf:/path/to/dir, or set HF_HOME to a populated cache with HF_HUB_OFFLINE=1; "
                "--generator smollm2 works offline")

    @property
    def model_type(self) -> str:
        self._ensure_processor()
        return str(getattr(self._config, "model_type", ""))

    @property
    def processor(self):
        self._ensure_processor()
        return self._processor

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        self._ensure_processor()
        with self._lock:
            if self._model is not None:
                return
            import transformers

            from imgrag.retrieval.device import resolve_device, resolve_dtype

            device = resolve_device(self.device_request)
            dtype = resolve_dtype(self.precision, device)
            kw = self._from_pretrained_kwargs()
            classes = [transformers.AutoModelForImageTextToText]
            for arch in getattr(self._config, "architectures", None) or []:
                cls = getattr(transformers, arch, None)
                if cls is not None:
                    classes.append(cls)
            err: Exception | None = None
            for cls in classes:
                try:
                    model = cls.from_pretrained(self.model_ref, dtype=dtype, **kw)
                    break
                except (ValueError, KeyError) as e:  # config not in this auto mapping: try the model's own class
                    err = e
                except OSError as e:
                    raise ModelUnavailableError(self._unavailable(e)) from e
            else:
                raise ModelUnavailableError(self._unavailable(err or ValueError("no model class")))
            self._model = model.eval().to(device)
            self._device = device
            self._dtype = dtype

    # -- budget -------------------------------------------------------------------------------------
    @property
    def image_size(self) -> int | None:  # type: ignore[override]
        """Long side images are resized to before they reach the processor (from its config)."""
        ip = getattr(self.processor, "image_processor", None)
        if ip is None:
            return None
        sizes: list[int] = []
        size = getattr(ip, "size", None)
        if isinstance(size, int):
            sizes.append(size)
        elif size is not None:
            get = size.get if isinstance(size, dict) else (lambda k: getattr(size, k, None))
            for k in ("height", "width", "longest_edge"):
                if get(k):
                    sizes.append(int(get(k)))
            if get("shortest_edge"):
                sizes.append(int(get("shortest_edge")) * 2)  # crop-based: keep detail for the short side
        if self.model_type.startswith("qwen") and sizes:  # Qwen-VL sizes are pixel counts, not sides
            sizes = [int(max(sizes) ** 0.5)]
        pins = getattr(ip, "image_grid_pinpoints", None)
        if pins:
            sizes.append(max(max(p) for p in pins))
        if getattr(ip, "max_pixels", None):
            sizes.append(int(ip.max_pixels ** 0.5))
        elif not sizes and getattr(size, "max_pixels", None):
            sizes.append(int(size.max_pixels ** 0.5))
        return min(max(sizes), MAX_IMAGE_SIDE) if sizes else MAX_IMAGE_SIDE

    @property
    def context_tokens(self) -> int | None:
        self._ensure_processor()
        cfg = getattr(self._config, "text_config", None) or self._config
        n = getattr(cfg, "max_position_embeddings", None)
        return int(n) if n else None

    def per_image_tokens(self) -> int:
        """Prompt tokens one image costs, measured by running the processor on a blank image."""
        if self._per_image_tokens is None:
            from PIL import Image

            s = self.image_size or 224
            img = Image.new("RGB", (s, s), (127, 127, 127))
            one = EvidenceItem(1, "probe", "probe", 1.0, None, img, {})
            two = EvidenceItem(2, "probe2", "probe2", 1.0, None, img, {})
            ids1 = self.build_inputs("?", [one])["input_ids"]
            tid = self.image_token_id()
            n_img = int((ids1 == tid).sum()) if tid is not None else 0
            if n_img <= 0:  # no single image token id: measure the growth from one image to two
                n_img = int(self.build_inputs("?", [one, two])["input_ids"].shape[-1]) - int(ids1.shape[-1])
            self._per_image_tokens = max(1, n_img)
        return self._per_image_tokens

    @property
    def max_images(self) -> int:  # type: ignore[override]
        if self.model_type in SINGLE_IMAGE:
            return 1
        ctx = self.context_tokens
        if not ctx:
            return 8
        try:
            per = self.per_image_tokens()
        except Exception as e:  # noqa: BLE001 - the cap is advisory; never fail an answer on it
            log.debug("could not measure image tokens: %s", e)
            return 4
        return max(1, min(16, (ctx - TEXT_RESERVE_TOKENS - self.max_new_tokens) // per))

    # -- prompt → model inputs ------------------------------------------------------------------------
    def render_text(self, question: str, items: list[EvidenceItem]) -> str:
        """The prompt string (chat template applied; image placeholders as the processor expects)."""
        p = build_prompt(question, items)
        proc = self.processor
        mt = self.model_type
        if mt in AUTO_IMAGE_TOKENS or not getattr(proc, "chat_template", None):
            if mt in AUTO_IMAGE_TOKENS:
                body = p.text(image_marker="(image {n})")
                if mt == "paligemma":  # image tokens first, then <bos> and the prompt (PaliGemma's format)
                    tok = getattr(proc, "image_token", None) or "<image>"
                    bos = getattr(proc.tokenizer, "bos_token", None) or ""
                    return tok * len(p.image_slots) + bos + "answer en " + p.system + "\n" + body + "\n"
                return p.system + "\n" + body + "\nAnswer:"
            tok = getattr(proc, "image_token", None) or "<image>"
            return "USER: " + p.system + "\n" + p.text(image_marker=tok) + "\nASSISTANT:"
        content: list[dict[str, Any]] = [{"type": "text", "text": p.system + "\n\n"}]
        for part in p.parts:
            if isinstance(part, ImageSlot):
                content.append({"type": "image"})
            else:
                content.append({"type": "text", "text": part})
        messages = [{"role": "user", "content": content}]
        return proc.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def build_inputs(self, question: str, items: list[EvidenceItem]):
        if any(it.image is None for it in items):
            raise GeneratorError(f"{self.name} needs the images; got an item without one")
        images = [im.convert("RGB") for im in build_prompt(question, items).images(items)]  # pages + crops
        mt = self.model_type
        if mt in SINGLE_IMAGE and len(images) > 1:
            raise GeneratorError(f"{self.name} ({mt}) reads one image per prompt; got {len(images)}")
        if mt == "idefics":  # Flamingo-style: the processor takes one interleaved list of text and images
            return self._idefics_inputs(question, items, images)
        text = self.render_text(question, items)
        kw: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
        if images:
            kw["images"] = [images] if mt in NESTED_IMAGES else images
        try:
            out = self.processor(**kw)
            out.pop("labels", None)  # PaliGemma returns labels for training; generation must not get them
            return out
        except (ValueError, TypeError) as e:
            raise GeneratorError(f"{self.name}: the processor rejected the prompt: {' '.join(str(e).split())[:300]}") from e

    def _idefics_inputs(self, question: str, items: list[EvidenceItem], images: list):
        p = build_prompt(question, items)
        slot_imgs = iter(images)  # in slot order (pages and their crops)
        seq: list[Any] = ["User: " + p.system + "\n"]
        for part in p.parts:
            # a text item with no space that parses as a URL would be fetched by the processor: never send one
            seq.append(next(slot_imgs) if isinstance(part, ImageSlot) else (part if " " in part else part + " "))
        seq.append("\nAssistant:")
        try:
            out = self.processor(text=[seq], return_tensors="pt")
        except (ValueError, TypeError) as e:
            raise GeneratorError(f"{self.name}: the processor rejected the prompt: {' '.join(str(e).split())[:300]}") from e
        return out

    def image_token_id(self) -> int | None:
        for obj in (self._config, getattr(self._config, "text_config", None)):
            for attr in ("image_token_id", "image_token_index"):
                v = getattr(obj, attr, None) if obj is not None else None
                if isinstance(v, int):
                    return v
        proc = self.processor
        tok = getattr(proc, "image_token", None) or "<image>"
        tid = proc.tokenizer.convert_tokens_to_ids(tok)
        return tid if isinstance(tid, int) and tid != proc.tokenizer.unk_token_id else None

    # -- generation -----------------------------------------------------------------------------------
    def stream(self, question: str, items: list[EvidenceItem]) -> Iterator[str]:
        import torch
        from transformers import TextIteratorStreamer

        self._ensure_model()
        inputs = self.build_inputs(question, items)
        inputs = {k: (v.to(self._device, dtype=self._dtype) if torch.is_floating_point(v) else v.to(self._device))
                  if hasattr(v, "to") else v for k, v in inputs.items()}
        tok = getattr(self.processor, "tokenizer", self.processor)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=3600)
        gen_kw = dict(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, streamer=streamer)
        if getattr(tok, "pad_token_id", None) is None and getattr(tok, "eos_token_id", None) is not None:
            gen_kw["pad_token_id"] = tok.eos_token_id
        try:
            yield from generate_streaming(self._model, gen_kw, streamer, self._lock, "hf-generate")
        except (RuntimeError, ValueError) as e:
            raise GeneratorError(f"{self.name}: generation failed: {' '.join(str(e).split())[:300]}") from e
