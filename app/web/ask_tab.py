"""The web UI's Ask tab: the answer streams token by token, with a "loading the model…" line on first use,
then the checked answer with its cited images and short notes (details folded).

A text-only generator's answer is checked sentence by sentence before it is final (grounding ``drop``,
:mod:`imgrag.retrieval.queries.answer`), so :class:`AnswerStream` hands it over whole. To show it as it is
written, the generator is wrapped in a :class:`_Tap` that passes each token to the page as a draft, while the
answer runs in a worker thread; when it ends the draft is replaced by the checked answer.
"""

# no `from __future__ import annotations`: Gradio reads handler annotations at runtime.

import queue
import threading
import weakref
from typing import Any, Iterator

from imgrag.app.web.backend import display_name
from imgrag.app.web.files import NotServable
from imgrag.app.web.html import error_text, esc, generator_html, status_html
from imgrag.app.web.viewer import cut, data_html, link_citations
from imgrag.retrieval.errors import BadQueryError
from imgrag.retrieval.generators.base import Generator

_SLOTS: "weakref.WeakKeyDictionary[Any, threading.Semaphore]" = weakref.WeakKeyDictionary()
_SLOTS_LOCK = threading.Lock()


def answer_slot(backend) -> threading.Semaphore:
    """One answer generated at a time per server (UI and HTTP API share it): a language model's memory is bounded."""
    with _SLOTS_LOCK:
        s = _SLOTS.get(backend)
        if s is None:
            s = _SLOTS[backend] = threading.Semaphore(1)
        return s


class _Tap(Generator):
    """``inner`` with every streamed chunk also handed to ``sink`` (the page's draft)."""

    def __init__(self, inner: Generator, sink) -> None:
        self.inner, self.sink = inner, sink
        for a in ("name", "text_only", "max_images", "image_size"):
            setattr(self, a, getattr(inner, a))

    def __getattr__(self, a: str) -> Any:  # ground_fallback, … of the wrapped generator
        if a in ("inner", "sink"):
            raise AttributeError(a)
        return getattr(self.inner, a)

    def stream(self, question, items):
        for c in self.inner.stream(question, items):
            if c:
                self.sink("token", c)
            yield c


def needs_loading(gen: Any) -> bool:
    """True when the generator's weights are not loaded yet (the first answer will be slow)."""
    v = getattr(gen, "is_loaded", None)
    if v is not None:
        return not (v() if callable(v) else v)
    return getattr(gen, "_model", object()) is None


def ask_events(backend, question: str, k: int = 8, max_images: int = 4) -> Iterator[tuple[str, Any]]:
    """``("loading", name)`` when the model loads first, ``("token", text)`` as it is written, then
    ``("result", AnswerResult)``; errors are raised."""
    from imgrag.retrieval.queries.answer import answer

    q = (question or "").strip()
    if not q:
        raise BadQueryError("type a question about your images")
    backend.embedder()
    gen = backend._generator()
    events: "queue.Queue[tuple[str, Any]]" = queue.Queue()

    def run() -> None:
        try:
            with answer_slot(backend):
                stream = answer(backend.index(), q, k=backend._check_k(k), max_images=int(max_images),
                                generator=_Tap(gen, lambda kind, v: events.put((kind, v))))
                if not stream.no_answer and needs_loading(gen):
                    events.put(("loading", gen.name))
                for _ in stream:
                    pass
            events.put(("result", stream.result))
        except BaseException as e:  # noqa: BLE001 - handed to the page's thread, raised there
            events.put(("error", e))

    threading.Thread(target=run, name="imgrag-ask", daemon=True).start()
    while True:
        kind, val = events.get()
        if kind == "error":
            raise val
        yield kind, val
        if kind == "result":
            return


