"""Question answering over the index: retrieve → choose images → generator → answer citing ``[n]``.

:func:`answer` retrieves eagerly (errors surface at once), then returns an :class:`AnswerStream`;
iterating it loads the generator lazily and yields the answer as it is generated. When the stream is
exhausted, ``stream.result`` holds the :class:`AnswerResult`: the text, the images it cites, the images
sent and those dropped (with the reason in ``notes``).

Hallucination guard: when the best retrieval score is below ``min_score`` (default per embedding model
family, :func:`default_min_score`) no generator is called and the answer says the collection does not
seem to contain the answer. A keyword hit in page/OCR text lifts the guard only when that text holds most
of the question's *content* words (:func:`~imgrag.retrieval.queries.grounding.keyword_evidence`): a page
that merely contains "what" or "the" is not evidence. A text-only generator is not called either when no
sent image's text evidence holds at least half of the question's content words (it could only guess).

Grounding (``grounding=``, :mod:`imgrag.retrieval.queries.grounding`): each sentence of the answer is traced to
the question or to the text evidence of the image it cites. ``drop`` (default for text-only generators)
removes unsupported sentences and, when none is left, answers with the cited image's evidence itself
(extractive); ``mark`` (default for generators that see pixels, which may describe what no text says)
marks unsupported ones ``[unverified]``; ``off`` passes the text as is. With grounding on, the answer streams
sentence by sentence (each is checked before it is shown), in the chunks the generator produced.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

from imgrag.retrieval.embedders import model_defaults
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.generators.base import EvidenceItem, Generator
from imgrag.retrieval.generators.prompt import parse_citations, says_not_shown
from imgrag.retrieval.queries import grounding as gr
from imgrag.retrieval.paths import to_fs
from imgrag.retrieval.queries.evidence import exif_text, item_facts  # noqa: F401 - exif_text re-exported
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
    grounding: str = "off"  # the grounding mode applied (drop / mark / off)
    unsupported: list[str] = field(default_factory=list)  # sentences dropped or marked by the grounding check

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d


NO_ANSWER_TEXT = ("The collection does not seem to contain images that answer this question "
                  "(best match {best} is below the relevance threshold {thr}).")
NO_EVIDENCE_TEXT = ("The collection does not seem to contain images that answer this question (the text evidence "
                    "of the retrieved images does not mention {words}, and {gen} reads only that text).")
GROUNDING_MODES = ("auto", "drop", "mark", "off")
#: Share of the question's content words (rounded up) that some sent image's text evidence must hold before
#: a text-only generator is asked (it reads nothing else, so without them it can only guess).
TEXT_EVIDENCE_SHARE = 0.5


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
                 best_score: float | None, min_score: float | None, no_answer: bool, grounding: str = "off",
                 refusal: str | None = None) -> None:
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
        self.grounding = grounding
        self.refusal = refusal
        self.unsupported: list[str] = []
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
            text = self.refusal or NO_ANSWER_TEXT.format(
                best="none" if self.best_score is None else f"{self.best_score:.3f}", thr=f"{self.min_score:.3f}")
            yield text
            self.result = self._finish(text, [], notes)
            return
        chunks: list[str] = []
        stream = self.generator.stream(self.question, self.items)
        checks: list[gr.SentenceCheck] = []
        facts = {it.n: it.facts for it in self.items}
        if self.grounding in ("drop", "mark"):
            stream = gr.checked_stream(stream, self.question, facts, checks, mode=self.grounding)
        for chunk in stream:
            if chunk:
                chunks.append(chunk)
                yield chunk
        text = "".join(chunks).strip()
        removed = [c for c in checks if not c.supported]
        if removed:
            self.unsupported = [c.text for c in removed]
            what = "; ".join(repr(_clip(c.text)) for c in removed)
            if self.grounding == "mark":
                notes.append(f"{len(removed)} sentence(s) marked {gr.MARK.strip()}: they use words found neither in "
                             f"the question nor in the text evidence of the image they cite ({_novel(removed)}); a "
                             "model that sees the pixels may still be right, check the image")
            elif len(removed) < len(checks):
                notes.append(f"dropped {len(removed)} unsupported sentence(s) of {self.generator_name}: {what} (words "
                             f"in neither the question nor the image's text evidence: {_novel(removed)})")
            else:  # nothing the model wrote is supported: answer with the evidence itself
                n = (parse_citations(text, set(facts)) or [grounding_fallback(text, self.items)])[0]
                notes.append(f"{self.generator_name} wrote {what}, which its text evidence does not support (words in "
                             f"neither the question nor the evidence of [{n}]: {_novel(removed)}); answered with that "
                             "evidence instead (extractive)")
                sent = "".join(chunks)  # what the reader has seen: the answer is that plus the extra, exactly
                extra = ("" if not sent or sent[-1].isspace() else " ") + gr.extractive_answer(self.question, n, facts[n])
                yield extra
                text = (sent + extra).strip()
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
                            notes=notes, min_score=self.min_score, grounding=self.grounding,
                            unsupported=list(self.unsupported))


def _clip(text: str, n: int = 160) -> str:
    t = "".join(ch if ch.isprintable() else " " for ch in " ".join(str(text).split()))
    return t if len(t) <= n else t[: n - 1] + "…"


def _novel(checks: list[gr.SentenceCheck]) -> str:
    words = sorted({w for c in checks for w in c.novel})
    return ", ".join(words[:12]) + (" …" if len(words) > 12 else "")


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
           crops: bool = True, grounding: str = "auto") -> AnswerStream:
    """Answer ``question`` from the images in ``index``; see the module docstring.

    ``generator``: a spec (``smollm2``, ``hf:ID_OR_DIR``, ``anthropic:MODEL``, ``openai:MODEL``; None →
    smollm2) or a :class:`Generator`. ``k`` images are retrieved, at most
    ``min(max_images, generator.max_images)`` are sent. ``rerank`` re-scores the retrieved images with
    a lexical cross-check of the question against each image's text evidence before choosing.
       ``crops``: document pages sent to a generator that sees pixels and takes several images get a
    high-resolution crop of the region holding the question's words, within the same image budget
    (:func:`add_page_crops`). ``grounding``: ``auto`` (``drop`` for text-only generators, ``mark`` for the
    others), ``drop``, ``mark`` or ``off``; see the module docstring.
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
    if grounding not in GROUNDING_MODES:
        raise BadQueryError(f"grounding must be one of {', '.join(GROUNDING_MODES)}, got {grounding!r}")
    gen = generator if isinstance(generator, Generator) else load_generator(generator)
    mode = ("drop" if gen.text_only else "mark") if grounding == "auto" else grounding
    thr = float(min_score) if min_score is not None else default_min_score(index.manifest.model)

    hits = search(index, [Term("text", q, 1.0)], k=k, filters=filters)
    notes: list[str] = []
    best = float(hits[0].score) if hits else None
    keyword_hits = False
    if index.store.has_text():  # document pages / OCR'd images: fuse in keyword matches on their text
        from imgrag.retrieval.queries.hybrid import fuse

        found = index.store.text_search(q, k, filters=filters)
        # evidence only where the text holds the question's content words, not just "what", "is", "the"
        txt = [h for h in found if gr.keyword_evidence(q, _text_of(index, h))]
        if len(txt) < len(found):
            notes.append(f"{len(found) - len(txt)} keyword match(es) in page/OCR text hold too few of the question's "
                         "content words; not used as evidence")
        if txt:
            keyword_hits = True  # the question's subject occurs in the collection's text: not a "no answer" case
            hits = fuse(index, hits, txt)[:k]  # the model's hybrid defaults; scores become fused RRF scores
            notes.append("retrieval fused image similarity with keyword matches in page/OCR text (hybrid)")
    if not keyword_hits and (best is None or best < thr):
        items = []
        dropped = [Citation(i + 1, h.id, h.path, float(h.score), h.row.get("page")) for i, h in enumerate(hits)]
        return AnswerStream(q, gen, gen.name, gen.text_only, items, dropped, notes, best, thr, no_answer=True,
                            grounding=mode)

    facts = [item_facts(index, h, q) for h in hits]
    order = list(range(len(hits)))
    if rerank:
        order = rerank_order(q, hits, facts)
        if order != list(range(len(hits))):
            notes.append("rerank changed the order of the retrieved images (lexical cross-check of the question "
                         "with each image's text evidence)")
    elif gen.text_only and mode != "off":  # it reads only text: send the images whose text mentions the question first
        order = sorted(order, key=lambda i: -len(gr.shared_terms(q, facts[i])))
        if order != list(range(len(hits))):
            notes.append(f"{gen.name} reads only text evidence: retrieved images whose evidence holds the question's "
                         "words are sent first")
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
        return AnswerStream(q, gen, gen.name, gen.text_only, [], dropped, notes, best, thr, no_answer=True,
                            grounding=mode)
    missing = _uncovered(q, items) if gen.text_only and mode != "off" else None
    if missing:  # nothing it can read mentions the question's subject: a text-only model could only guess
        dropped = [_cite(it) for it in items] + dropped
        return AnswerStream(q, gen, gen.name, gen.text_only, [], dropped, notes, best, thr, no_answer=True,
                            grounding=mode, refusal=NO_EVIDENCE_TEXT.format(words=missing, gen=gen.name))
    if not gen.text_only and crops and cap >= 2:
        add_page_crops(q, items, dropped, hits, cap, gen, notes)
    if gen.text_only:
        notes.append(f"{gen.name} sees only the images' text evidence (file name, date, labels, text), not pixels")
    rule = getattr(gen, "citation_rule", None)
    if rule:
        notes.append(f"{gen.name}: {rule}")
    return AnswerStream(q, gen, gen.name, gen.text_only, items, dropped, notes, best, thr, no_answer=False,
                        grounding=mode)


def _uncovered(question: str, items: list[EvidenceItem]) -> str | None:
    """None when some item's text evidence holds at least TEXT_EVIDENCE_SHARE of the question's content words
    (or the question has none); else those words, quoted, for the refusal."""
    import math

    qt = gr.question_terms(question)
    if not qt:
        return None
    need = max(1, math.ceil(TEXT_EVIDENCE_SHARE * len(qt) - 1e-9))
    if max(len(gr.shared_terms(question, it.facts)) for it in items) >= need:
        return None
    return ", ".join(f'"{w}"' for w in gr.question_words(question))


def _text_of(index: "Index", h: Hit) -> str:
    if "text" in h.row:
        return str(h.row.get("text") or "")
    try:
        got = index.store.get([h.id], columns=["id", "text"])
        return str(got["text"][0].as_py() or "") if got.num_rows else ""
    except Exception:  # noqa: BLE001 - no text, no keyword evidence
        return ""


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
