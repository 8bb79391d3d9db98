"""The web UI (``imgrag serve``): Gradio Blocks mounted on a FastAPI app with imgrag's own media routes.

Tabs: Search, Search by image, Classify, Ask, Index. The work behind them lives in
:mod:`imgrag.app.ui_core` (plain Python, tested directly); this module only lays it out, turns errors
into readable messages, and serves media:

- ``GET /imgrag/thumb?id=ID`` — a cached JPEG thumbnail of an indexed item;
- ``GET /imgrag/image?id=ID`` — the original, only if ``ID`` is an indexed item whose file still has
  the indexed content hash. Anything else is a 404; nothing else on disk is reachable.

Gallery thumbnails come from the thumbnail cache folder (registered as Gradio static files; it only
ever holds thumbnails of indexed items). The page loads nothing from the network: analytics are off and
the theme uses fonts bundled with Gradio or the system's.
"""

import html
import itertools
import logging
import os
import socket
import sys
import threading
import traceback
from typing import Any
from urllib.parse import quote

# before gradio is imported anywhere in this process: no telemetry, no version check, no share link
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("GRADIO_RUN_HISTORY", "False")

from imgrag.app.ui_core import Backend, NotServable, ResultItem, UIConfig, format_eta  # noqa: E402
from imgrag.retrieval.errors import ImgragError  # noqa: E402

log = logging.getLogger("imgrag.ui")

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

CSS = """
.imgrag-status { min-height: 1.5em; }
.imgrag-error { color: #b42318; font-weight: 600; }
.imgrag-progress { width: 100%; background: #eceff3; border-radius: 6px; height: 14px; overflow: hidden; }
.imgrag-progress > div { height: 100%; background: #3b82f6; transition: width .4s; }
.imgrag-detail { font-size: 0.92em; line-height: 1.5; word-break: break-all; }
.imgrag-detail code { font-size: 0.9em; }
table.imgrag-table { border-collapse: collapse; font-size: 0.92em; border: none; }
table.imgrag-table td, table.imgrag-table th { padding: 2px 12px 2px 0; text-align: left; vertical-align: top;
  border: none; border-bottom: 1px solid #e5e7eb; }
.imgrag-matches { font-size: 0.92em; line-height: 1.5; }
.imgrag-matches ol { margin: 0.2em 0 0 0; padding: 0; list-style: none; }
.imgrag-match-src { font-weight: 600; }
.imgrag-snippet mark { background: #fde68a; padding: 0 1px; }
"""


# ------------------------------------------------------------------------------------------------
# small helpers (pure, tested)
# ------------------------------------------------------------------------------------------------
def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def error_text(e: BaseException) -> str:
    """A one-line, user-readable message for any exception (never a traceback)."""
    if isinstance(e, ImgragError):
        return str(e)
    log.error("internal error in the UI:\n%s", traceback.format_exc())
    msg = " ".join(str(e).split())[:300]
    return f"internal error: {type(e).__name__}{': ' + msg if msg else ''} (details in the server log)"


_SEQ = itertools.count(1)


def status_html(msg: str = "", error: bool = False) -> str:
    """A status line. ``data-seq`` differs on every call, so each answer re-renders (and tests can tell
    a new answer from an identical previous one)."""
    seq = next(_SEQ)
    if not msg:
        return f"<div class='imgrag-status' data-seq='{seq}'></div>"
    cls = "imgrag-status imgrag-error" if error else "imgrag-status"
    return f"<div class='{cls}' data-seq='{seq}'>{'⚠ ' if error else ''}{esc(msg)}</div>"


def gallery_value(items: list[ResultItem]) -> list[tuple[str, str]]:
    return [(it.thumb, it.caption) for it in items]