def summary_html(res) -> str:
    """One short line for people, the generator's notes folded under it."""
    if res.no_answer:
        head = "No image matched the question well enough, so no model was asked."
    else:
        n_sent, n_cited = len(res.sent), len(res.citations)
        reads = "read the text known about" if res.text_only else "looked at"
        head = (f"{esc(res.generator)} {reads} {n_sent} image{'s' if n_sent != 1 else ''}"
                f" and cited {n_cited}." if n_cited else f"{esc(res.generator)} {reads} {n_sent} image(s); "
                                                          "the answer cites none of them, so check it.")
    notes = list(res.notes or [])
    if res.best_score is not None:
        notes.append(f"best retrieval score {res.best_score:.3f}"
                     + (f" (threshold {res.min_score:.3f})" if res.min_score is not None else ""))
    det = ("<details class='imgrag-notes'><summary>Details</summary><ul>"
           + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul></details>") if notes else ""
    return f"<div class='imgrag-status' id='ask-summary'>{head}</div>{det}"


def cited_gallery(backend, res) -> list[tuple[str, str]]:
    """(thumbnail, caption) of each cited image; the placeholder for one no longer readable."""
    cites = []
    for c in res.citations:
        try:
            th = str(backend.thumbnail(c.id))
        except NotServable:
            th = str(backend.thumbs.placeholder())
        cites.append((th, f"[{c.n}] {display_name(c.path)}" + (f" p.{c.page}" if c.page else "") + f" · {c.score:.3f}"))
    return cites


def cited_items(backend, res) -> list[dict]:
    """The cited images for the viewer, in the gallery's order, with their ``[n]`` and stored metadata."""
    out = []
    for c in res.citations:
        try:
            row = backend.row(c.id)
        except NotServable:
            row = {"id": c.id, "path": c.path, "page": c.page}
        out.append(dict(row, score=c.score, n=c.n))
    return out


def build_ask_tab(sh) -> None:
    """The Ask tab (``sh``: layout's shared parts: backend, …)."""
    import gradio as gr

    backend = sh.backend
    with gr.Tab("Ask", id="ask"):
        with gr.Row():
            question = gr.Textbox(label="Question", placeholder="What is the cat lying on?", scale=5,
                                  elem_id="ask-question", lines=1, max_lines=3, max_length=2000)
            ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-button")
        with gr.Accordion("Options", open=False):
            with gr.Row():
                ask_k = gr.Slider(1, 50, value=8, step=1, label="Images retrieved")
                ask_max = gr.Slider(1, 8, value=4, step=1, label="Images sent to the model")
        gen_md = gr.HTML(generator_html(backend.generator_name()), elem_id="ask-generator")
        with gr.Row():
            with gr.Column(scale=3):
                answer_md = gr.Markdown("", elem_id="ask-answer", sanitize_html=True)
                ask_status = gr.HTML(status_html(), elem_id="ask-status")
            with gr.Column(scale=2):
                cited = gr.Gallery(label="Cited images", columns=2, height="auto", object_fit="contain",
                                   allow_preview=False, elem_id="ask-cited", elem_classes=["imgrag-viewable"])
                cited_data = gr.HTML(data_html("ask-cited", []), elem_classes=["imgrag-datablock"], container=False)

    def run_ask(question_, k_, max_):
        text = ""
        shown = cut(question_ or "", 80)
        skip = gr.skip()
        try:
            yield "", [], status_html(f"searching the images for {shown!r}…"), skip, data_html("ask-cited", [])
            for kind, val in ask_events(backend, question_, int(k_), int(max_)):
                if kind == "loading":
                    yield (skip, skip, status_html(f"loading the model ({val})… the first question takes longer"),
                           skip, skip)
                elif kind == "token":
                    text += val
                    yield text + " ▍", skip, status_html("writing the answer…"), skip, skip
                elif kind == "result":
                    res = val
                    yield (link_citations(res.text, [c.n for c in res.citations]), cited_gallery(backend, res),
                           summary_html(res), generator_html(res.generator, res.text_only),
                           data_html("ask-cited", cited_items(backend, res)))
        except Exception as e:  # noqa: BLE001
            yield text, skip, status_html(error_text(e), True), skip, skip

    ask_outputs = [answer_md, cited, ask_status, gen_md, cited_data]
    # one answer at a time (answer_slot); the queue keeps other tabs free meanwhile
    ask_btn.click(run_ask, [question, ask_k, ask_max], ask_outputs, api_name="ask", concurrency_limit=1,
                  concurrency_id="ask")
    question.submit(run_ask, [question, ask_k, ask_max], ask_outputs, api_name=False, concurrency_limit=1,
                    concurrency_id="ask")
