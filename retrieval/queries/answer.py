"""Question answering over the index: retrieve → choose images → generator → answer citing ``[n]``.

:func:`answer` retrieves eagerly (errors surface at once), then returns an :class:`AnswerStream`;
iterating it loads the generator lazily and yields the answer as it is generated. When the stream is
exhausted, ``stream.result`` holds the :class:`AnswerResult`: the text, the images it cites, the images
sent and those dropped (with the reason in ``notes``).

Hallucination guard: when the best retrieval score is below ``min_score`` (default per embedding model
family, :func:`default_min_score`) no generator is called and the answer says the collection does not
seem to contain the answer.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Iterator

from imgrag.retrieval.embedders import model_defaults
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.generators.base import EvidenceItem, Generator
from imgrag.retrieval.generators.prompt import parse_citations, says_not_shown
from imgrag.retrieval.paths import display, to_fs
from imgrag.retrieval.stores.base import Filters, Hit

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

    from imgrag.retrieval.index import Index

log = logging.getLogger(__name__)

@dataclass
class Citation:
    n: int
    id: str
    path: str
    score: float
    page: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AnswerResult:
    question: str
    text: str
    citations: list[Citation]  # items the answer cites ([n] found in the text)
    sent: list[Citation]  # items passed to the generator
    dropped: list[Citation]  # retrieved but not sent (cap / budget / unreadable), reasons in notes
    generator: str
    text_only: bool
    no_answer: bool  # hallucination guard fired (best score below min_score)
    best_score: float | None
    notes: list[str] = field(default_factory=list)
    min_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


NO_ANSWER_TEXT = ("The collection does not seem to contain images that answer this question "
                  "(best match {best} is below the relevance threshold {thr}).")


def default_min_score(model_id: str) -> float:
    """Guard threshold for an index built with ``model_id``: its embedder family's ``min_score``
    (:func:`imgrag.retrieval.embedders.model_defaults`; no weights are loaded)."""
    return model_defaults(model_id).min_score


class AnswerStream:
    """Iterate to get the answer text in chunks; ``result`` is set once the iteration ends.

    ``items`` (the evidence sent, with resized images), ``sent``, ``dropped`` and ``notes`` are known
    before the first chunk, so a UI can show the images while the answer streams.
    """

    def __init__(self, question: str, generator: Generator | None, generator_name: str, text_only: bool,
                 items: list[EvidenceItem], dropped: list[Citation], notes: list[str],
                 best_score: float | None, min_score: float | None, no_answer: bool) -> None:
        self.question = question
        self.generator = generator
        self.generator_name = generator_name
        self.text_only = text_only
        self.items = items
        self.sent = [_cite(it) for it in items]
        self.dropped = dropped
        self.notes = notes
        self.best_score = best_score
        self.min_score = min_score
        self.no_answer = no_answer
        self.result: AnswerResult | None = None
        self._started = False

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("an AnswerStream can be iterated only once")
        self._started = True
        return self._run()

    def text(self) -> str:
        """Consume the stream and return the whole answer text."""
        if not self._started:
            for _ in self:
                pass
        return self.result.text if self.result else ""

    def _run(self) -> Iterator[str]:
        notes = list(self.notes)
        if self.no_answer:
            text = NO_ANSWER_TEXT.format(best="none" if self.best_score is None else f"{self.best_score:.3f}",
                                         thr=f"{self.min_score:.3f}")
            yield text
            self.result = self._finish(text, [], notes)
            return
        chunks: list[str] = []
        for chunk in self.generator.stream(self.question, self.items):
            if chunk:
                chunks.append(chunk)
                yield chunk
        text = "".join(chunks).strip()
        valid = {it.n for it in self.items}
        cited = parse_citations(text, valid)
        invalid = [n for n in parse_citations(text) if n not in valid]
        if invalid:
            notes.append(f"the answer cites image number(s) {invalid} that were not given to the model; ignored")
        if not cited and self.items and not says_not_shown(text):
            if getattr(self.generator, "ground_fallback", False):  # small text-only models
                n = grounding_fallback(text, self.items)
                extra = f" [{n}]"
                yield extra
                text = text + extra
                cited = [n]
                notes.append(f"{self.generator_name} cited no image; attached [{n}], the sent image whose text "
                             "evidence overlaps the answer most (ties: best retrieval score)")
            else:
                notes.append("the answer cites no image")
        self.result = self._finish(text, cited, notes)

    def _finish(self, text: str, cited: list[int], notes: list[str]) -> AnswerResult:
        by_n = {it.n: it for it in self.items}
        return AnswerResult(question=self.question, text=text, citations=[_cite(by_n[n]) for n in cited],
                            sent=list(self.sent), dropped=list(self.dropped), generator=self.generator_name,
                            text_only=self.text_only, no_answer=self.no_answer, best_score=self.best_score,
                            notes=notes, min_score=self.min_score)


def _cite(it: EvidenceItem) -> Citation:
    return Citation(n=it.n, id=it.id, path=it.path, score=float(it.score), page=it.page)


def _words(text: str) -> set[str]:
    from imgrag.retrieval.generators.prompt import content_words

    return content_words(text)


def grounding_fallback(text: str, items: list[EvidenceItem]) -> int:
    """Deterministic citation for an answer that cites nothing: the item whose facts share the most
    words with the answer; ties (including no overlap at all) go to the best retrieval score."""
    aw = _words(text)
    best = max(items, key=lambda it: (len(aw & _words(" ".join(it.facts.values()))), it.score, -it.n))
    return best.n


def answer(index: "Index", question: str, *, k: int = 8, max_images: int = 4, generator: "str | Generator | None" = None,
           min_score: float | None = None, filters: Filters | None = None, rerank: bool = False,
           crops: bool = True) -> AnswerStream:
    """Answer ``question`` from the images in ``index``; see the module docstring.

    ``generator``: a spec (``smollm2``, ``hf:ID_OR_DIR``, ``anthropic:MODEL``, ``openai:MODEL``; None →
    smollm2) or a :class:`Generator`. ``k`` images are retrieved, at most
    ``min(max_images, generator.max_images)`` are sent. ``rerank`` re-scores the retrieved images with
    a lexical cross-check of the question against each image's text evidence before choosing.
       ``crops``: document pages sent to a generator that sees pixels and takes several images get a
    high-resolution crop of the region holding the question's words, within the same image budget
    (:func:`add_page_crops`).
    """
    from imgrag.retrieval.generators import load_generator
    from imgrag.retrieval.queries.search import Term, search

    q = " ".join(str(question or "").split())
    if not q:
        raise BadQueryError("empty question; ask something about the images")
    if k < 1:
        raise BadQueryError(f"k must be at least 1, got {k}")
    if max_images < 1:
        raise BadQueryError(f"max_images must be at least 1, got {max_images}")
    gen = generator if isinstance(generator, Generator) else load_generator(generator)
    thr = float(min_score) if min_score is not None else default_min_score(index.manifest.model)

    hits = search(index, [Term("text", q, 1.0)], k=k, filters=filters)
    notes: list[str] = []
    best = float(hits[0].score) if hits else None
    keyword_hits = False
    if index.store.has_text():  # document pages / OCR'd images: fuse in keyword matches on their text
        from imgrag.retrieval.queries.hybrid import fuse

        txt = index.store.text_search(q, k, filters=filters)
        if txt:
            keyword_hits = True  # the question's words occur in the collection: not a "no answer" case
            hits = fuse(index, hits, txt)[:k]  # the model's hybrid defaults; scores become fused RRF scores
            notes.append("retrieval fused image similarity with keyword matches in page/OCR text (hybrid)")
    if not keyword_hits and (best is None or best < thr):
        items = []
        dropped = [Citation(i + 1, h.id, h.path, float(h.score), h.row.get("page")) for i, h in enumerate(hits)]
        return AnswerStream(q, gen, gen.name, gen.text_only, items, dropped, notes, best, thr, no_answer=True)

    facts = [_facts(index, h, q) for h in hits]
    order = list(range(len(hits)))
    if rerank:
        order = rerank_order(q, hits, facts)
        if order != list(range(len(hits))):
            notes.append("rerank changed the order of the retrieved images (lexical cross-check of the question "
                         "with each image's text evidence)")
    cap = max(1, min(max_images, int(getattr(gen, "max_images", max_images) or max_images)))
    items: list[EvidenceItem] = []
    dropped: list[Citation] = []
    unreadable: list[str] = []
    for rank, i in enumerate(order):
        h = hits[i]
        if len(items) >= cap:
            dropped.append(Citation(0, h.id, h.path, float(h.score), h.row.get("page")))
            continue
        image = None
        if not gen.text_only:
            image = _load_image(h, getattr(gen, "image_size", None))
            if image is None:
                unreadable.append(h.path)
                dropped.append(Citation(0, h.id, h.path, float(h.score), h.row.get("page")))
                continue
        items.append(EvidenceItem(n=len(items) + 1, id=h.id, path=h.path, score=float(h.score),
                                  page=h.row.get("page"), image=image, facts=facts[i]))
    over = len(dropped) - len(unreadable)
    if over:
        why = (f"the generator's limit of {gen.max_images} images (model context)"
               if gen.max_images < max_images else f"max_images={max_images}")
        notes.append(f"sent {len(items)} of {len(hits)} retrieved images; {over} dropped by {why}")
    for p in unreadable:
        notes.append(f"could not read {p} (moved or deleted since indexing?); not sent")
    if not items:
        return AnswerStream(q, gen, gen.name, gen.text_only, [], dropped, notes, best, thr, no_answer=True)
    if not gen.text_only and crops and cap >= 2:
        add_page_crops(q, items, dropped, hits, cap, gen, notes)
    if gen.text_only:
        notes.append(f"{gen.name} sees only the images' text evidence (file name, date, labels, text), not pixels")
    rule = getattr(gen, "citation_rule", None)
    if rule:
        notes.append(f"{gen.name}: {rule}")
    return AnswerStream(q, gen, gen.name, gen.text_only, items, dropped, notes, best, thr, no_answer=False)


def add_page_crops(question: str, items: list[EvidenceItem], dropped: list[Citation], hits: list[Hit], cap: int,
                   gen: Generator, notes: list[str]) -> None:
    """Give sent document pages a high-resolution crop of the region holding the question's words
    (:mod:`imgrag.retrieval.pagecrop`), within the image budget ``cap`` (pages + crops):

    - crops go to pages in rank order, one per page, while images are left in the budget;
    - when the budget is full and holds at least 3 images, the lowest-ranked item gives up its slot
      for the best-ranked page's crop (the best page at a legible resolution is worth more than the
      last page at an illegible one).

    Everything done is reported in ``notes``.
    """
    from imgrag.retrieval import pagecrop
    from imgrag.retrieval.generators.base import Crop

    by_id = {h.id: h for h in hits}
    size = getattr(gen, "image_size", None)
    planned: list[tuple[EvidenceItem, Any]] = []
    for it in list(items):
        if it not in items or it.page is None or not it.path.lower().endswith(".pdf"):
            continue
        full = len(items) + len(planned) >= cap
        if full and (planned or cap < 3 or len(items) < 2):
            break
        h = by_id.get(it.id)
        region = pagecrop.locate(it.path, int(it.page), question, page_text=h.row.get("text") if h else None,
                                 page_image=it.image)
        if region is None:
            continue
        if full:  # the lowest-ranked other item makes room (once)
            victim = items[-1]
            if victim is it:
                break
            items.remove(victim)
            dropped.append(Citation(0, victim.id, victim.path, float(victim.score), victim.page))
            notes.append(f"{os.path.basename(victim.path)}" + (f" page {victim.page}" if victim.page else "")
                         + " not sent, to make room in the image budget for a high-resolution crop")
        planned.append((it, region))
    for it, region in planned:
        try:
            img, dpi = pagecrop.render_crop(it.path, int(it.page), region.box, size)
        except Exception as e:  # noqa: BLE001 - the page itself is still sent
            notes.append(f"could not render a crop of {os.path.basename(it.path)} page {it.page}: {e}")
            continue
        it.crops.append(Crop(image=img, box=region.box, dpi=float(dpi), how=region.how))
        x0, y0, x1, y1 = region.box
        what = ("the question's words " + ", ".join(repr(w) for w in region.words) if region.words
                else "the most ink (a page without a text layer)")
        notes.append(f"[{it.n}] {os.path.basename(it.path)} page {it.page}: added a high-resolution crop "
                     f"({img.width}x{img.height} px, {dpi:.0f} dpi) of the region with {what}: "
                     f"{x0:.0%}–{x1:.0%} across, {y0:.0%}–{y1:.0%} down the page")


#: Weight of the lexical cross-check in :func:`rerank_order` (fraction of question words found in an
#: image's text evidence, added to the cosine score).
RERANK_WEIGHT = 0.1


def rerank_order(question: str, hits: list[Hit], facts: list[dict[str, str]]) -> list[int]:
    """Indices of ``hits`` re-ordered by score + RERANK_WEIGHT × (share of question words present in
    the image's text evidence); stable for ties."""
    qw = _words(question)
    if not qw:
        return list(range(len(hits)))

    def key(i: int) -> float:
        fw = _words(" ".join(facts[i].values()))
        return float(hits[i].score) + RERANK_WEIGHT * len(qw & fw) / len(qw)

    return sorted(range(len(hits)), key=lambda i: -key(i))


def _facts(index: "Index", h: Hit, question: str = "") -> dict[str, str]:
    """Text evidence about a hit (all of it untrusted data from the file)."""
    row = h.row
    f: dict[str, str] = {"file": display(os.path.basename(h.path))}
    parent = display(os.path.basename(os.path.dirname(h.path)))
    if parent:
        f["folder"] = parent
    if row.get("page") is not None:
        f["page"] = str(row["page"])
    t = row.get("taken_at")
    if t is not None:
        f["taken"] = t.isoformat(sep=" ", timespec="minutes") if isinstance(t, datetime) else str(t)
    if row.get("width") and row.get("height"):
        f["size"] = f"{row['width']}x{row['height']}"
    if row.get("label"):
        f["label"] = str(row["label"])
    labels = _class_labels(index, h)
    if labels:
        f["looks like"] = labels
    if row.get("page") is None:
        comment = exif_text(h.path)
        if comment:
            f["exif comment"] = comment
    if row.get("text"):
        if row.get("page") is not None:  # a document page: the passage around the question's words
            from imgrag.retrieval.textsearch import snippet

            f["page text"] = snippet(str(row["text"]), question, width=560)[0] if question else str(row["text"])
        else:
            f["text in image"] = str(row["text"])
    return f


_EXIF_TEXT_TAGS = {0x010E: "description", 0x9286: "user comment", 0x9C9C: "comment", 0x9C9F: "subject"}


def exif_text(path: str, limit: int = 400) -> str | None:
    """ImageDescription / UserComment / XPComment / XPSubject from the file's EXIF (header only, no
    pixel decoding); None when absent or unreadable. Untrusted data like every other fact."""
    try:
        import warnings

        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(to_fs(path)) as img:
                exif = img.getexif()
                vals = [exif.get(t) for t in (0x010E, 0x9C9C, 0x9C9F)]
                vals.append(exif.get_ifd(0x8769).get(0x9286))
    except Exception:  # noqa: BLE001 - unreadable EXIF means "no comment"
        return None
    out = []
    for v in vals:
        if isinstance(v, bytes):
            if v[:8] in (b"ASCII\0\0\0", b"UNICODE\0", b"\0" * 8):  # UserComment's 8-byte charset prefix
                enc = "utf-16" if v[:8] == b"UNICODE\0" else "latin-1"
                v = v[8:].decode(enc, errors="replace")
            else:
                v = v.decode("utf-16-le" if len(v) % 2 == 0 and b"\0" in v else "utf-8", errors="replace")
        if v:
            v = str(v).strip("\x00 ").strip()
            if v and v not in out:
                out.append(v)
    text = " | ".join(out)
    return text[:limit] or None


def _class_labels(index: "Index", h: Hit, top: int = 3) -> str | None:
    """The known classes nearest the stored vector (what the image looks like), for embedders with a class
    vocabulary (``defaults(spec).class_names``); None otherwise, or when they cannot be had."""
    if not model_defaults(index.manifest.model).class_names:
        return None  # without touching index.embedder: building one may import its model library
    try:
        import numpy as np

        got = index.store.get([h.id], columns=["id", "vector"])
        if not got.num_rows:
            return None
        v = np.asarray(got["vector"][0].as_py(), dtype=np.float32)
        return ", ".join(index.embedder.nearest_class_names(v, top)) or None
    except Exception as e:  # noqa: BLE001 - labels are a nicety; the answer still works without them
        log.debug("class labels unavailable: %s", e)
        return None


def _load_image(h: Hit, size: int | None) -> "Image.Image | None":
    from PIL import Image

    from imgrag.retrieval.imageio import ImageDecodeError, decode_image

    try:
        with open(to_fs(h.path), "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    page = h.row.get("page")
    if page is not None and h.path.lower().endswith(".pdf"):
        img = _render_page(h.path, int(page), size)
        return img
    try:
        img = decode_image(data, draft_size=size).image.convert("RGB")
    except (ImageDecodeError, OSError, ValueError):
        return None
    if size:
        img.thumbnail((size, size), Image.BICUBIC)
    return img


def _render_page(path: str, page: int, size: int | None) -> "Image.Image | None":
    try:
        from imgrag.retrieval.pdf import render_to_fit  # thread-safe (PDFium lock), closes the document

        return render_to_fit(path, page, size, dpi=144.0)
    except Exception:  # noqa: BLE001 - a bad page (or no pypdfium2) is reported as unreadable
        return None
