"""The generator interface: a question plus retrieved evidence → an answer that cites it.

A :class:`Generator` receives the question and the retrieved items as :class:`EvidenceItem` (numbered
slots ``[1]…[n]``, each with its image — already resized to the model's resolution — and any text known
about it) and streams the answer text. Prompt wording lives in :mod:`imgrag.retrieval.generators.prompt`
(pure functions); retrieval, the visual-token budget, citations and the hallucination guard live in
:mod:`imgrag.retrieval.queries.answer`.

Text that came from an image (OCR, file names, EXIF comments, labels) is *data*: prompts quote it and
tell the model never to follow it as instructions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image


@dataclass
class Crop:
    """A high-resolution crop of a document page, sent as an extra image of its item."""

    image: "Image.Image"
    box: tuple[float, float, float, float]  # fractions of the page: left, top, right, bottom
    dpi: float  # render resolution of the crop
    how: str  # "question words" | "densest region"


@dataclass
class EvidenceItem:
    """One retrieved item handed to a generator."""

    n: int  # 1-based slot number, cited as [n]
    id: str
    path: str
    score: float
    page: int | None
    image: "Image.Image | None"  # resized to the generator's resolution; None for text-only backends
    facts: dict[str, str] = field(default_factory=dict)  # file name, capture date, labels, OCR … (DATA)
    crops: list[Crop] = field(default_factory=list)  # document pages: zoomed regions, sent after the page


class Generator(ABC):
    """Answers a question from numbered evidence items, citing them as ``[n]``."""

    name: str = "generator"  # human-readable, e.g. "hf:llava-hf/llava-1.5-7b-hf"
    text_only: bool = False  # True: sees only the items' text facts, never pixels
    max_images: int = 4  # cap from the model's context window
    image_size: int | None = None  # longest side images are resized to before they are sent (None: as is)

    @classmethod
    def from_spec(cls, arg: str, device: str = "auto", precision: str = "auto") -> "Generator":
        """Build from the part of a spec after ``KIND:`` (may be empty); cheap, weights load lazily."""
        return cls()

    @abstractmethod
    def stream(self, question: str, items: list[EvidenceItem]) -> Iterator[str]:
        """Yield the answer text in chunks as it is generated."""

    def generate(self, question: str, items: list[EvidenceItem]) -> str:
        return "".join(self.stream(question, items))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


from imgrag.retrieval.errors import ImgragError  # noqa: E402


class GeneratorError(ImgragError):
    """A generator failed in a way the user can act on (bad key, rate limit, server error, model)."""


def generate_streaming(model, kwargs: dict, streamer, lock, thread_name: str) -> Iterator[str]:
    """Run ``model.generate(**kwargs)`` (kwargs carry ``streamer``, a transformers TextIteratorStreamer) in a
    thread under ``lock`` and yield its text as it comes; an exception in the generating thread ends the
    stream and is re-raised here, in the consumer."""
    import threading

    import torch

    err: list[BaseException] = []

    def run() -> None:
        try:
            with lock, torch.inference_mode():
                model.generate(**kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            err.append(e)
            streamer.end()

    th = threading.Thread(target=run, name=thread_name, daemon=True)
    th.start()
    try:
        yield from streamer
    finally:
        th.join()
    if err:
        raise err[0]
