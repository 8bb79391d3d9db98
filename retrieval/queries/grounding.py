"""Grounding checks for generated answers: pure functions, no model, no I/O.

Two questions are answered here, both by word matching against the text evidence of the images (file
name, folder, labels, the embedder's class names, EXIF comments, page / OCR text — the ``facts`` of each
:class:`~imgrag.retrieval.generators.base.EvidenceItem`):

- *Is a keyword hit evidence?* (:func:`keyword_evidence`) A page that holds "what", "is" and "the" does
  not answer "What is the capital of Peru?": a text hit counts only when it holds most of the question's
  *content* words (:func:`question_terms`: stop words, question words and generic words removed).
- *Does each sentence of an answer trace to something?* (:func:`check_sentences`) A sentence is supported
  when nearly all its content words occur in the question or in the evidence of the image(s) it cites
  (every sent image when it cites none). :func:`ground` drops or marks the others, and
  :func:`extractive_answer` writes an answer made only of evidence, for text-only generators whose own
  sentence failed the check.

Matching is on crude stems (``launching`` ~ ``launch``, ``cats`` ~ ``cat``), so it is conservative in the
other direction too: a paraphrase that shares no word with the evidence is reported as unsupported. That is
the intended bias: a sentence the evidence cannot back is worth flagging even when a human would accept it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Mapping

#: Words that carry no claim of their own: articles, auxiliaries, question words, pronouns, and the words
#: answers use to talk about images and evidence.
GENERIC = frozenset("""
a an the of in on at to is are was were be been being am this that these those it its it's with and or for from
by as into onto over under about than then so but if not no yes nor do does did doing done have has had having
can could would should may might must will shall what which who whom whose where when why how there here any some
all each every both either neither one ones other another such same very also just only more most much many few
i me my mine you your yours we our us he him his she her they them their theirs
image images photo photos picture pictures pic pics show shows showing shown see seen seem seems appear appears
look looks looking like likely probably perhaps maybe possibly collection file files name named data evidence
text based according answer question model guess guessed label labels labelled labeled folder taken size
say says said tell told find found mention mentioned describe described contain contains containing
depict depicts depicted visible clearly clear something someone thing things kind sort type
closest match embedded comment
png jpg jpeg gif webp tif tiff bmp pdf page
""".split())

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_SUFFIXES = ("ations", "ation", "ings", "ing", "edly", "ness", "ies", "ied", "ed", "es", "ly", "s")
_SENT = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+")
_CITE = re.compile(r"\[\s*(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\s*\]")
#: The fixed preamble of the smollm2 generator (not model output; excluded from the check).
PREAMBLE = re.compile(r"^\s*From the text evidence of image \[\d+\] \([^)]*\):\s*")
#: Appended to a sentence that :func:`ground` marks instead of dropping.
MARK = " [unverified]"


def stem(word: str) -> str:
    """A crude suffix-stripping stem: enough to match ``launching``/``launch``, ``cherries``/``cherry``."""
    w = word.lower().split("'")[0]
    for suf in _SUFFIXES:
        if len(w) - len(suf) >= 3 and w.endswith(suf):
            w = w[: -len(suf)]
            if suf in ("ies", "ied"):
                w += "y"
            break
    return w


def terms(text: str) -> set[str]:
    """Stems of the content words of ``text`` (generic words, one-letter words and numbers-with-letters
    like ``0x1f`` kept; see :data:`GENERIC`). File names split on ``_``, ``-`` and ``.``."""
    out: set[str] = set()
    for w in _WORD.findall(str(text).lower().replace("_", " ")):
        w = w.split("'")[0]
        if len(w) < 2 or w in GENERIC:
            continue
        out.add(stem(w))
    return out


def question_terms(question: str) -> set[str]:
    """The content words of a question (what it is about), stemmed."""
    return terms(question)


def question_words(question: str) -> list[str]:
    """The content words of a question as written (lower-case, first occurrence order), for messages."""
    out: list[str] = []
    for w in _WORD.findall(str(question).lower().replace("_", " ")):
        w = w.split("'")[0]
        if len(w) >= 2 and w not in GENERIC and w not in out:
            out.append(w)
    return out


def _matches(word: str, vocab: set[str]) -> bool:
    if word in vocab:
        return True
    if len(word) >= 4:  # 'rocket' ~ 'rockets', 'sunflower' ~ 'sunflowers' the stemmer missed; 'launch' ~ 'launcher'
        return any(len(v) >= 4 and (v.startswith(word) or word.startswith(v)) for v in vocab)
    return False


def coverage(words: set[str], vocab: set[str]) -> float:
    """Share of ``words`` found in ``vocab`` (1.0 for no words)."""
    if not words:
        return 1.0
    return sum(_matches(w, vocab) for w in words) / len(words)


#: Share of the question's content words a text hit must hold to count as keyword evidence.
KEYWORD_SHARE = 2 / 3


def keyword_evidence(question: str, text: str, share: float = KEYWORD_SHARE) -> bool:
    """Whether ``text`` (a page's or an image's stored text) holds at least ``share`` of the question's
    content words (at least one). A question made only of generic words has no content to match: False."""
    q = question_terms(question)
    if not q:
        return False
    need = max(1, math.ceil(share * len(q) - 1e-9))
    return sum(_matches(w, terms(text)) for w in q) >= need


def facts_text(facts: Mapping[str, str]) -> str:
    """The evidence of one item as one string (its values; keys like ``file`` are not evidence)."""
    return " ".join(str(v) for v in facts.values() if v is not None)


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after ``.!?`` followed by space, and at line breaks), stripped, non-empty."""
    return [s.strip() for s in _SENT.split(text or "") if s and s.strip()]