def snippet_html(snip: str, spans: Any = ()) -> str:
    """``snip`` (untrusted page text) HTML-escaped, with the query's words (character ``spans`` of the
    raw text) wrapped in ``<mark>``; spans that overlap, fall outside or are malformed are ignored."""
    good = []
    for sp in spans or ():
        if isinstance(sp, (list, tuple)) and len(sp) == 2 and all(isinstance(x, int) for x in sp):
            good.append((sp[0], sp[1]))
    out, last = [], 0
    for a, b in sorted(good):
        if a < last or b <= a or b > len(snip):
            continue
        out.append(esc(snip[last:a]) + "<mark>" + esc(snip[a:b]) + "</mark>")
        last = b
    out.append(esc(snip[last:]))
    return "".join(out)


def matches_html(items: list[dict[str, Any]]) -> str:
    """Text matches of the results that have text (document pages, OCR'd images): document name, page
    number and the snippet with the query's words highlighted; empty when no result has text."""
    rows = []
    for i, it in enumerate(items, start=1):
        if not it.get("snippet"):
            continue
        where = esc(it["name"]) + (f" · page {int(it['page'])}" if it.get("page") else "")
        rows.append(f"<li class='imgrag-match'><span class='imgrag-match-src'>{i}. {where}</span>: "
                    f"<span class='imgrag-snippet'>{snippet_html(it['snippet'], it.get('match_spans'))}</span></li>")
    if not rows:
        return ""
    return "<div class='imgrag-matches'><div>Text matches</div><ol>" + "".join(rows) + "</ol></div>"


def detail_html(it: dict[str, Any] | None) -> str:
    """Details of a selected result (every value escaped: file names are untrusted)."""
    if not it:
        return "<div class='imgrag-detail'>Select a result to see its details.</div>"
    rows = [("file", it["name"]), ("folder", os.path.dirname(it["path"])), ("score", f"{it['score']:.4f}")]
    if it.get("taken_at"):
        rows.append(("taken", str(it["taken_at"])[:19].replace("T", " ")))
    if it.get("width"):
        rows.append(("size", f"{it['width']}×{it['height']} px"))
    if it.get("label"):
        rows.append(("label", it["label"]))
    if it.get("page"):
        rows.append(("page", str(it["page"])))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    if it.get("snippet"):
        body += f"<tr><th>text</th><td class='imgrag-snippet'>{snippet_html(it['snippet'], it.get('match_spans'))}</td></tr>"
    link = f"/imgrag/image?id={quote(it['id'], safe='')}"
    return (f"<div class='imgrag-detail'><table class='imgrag-table'>{body}</table>"
            f"<a href='{esc(link)}' target='_blank' rel='noopener noreferrer'>open the original</a></div>")


def job_html(st) -> str:
    if st.state == "idle":
        return "<div class='imgrag-status'>No background job has run yet.</div>"
    pct = round(100 * st.fraction)
    unit = "images" if st.kind == "index" else "items"
    line = f"{esc(st.title)}: {st.done}/{st.total} {unit}"
    if st.state == "running":
        line += f" · {st.rate:.1f} {unit}/s · ETA {format_eta(st.eta_s)}"
    else:
        line += f" · {st.state} in {format_eta(st.elapsed)}" + (f" ({st.rate:.1f} {unit}/s)" if st.done else "")
    msg = f"<div class='{'imgrag-error' if st.state == 'failed' else ''}'>{esc(st.message)}</div>" if st.message else ""
    return (f"<div class='imgrag-job' data-state='{esc(st.state)}'><div class='imgrag-progress'>"
            f"<div style='width:{pct}%'></div></div><div>{line}</div>{msg}</div>")


def info_html(info: dict[str, Any]) -> str:
    rows = [("index", info.get("index")), ("items", info.get("items")), ("skipped files", info.get("skipped")),
            ("model", info.get("model")), ("embedding size", info.get("dim")), ("store", info.get("store")),
            ("disk size", f"{(info.get('disk_bytes') or 0) / 1e6:.1f} MB"), ("created", info.get("created_at"))]
    rows += [(k.replace("store_", "store "), v) for k, v in info.items() if k.startswith("store_")]
    return "<table class='imgrag-table'>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def skipped_html(rows: list[dict[str, Any]], total: int | None = None) -> str:
    if not rows:
        return "<div>No skipped files.</div>"
    head = f"<div>{total if total is not None else len(rows)} file(s) could not be indexed:</div>"
    body = "".join(f"<tr><td><code>{esc(r.get('path'))}</code></td><td>{esc(r.get('reason'))}</td></tr>" for r in rows)
    return head + f"<table class='imgrag-table'><tr><th>file</th><th>reason</th></tr>{body}</table>"


# ------------------------------------------------------------------------------------------------
# the Blocks
# ------------------------------------------------------------------------------------------------
def _upload_component():
    """``gr.Image`` whose preprocessing never opens the file: imgrag checks bytes and header first."""
    import gradio as gr

    class UploadImage(gr.Image):
        is_template = True  # rendered by the stock Image front-end

        def preprocess(self, payload):  # type: ignore[override]
            if payload is None:
                return None
            if payload.url and payload.url.startswith("data:"):
                return _data_url_to_file(payload.url, self.GRADIO_CACHE)
            return str(payload.path) if payload.path else None

    return UploadImage


def _data_url_to_file(url: str, cache_dir: str) -> str:
    import base64
    import tempfile

    head, _, b64 = url.partition(",")
    if len(b64) > 200 * 1024 * 1024:
        raise ImgragError("upload too large")
    data = base64.b64decode(b64)
    fd, p = tempfile.mkstemp(dir=cache_dir, suffix=".img")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return p


def build_blocks(backend: Backend):
    import gradio as gr

    from imgrag.retrieval.queries.classify import load_templates

    UploadImage = _upload_component()
    default_templates = "\n".join(load_templates("simple"))
    max_k = min(100, backend.config.max_k)

    with gr.Blocks(title="imgrag", analytics_enabled=False) as demo:
        gr.HTML("<h2 style='margin:0'>imgrag</h2><div>Search, classify and ask about your images — "
                f"index <code>{esc(backend.root)}</code></div>")
        results_state = gr.State([])
        selected_state = gr.State(None)
        timer = gr.Timer(1.0, active=False)

        # ---------------------------------------------------------------------------------- Search
        with gr.Tab("Search", id="search"):
            with gr.Row():
                q = gr.Textbox(label="Search", placeholder="a dog on a beach", scale=5, elem_id="search-query",
                               lines=1, max_lines=1)
                search_btn = gr.Button("Search", variant="primary", scale=1, elem_id="search-button")
            with gr.Accordion("Filters and options", open=False):
                with gr.Row():
                    k = gr.Slider(1, max_k, value=12, step=1, label="Results (k)", elem_id="search-k")
                    cutoff = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Relevance cutoff",
                                       info="hide results scoring below this (0 = show all)", elem_id="search-cutoff")
                    sort_date = gr.Checkbox(False, label="Sort by capture date (after the cutoff)",
                                            elem_id="search-sort-date")
                with gr.Row():
                    glob = gr.Textbox(label="Path glob", placeholder="*/2019/*  or  *.png", elem_id="search-glob")
                    after = gr.Textbox(label="Taken on or after", placeholder="YYYY-MM-DD", elem_id="search-after")
                    before = gr.Textbox(label="Taken on or before", placeholder="YYYY-MM-DD", elem_id="search-before")
            search_status = gr.HTML(status_html(), elem_id="search-status")
            gallery = gr.Gallery(label="Results", columns=4, height="auto", object_fit="contain",
                                 allow_preview=False, elem_id="search-gallery")
            matches = gr.HTML("", elem_id="search-matches")
            with gr.Row():
                detail = gr.HTML(detail_html(None), elem_id="search-detail")
                more_btn = gr.Button("More like this", elem_id="more-like-this", scale=0)

        def run_search(query, k_, cut, sort_, glob_, after_, before_):
            try:
                items = backend.search_text(query, int(k_), glob_, after_, before_, cut if cut > 0 else None, sort_)
            except Exception as e:  # noqa: BLE001
                return [], [], None, detail_html(None), status_html(error_text(e), True), ""
            msg = f"{len(items)} result(s) for {query.strip()!r}" if items else "no results (try a lower cutoff or fewer filters)"
            dicts = [it.to_dict() for it in items]
            return gallery_value(items), dicts, None, detail_html(None), status_html(msg), matches_html(dicts)

        search_outputs = [gallery, results_state, selected_state, detail, search_status, matches]
        search_inputs = [q, k, cutoff, sort_date, glob, after, before]
        search_btn.click(run_search, search_inputs, search_outputs, api_name="search")
        q.submit(run_search, search_inputs, search_outputs, api_name=False)

        def on_select(results, evt: gr.SelectData):
            i = evt.index if isinstance(evt.index, int) else (evt.index[0] if evt.index else None)
            if i is None or not results or i >= len(results):
                return None, detail_html(None)
            return results[i]["id"], detail_html(results[i])

        gallery.select(on_select, [results_state], [selected_state, detail], api_name=False)

        def run_more(sel, k_, cut, sort_, glob_, after_, before_):
            try:
                if not sel:
                    raise ImgragError("select a result first (click a thumbnail), then 'More like this'")
                items = backend.more_like(sel, int(k_), glob_, after_, before_, cut if cut > 0 else None, sort_)
            except Exception as e:  # noqa: BLE001
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), status_html(error_text(e), True), gr.skip()
            dicts = [it.to_dict() for it in items]
            return (gallery_value(items), dicts, None, detail_html(None),
                    status_html(f"{len(items)} image(s) like the selected one"), matches_html(dicts))

        more_btn.click(run_more, [selected_state, k, cutoff, sort_date, glob, after, before], search_outputs,
                       api_name="more_like_this")

        # -------------------------------------------------------------------------- Search by image
        with gr.Tab("Search by image", id="image"):
            with gr.Row():
                with gr.Column(scale=1):
                    qimg = UploadImage(type="filepath", sources=["upload", "clipboard"], label="Query image",
                                       elem_id="image-query", height=280)
                    k2 = gr.Slider(1, max_k, value=12, step=1, label="Results (k)")
                    img_btn = gr.Button("Find similar images", variant="primary", elem_id="image-button")
                with gr.Column(scale=3):
                    img_status = gr.HTML(status_html(), elem_id="image-status")
                    img_gallery = gr.Gallery(label="Nearest images", columns=4, height="auto", object_fit="contain",
                                             allow_preview=False, elem_id="image-gallery")

        def run_image(path, k_):
            try:
                items = backend.search_image(path, int(k_))
            except Exception as e:  # noqa: BLE001
                return [], [], status_html(error_text(e), True)
            return gallery_value(items), [it.to_dict() for it in items], status_html(f"{len(items)} nearest image(s)")

        img_btn.click(run_image, [qimg, k2], [img_gallery, results_state, img_status], api_name="search_image")

        # --------------------------------------------------------------------------------- Classify
        with gr.Tab("Classify", id="classify"):
            with gr.Row():
                with gr.Column(scale=2):
                    labels = gr.Textbox(label="Labels (one per line)", lines=6, value="cat\ndog\nfood\nvehicle\nbuilding",
                                        elem_id="classify-labels")
                    templates = gr.Textbox(label="Prompt templates ({} is replaced by the label)", lines=6,
                                           value=default_templates, elem_id="classify-templates")
                with gr.Column(scale=2):
                    cimg = UploadImage(type="filepath", sources=["upload", "clipboard"], label="Image to classify",
                                       elem_id="classify-image", height=240)
                    cls_btn = gr.Button("Classify image", variant="primary", elem_id="classify-button")
                    probs = gr.Label(label="Label probabilities", num_top_classes=10, elem_id="classify-probs")
            cls_status = gr.HTML(status_html(), elem_id="classify-status")
            with gr.Row():
                cls_results_btn = gr.Button("Classify the current search results", elem_id="classify-results")
                write_back = gr.Checkbox(True, label="Write the top label into the index (filterable later)")
                cls_index_btn = gr.Button("Classify whole index (background)", elem_id="classify-index")
            cls_table = gr.HTML("", elem_id="classify-table")
            cls_job = gr.HTML(job_html(backend.jobs.status), elem_id="classify-job")

        def run_classify(path, labels_, templates_):
            try:
                return backend.classify_upload(path, labels_, templates_), status_html("")
            except Exception as e:  # noqa: BLE001
                return None, status_html(error_text(e), True)

        cls_btn.click(run_classify, [cimg, labels, templates], [probs, cls_status], api_name="classify_image")

        def run_classify_results(results, labels_, templates_):
            try:
                rows = backend.classify_ids([r["id"] for r in (results or [])], labels_, templates_)
            except Exception as e:  # noqa: BLE001
                return "", status_html(error_text(e), True)
            body = "".join(
                f"<tr><td>{esc(r['name'])}</td><td><b>{esc(r['label'] or '(none)')}</b> {r['score']:.2f}</td>"
                f"<td>{esc(', '.join(f'{lab} {p:.2f}' for lab, p in r['top']))}</td></tr>" for r in rows)
            return (f"<table class='imgrag-table'><tr><th>file</th><th>label</th><th>top 3</th></tr>{body}</table>",
                    status_html(f"classified {len(rows)} search result(s)"))

        cls_results_btn.click(run_classify_results, [results_state, labels, templates], [cls_table, cls_status],
                              api_name="classify_results")

        # ------------------------------------------------------------------------------------- Ask
        with gr.Tab("Ask", id="ask"):
            with gr.Row():
                question = gr.Textbox(label="Question", placeholder="What is the cat lying on?", scale=5,
                                      elem_id="ask-question", lines=1, max_lines=3)
                ask_btn = gr.Button("Ask", variant="primary", scale=1, elem_id="ask-button")
            with gr.Accordion("Options", open=False):
                with gr.Row():
                    ask_k = gr.Slider(1, 50, value=8, step=1, label="Images retrieved")
                    ask_max = gr.Slider(1, 8, value=4, step=1, label="Images sent to the model")
            gen_md = gr.HTML(f"<div>Generator: <b>{esc(backend.generator_name())}</b></div>", elem_id="ask-generator")
            with gr.Row():
                with gr.Column(scale=3):
                    answer_md = gr.Markdown("", elem_id="ask-answer", sanitize_html=True)
                    ask_status = gr.HTML(status_html(), elem_id="ask-status")
                with gr.Column(scale=2):
                    cited = gr.Gallery(label="Cited images", columns=2, height="auto", object_fit="contain",
                                       allow_preview=False, elem_id="ask-cited")

        def run_ask(question_, k_, max_):
            text = ""
            try:
                for kind, val in backend.ask(question_, int(k_), int(max_)):
                    if kind == "chunk":
                        text += val
                        yield text, gr.skip(), status_html("generating…"), gr.skip()
                    else:
                        res = val
                        notes = []
                        if res.no_answer:
                            notes.append("No image matched well enough, so no model was asked.")
                        notes += list(res.notes or [])
                        cites = []
                        for c in res.citations:
                            try:
                                th = str(backend.thumbnail(c.id))
                            except NotServable:
                                th = str(backend.thumbs.placeholder())
                            cites.append((th, f"[{c.n}] {os.path.basename(c.path)} · {c.score:.3f}"))
                        gen = f"<div>Generator: <b>{esc(res.generator)}</b>{' (text-only fallback)' if res.text_only else ''}</div>"
                        yield (res.text, cites, "<div class='imgrag-status'>" + "<br>".join(esc(n) for n in notes)
                               + "</div>", gen)
            except Exception as e:  # noqa: BLE001
                yield text, gr.skip(), status_html(error_text(e), True), gr.skip()

        ask_outputs = [answer_md, cited, ask_status, gen_md]
        # one answer generated at a time: a language model's memory is bounded, other tabs are not blocked
        ask_btn.click(run_ask, [question, ask_k, ask_max], ask_outputs, api_name="ask", concurrency_limit=1,
                      concurrency_id="ask")
        question.submit(run_ask, [question, ask_k, ask_max], ask_outputs, api_name=False, concurrency_limit=1,
                        concurrency_id="ask")

        # ----------------------------------------------------------------------------------- Index
        with gr.Tab("Index", id="index"):
            with gr.Row():
                with gr.Column(scale=2):
                    info_box = gr.HTML("", elem_id="index-info")
                    refresh_btn = gr.Button("Refresh", size="sm")
                with gr.Column(scale=3):
                    folder = gr.Textbox(label="Add a folder on this machine to the index",
                                        placeholder="/home/me/Pictures", elem_id="index-folder")
                    index_btn = gr.Button("Index folder (background)", variant="primary", elem_id="index-button")
                    idx_status = gr.HTML(status_html(), elem_id="index-status")
                    idx_job = gr.HTML(job_html(backend.jobs.status), elem_id="index-job")
            skipped_box = gr.HTML("", elem_id="index-skipped")

        def index_view():
            try:
                info = backend.info()
                sk = backend.skipped()
                return info_html(info), skipped_html(sk, info.get("skipped"))
            except Exception as e:  # noqa: BLE001
                return status_html(error_text(e), True), ""

        refresh_btn.click(index_view, None, [info_box, skipped_box], api_name="index_info")
        demo.load(index_view, None, [info_box, skipped_box], api_name=False)

        def start_index(folder_):
            try:
                backend.start_indexing(folder_)
            except Exception as e:  # noqa: BLE001
                return status_html(error_text(e), True), gr.skip()
            return status_html("indexing started; you can keep searching meanwhile"), gr.Timer(active=True)

        index_btn.click(start_index, [folder], [idx_status, timer], api_name="index_folder")

        def start_classify_index(labels_, templates_, write_):
            try:
                backend.start_classify_index(labels_, templates_, bool(write_))
            except Exception as e:  # noqa: BLE001
                return status_html(error_text(e), True), gr.skip()
            return status_html("classifying the whole index in the background"), gr.Timer(active=True)

        cls_index_btn.click(start_classify_index, [labels, templates, write_back], [cls_status, timer],
                            api_name="classify_index")

        def tick():
            st = backend.jobs.status
            h = job_html(st)
            if st.state == "running":
                return h, h, gr.skip(), gr.skip(), gr.skip()
            info, sk = index_view()
            return h, h, info, sk, gr.Timer(active=False)

        timer.tick(tick, None, [idx_job, cls_job, info_box, skipped_box, timer], api_name=False,
                   show_progress="hidden")
        demo.load(lambda: gr.Timer(active=backend.jobs.busy()), None, [timer], api_name=False)
    return demo