def split_preamble(text: str) -> tuple[str, str]:
    """``(preamble, body)``: a generator's fixed preamble (not model output) and the rest."""
    m = PREAMBLE.match(text or "")
    return (m.group(0), text[m.end():]) if m else ("", text or "")


def citations(sentence: str) -> list[int]:
    out: list[int] = []
    for m in _CITE.finditer(sentence):
        for tok in re.split(r"[,;]", m.group(1)):
            n = int(tok)
            if n not in out:
                out.append(n)
    return out


@dataclass
class SentenceCheck:
    text: str
    cited: list[int]  # the items the sentence was checked against
    supported: bool
    novel: list[str] = field(default_factory=list)  # content words (as written) in neither the question nor the evidence


#: A sentence may hold this share of content words that are in neither the question nor the evidence
#: (rounded down: sentences under 5 content words must be fully traceable).
MAX_NOVEL_SHARE = 0.2


def check_sentence(sentence: str, question: str, evidence: str, *, max_novel: float = MAX_NOVEL_SHARE) -> SentenceCheck:
    """Check one sentence against the question and one evidence string."""
    body = _CITE.sub(" ", sentence)
    words = {stem(w): w for w in reversed(question_words(body))}  # stem -> the word as written (first one)
    vocab = question_terms(question) | terms(evidence)
    novel = sorted(words[w] for w in words if not _matches(w, vocab))
    allowed = math.floor(max_novel * len(words) + 1e-9)
    return SentenceCheck(text=sentence, cited=citations(sentence), supported=len(novel) <= allowed, novel=novel)


def check_sentences(text: str, question: str, facts_by_n: Mapping[int, Mapping[str, str]],
                    default: list[int] | None = None, *, max_novel: float = MAX_NOVEL_SHARE) -> list[SentenceCheck]:
    """Check each sentence of ``text`` against the question and the evidence of the items it cites
    (``[n]`` with ``n`` in ``facts_by_n``); a sentence that cites none is checked against ``default``
    (default: every item). Sentences without content words (``"Yes [1]."``) are supported."""
    return [check_cited(s, question, facts_by_n, default, max_novel=max_novel) for s in split_sentences(text)]


def check_cited(sentence: str, question: str, facts_by_n: Mapping[int, Mapping[str, str]],
                default: list[int] | None = None, *, max_novel: float = MAX_NOVEL_SHARE) -> SentenceCheck:
    """Check one sentence against the question and the evidence of the items it cites (else ``default``)."""
    default = list(facts_by_n) if default is None else default
    cited = [n for n in citations(sentence) if n in facts_by_n] or [n for n in default if n in facts_by_n]
    c = check_sentence(sentence, question, " ".join(facts_text(facts_by_n[n]) for n in cited), max_novel=max_novel)
    c.cited = cited
    return c


@dataclass
class Grounded:
    text: str  # the answer with unsupported sentences dropped or marked
    checks: list[SentenceCheck]
    removed: list[SentenceCheck]  # dropped or marked

    @property
    def all_supported(self) -> bool:
        return not self.removed


def ground(text: str, question: str, facts_by_n: Mapping[int, Mapping[str, str]], *, mode: str = "drop",
           default: list[int] | None = None) -> Grounded:
    """Drop (``mode="drop"``) or mark with :data:`MARK` (``mode="mark"``) each unsupported sentence of
    ``text``; a fixed preamble (:func:`split_preamble`) is kept and not checked."""
    if mode not in ("drop", "mark"):
        raise ValueError(f"mode must be 'drop' or 'mark', got {mode!r}")
    pre, body = split_preamble(text)
    checks = check_sentences(body, question, facts_by_n, default)
    kept: list[str] = []
    for c in checks:
        if c.supported:
            kept.append(balance_quotes(c.text))
        elif mode == "mark":
            kept.append(_mark(balance_quotes(c.text)))
    return Grounded(text=(pre + " ".join(kept)).strip() if kept else pre.strip(), checks=checks,
                    removed=[c for c in checks if not c.supported])