# ------------------------------------------------------------------------------------------------
# the server
# ------------------------------------------------------------------------------------------------
def create_app(backend: Backend, auth: tuple[str, str] | None = None):
    """FastAPI app: imgrag's media routes plus the Gradio UI mounted at ``/``."""
    import gradio as gr
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, PlainTextResponse, Response
    from starlette.routing import Mount

    gr.set_static_paths([str(backend.thumbs.root)])
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    holder: dict[str, Any] = {}

    def logged_in(request: Request) -> bool:
        g = holder.get("gradio")
        if g is None or (not g.auth and g.auth_dependency is None):
            return True
        token = (request.cookies.get(f"access-token-{g.cookie_id}")
                 or request.cookies.get(f"access-token-unsecure-{g.cookie_id}"))
        return token is not None and g.tokens.get(token) is not None

    def refused(code: int = 404, text: str = "not an indexed image") -> Response:
        return PlainTextResponse(text, status_code=code, headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/imgrag/image")
    def original(request: Request, id: str = ""):  # noqa: A002 - the query parameter's name
        if not logged_in(request):
            return refused(401, "login required")
        try:
            data, mime, name = backend.original(id)
        except NotServable:
            return refused()
        except ImgragError as e:
            return refused(503, str(e))
        return Response(data, media_type=mime, headers={
            "Content-Disposition": f"inline; filename*=UTF-8''{quote(name, safe='')}",
            "X-Content-Type-Options": "nosniff", "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "private, max-age=60"})

    @app.get("/imgrag/thumb")
    def thumb(request: Request, id: str = ""):  # noqa: A002
        if not logged_in(request):
            return refused(401, "login required")
        try:
            p = backend.thumbnail(id)
        except NotServable:
            return refused()
        except ImgragError as e:
            return refused(503, str(e))
        return FileResponse(p, media_type="image/jpeg", headers={"X-Content-Type-Options": "nosniff",
                                                                 "Cache-Control": "private, max-age=3600"})

    @app.get("/imgrag/health")
    def health():
        return {"ok": True, "index": str(backend.root), "job": backend.jobs.status.to_dict()}

    demo = build_blocks(backend)
    demo.queue(default_concurrency_limit=4, max_size=256)
    theme = gr.themes.Default(primary_hue="blue",
                              font=["system-ui", "-apple-system", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                              font_mono=["ui-monospace", "Menlo", "Consolas", "monospace"])
    import inspect

    opts = dict(auth=auth, footer_links=["api", "settings"], run_history=False,
                max_file_size=backend.config.max_upload_bytes, theme=theme, css=CSS, allowed_paths=[],
                show_error=True, ssr_mode=False, mcp_server=False)
    accepted = inspect.signature(gr.mount_gradio_app).parameters
    app = gr.mount_gradio_app(app, demo, path="/", **{k: v for k, v in opts.items() if k in accepted})
    for r in app.routes:
        if isinstance(r, Mount):
            holder["gradio"] = r.app
    return app


def parse_auth(spec: str | None) -> tuple[str, str] | None:
    if not spec:
        return None
    user, sep, pw = spec.partition(":")
    if not sep or not user or not pw:
        raise ImgragError("--auth must be USER:PASSWORD (both non-empty)")
    return user, pw


def _check_port(host: str, port: int) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ImgragError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --port") from None


def serve(args) -> int:
    """``imgrag serve``: start the UI on ``--host``/``--port`` (127.0.0.1:7860 by default)."""
    import uvicorn

    from imgrag.retrieval.index import default_index_dir

    host = args.host or "127.0.0.1"
    port = int(args.port)
    if not 0 < port < 65536:
        raise ImgragError(f"--port must be between 1 and 65535, got {port}")
    auth = parse_auth(getattr(args, "auth", None))
    if host not in LOCAL_HOSTS:
        print(f"imgrag: warning: listening on {host} makes the UI reachable from other machines: anyone who can "
              "connect can search and view your indexed images and index folders on this machine"
              + ("" if auth else "; protect it with --auth USER:PASSWORD"), file=sys.stderr)
    root = args.index or default_index_dir()  # a folder or an object-storage URI
    cfg = UIConfig(index_root=root, device=args.device, precision=args.precision,
                   generator=getattr(args, "generator", None),
                   max_upload_bytes=int(getattr(args, "max_upload_mb", 25) * 1024 * 1024),
                   max_upload_pixels=int(getattr(args, "max_upload_mp", 50) * 1_000_000))
    backend = Backend(cfg)
    if not backend.has_index():
        print(f"imgrag: no index at {backend.root} yet; add a folder in the Index tab (new indexes use the "
              "offline lite model) or run `imgrag index PATH` first", file=sys.stderr)
    _check_port(host, port)
    app = create_app(backend, auth=auth)
    threading.Thread(target=backend.warm_up, name="imgrag-warmup", daemon=True).start()
    shown = f"[{host}]" if ":" in host else host
    print(f"imgrag UI: http://{shown}:{port}  (index {backend.root}; Ctrl-C to stop)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning" if not getattr(args, "verbose", False) else "info",
                access_log=bool(getattr(args, "verbose", False)))
    return 0