def balance_quotes(sentence: str) -> str:
    """A sentence with an unmatched quotation mark loses it (a small model often opens a quote and ends the
    sentence without closing it: ``would be "Egyptian cat.``); balanced quotes are left alone."""
    if sentence.count('"') % 2:
        i = sentence.rfind('"')
        sentence = sentence[:i] + sentence[i + 1:]
    for op, cl in (("\u201c", "\u201d"), ("\u2018", "\u2019")):
        if op in sentence and sentence.count(op) > sentence.count(cl):  # ’ alone is an apostrophe
            i = sentence.rfind(op)
            sentence = sentence[:i] + sentence[i + 1:]
        elif op == "\u201c" and sentence.count(cl) > sentence.count(op):
            i = sentence.find(cl)
            sentence = sentence[:i] + sentence[i + 1:]
    return sentence


def _mark(sentence: str) -> str:
    s = sentence.rstrip()
    if s and s[-1] in ".!?":
        return s[:-1] + MARK + s[-1]
    return s + MARK


def unsupported_rate(checks: list[SentenceCheck]) -> float | None:
    """Share of unsupported sentences (None for no sentences)."""
    return (sum(not c.supported for c in checks) / len(checks)) if checks else None


#: Facts quoted by :func:`extractive_answer`, in this order, with how the answer names them.
_EXTRACT = (("looks like", "the image model's closest labels"), ("label", "its label"),
            ("exif comment", "its embedded comment"), ("text in image", "text found in it"),
            ("page text", "the page text"), ("taken", "taken"))


def extractive_answer(question: str, n: int, facts: Mapping[str, str], limit: int = 200) -> str:
    """An answer made only of item ``n``'s evidence, quoted: file, folder and the facts of :data:`_EXTRACT`.
    Every word in it comes from the evidence (quoted) or is fixed wording, so it passes :func:`check_sentences`."""
    where = f"\"{facts['file']}\"" if facts.get("file") else f"image [{n}]"
    if facts.get("folder"):
        where += f" in the folder \"{facts['folder']}\""
    if facts.get("page"):
        where += f", page {facts['page']}"
    bits = []
    for key, what in _EXTRACT:
        v = " ".join(str(facts.get(key) or "").split())
        if v:
            v = v if len(v) <= limit else v[: limit - 1].rstrip() + "…"
            bits.append(f"{what}: \"{v}\"")
    said = ("; ".join(bits) + ".") if bits else "no other text evidence."
    return f"The closest match is {where} [{n}]; {said}"


def shared_terms(question: str, facts: Mapping[str, str]) -> set[str]:
    """The question's content words present in an item's evidence."""
    vocab = terms(facts_text(facts))
    return {w for w in question_terms(question) if _matches(w, vocab)}


_END = re.compile(r"[.!?](?=\s)|\n")


def checked_stream(chunks: Iterator[str], question: str, facts_by_n: Mapping[int, Mapping[str, str]],
                   checks: list[SentenceCheck], default: list[int] | None = None, *, mode: str = "mark") -> Iterator[str]:
    """Pass a streamed answer on sentence by sentence, each checked (:func:`check_cited`, appended to
    ``checks``): a supported sentence goes out as the chunks it came in; an unsupported one is dropped
    (``mode="drop"``) or sent marked with :data:`MARK` (``"mark"``). A fixed preamble passes unchecked, and
    its citation becomes the default for sentences that cite nothing. Streaming granularity: one sentence."""
    if mode not in ("drop", "mark"):
        raise ValueError(f"mode must be 'drop' or 'mark', got {mode!r}")
    parts: list[str] = []  # the chunks (or chunk pieces) of the sentence being received
    buf, started = "", False
    for c in chunks:
        if not c:
            continue
        parts.append(c)
        buf += c
        if not started:
            pre, rest = split_preamble(buf)
            if not pre and len(buf) < 160 and "From the text evidence of image".startswith(buf.lstrip()[:31]):
                continue  # may still become the preamble
            started = True
            if pre:
                yield pre
                default = default or citations(pre) or None
                parts, buf = ([rest] if rest else []), rest
        while True:
            m = _END.search(buf)
            if not m:
                break
            head, parts = _split_parts(parts, m.end())
            buf = buf[m.end():]
            yield from _emit(head, question, facts_by_n, checks, default, mode)
    if parts:
        yield from _emit(parts, question, facts_by_n, checks, default, mode)


def _split_parts(parts: list[str], cut: int) -> tuple[list[str], list[str]]:
    head: list[str] = []
    for i, p in enumerate(parts):
        if cut <= len(p):
            head += [p[:cut]] if cut else []
            return head, ([p[cut:]] if p[cut:] else []) + parts[i + 1:]
        head.append(p)
        cut -= len(p)
    return head, []


def _emit(parts: list[str], question: str, facts_by_n, checks: list[SentenceCheck], default, mode: str) -> Iterator[str]:
    piece = "".join(parts)
    core = piece.strip()
    if not core:
        yield from parts
        return
    c = check_cited(core, question, facts_by_n, default)
    checks.append(c)
    tidy = balance_quotes(core)
    lead = piece[: len(piece) - len(piece.lstrip())]
    if c.supported:
        yield from (parts if tidy == core else [lead + tidy + piece[len(lead) + len(core):]])
    elif mode == "mark":
        yield lead + _mark(tidy) + piece[len(lead) + len(core):]
