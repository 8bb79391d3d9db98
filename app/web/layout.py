"""The web UI's Gradio Blocks: one function per tab, plus the background-job wiring they share.

Tabs: Search, Search by image, Classify, Ask, Index. The work behind them is :class:`~.backend.Backend`'s
(plain Python, tested directly); this module only lays it out and turns errors into readable messages
(:func:`~.html.error_text`). Components are created, and events registered, in the page's order, so the
page and its API list read top to bottom.
"""

# no `from __future__ import annotations` here: Gradio reads the handlers' annotations at runtime (an
# `evt: gr.SelectData` parameter is how it knows to pass the selection event).

import os
from dataclasses import dataclass
from typing import Any

from imgrag.app.web.backend import Backend, display_name
from imgrag.app.web.html import (detail_html, error_text, esc, gallery_value,
                                 info_html, job_html, matches_html, skipped_html, status_html)
from imgrag.app.web.viewer import cut, data_html
from imgrag.retrieval.errors import ImgragError


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


@dataclass
class _Shared:
    """State and components more than one tab uses."""

    backend: Backend
    upload: Any  # the UploadImage component class
    max_k: int
    results: Any  # gr.State: the last results as dicts (Search, Search by image → Classify)
    selected: Any  # hidden gr.Textbox "selected-id": the item last opened in the viewer (page and server agree)
    timer: Any  # gr.Timer: polls a running background job


@dataclass
class _ClassifyParts:
    labels: Any
    templates: Any
    write_back: Any
    index_btn: Any
    status: Any
    job: Any


@dataclass
class _IndexParts:
    info: Any
    skipped: Any
    folder: Any
    index_btn: Any
    status: Any
    job: Any
    tune_source: Any = None  # imgrag tune from the UI: a folder per class or a captions file
    tune_loss: Any = None
    tune_btn: Any = None


def build_blocks(backend: Backend):
    import gradio as gr

    from imgrag.retrieval.queries.classify import load_templates

    with gr.Blocks(title="imgrag", analytics_enabled=False) as demo:
        gr.HTML("<h2 style='margin:0'>imgrag</h2><div>Search, classify and ask about your images — "
                f"index <code>{esc(backend.root)}</code></div>")
        sh = _Shared(backend=backend, upload=_upload_component(), max_k=min(100, backend.config.max_k),
                     results=gr.State([]), timer=gr.Timer(1.0, active=False),
                     selected=gr.Textbox("", visible="hidden", elem_id="selected-id", label="selected"))
        welcome = _search_tab(sh)
        _image_tab(sh)
        cls = _classify_tab(sh, "\n".join(load_templates("simple")))
        _ask_tab(sh)
        from imgrag.app.web.duplicates_tab import build_duplicates_tab  # groups of copies, nothing deleted

        build_duplicates_tab(sh)
        from imgrag.app.web.map_tab import map_tab  # 2-D map of the collection, colour, zoom, box select

        map_tab(backend)
        idx = _index_tab(sh, demo)
        _job_wiring(sh, demo, cls, idx)
        from imgrag.app.web.collection import first_screen

        demo.load(lambda: first_screen(backend), None, [welcome], api_name=False)
    return demo


def _search_tab(sh: _Shared):
    """The Search tab; returns its first-screen block (filled on page load)."""
    import gradio as gr

    backend = sh.backend
    with gr.Tab("Search", id="search"):
        with gr.Row():
            q = gr.Textbox(label="Search", placeholder="a dog on a beach", scale=5, elem_id="search-query",
                           lines=1, max_lines=1)
            search_btn = gr.Button("Search", variant="primary", scale=1, elem_id="search-button")
        with gr.Accordion("Filters and options", open=False):
            with gr.Row():
                k = gr.Slider(1, sh.max_k, value=12, step=1, label="Results (k)", elem_id="search-k")
                cutoff = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Relevance cutoff",
                                   info="hide results whose shown score is below this (0 = show all)",
                                   elem_id="search-cutoff")
                sort_date = gr.Checkbox(False, label="Sort by capture date (after the cutoff)",
                                        elem_id="search-sort-date")
            with gr.Row():
                glob = gr.Textbox(label="Folder or path glob", placeholder="*/Holidays/*  or  */2019/*.png",
                                  elem_id="search-glob")
                after = gr.Textbox(label="Taken on or after", placeholder="YYYY-MM-DD", elem_id="search-after")
                before = gr.Textbox(label="Taken on or before", placeholder="YYYY-MM-DD", elem_id="search-before")
            with gr.Row():
                label = gr.Textbox(label="Label", placeholder="a label written by Classify", elem_id="search-label")
                kind = gr.Radio([("All", "all"), ("Photos", "photo"), ("Document pages", "page")], value="all",
                                label="Type", elem_id="search-kind")
        search_status = gr.HTML(status_html(), elem_id="search-status")
        welcome = gr.HTML("", elem_id="search-welcome")
        gallery = gr.Gallery(label="Results", columns=4, height="auto", object_fit="contain",
                             allow_preview=False, elem_id="search-gallery", elem_classes=["imgrag-viewable"])
        data = gr.HTML(data_html("search-gallery", []), elem_classes=["imgrag-datablock"], container=False)
        matches = gr.HTML("", elem_id="search-matches")
        with gr.Row():
            detail = gr.HTML(detail_html(None), elem_id="search-detail")
            more_btn = gr.Button("More like this", elem_id="more-like-this", scale=0)

    def run_search(query, k_, cut_, sort_, glob_, after_, before_, label_, kind_):
        # every answer clears the selection (the hidden textbox the page and server share) and the viewer's data
        try:
            items = backend.search_text(query, int(k_), glob_, after_, before_, cut_ if cut_ > 0 else None, sort_,
                                        label_, kind_)
        except Exception as e:  # noqa: BLE001
            return ([], [], "", detail_html(None), status_html(error_text(e), True), "",
                    data_html("search-gallery", []), gr.skip())
        msg = (f"{len(items)} result(s) for {cut(query.strip())!r}" if items
               else "no results (try a lower cutoff or fewer filters)")
        dicts = [it.to_dict() for it in items]
        return (gallery_value(items), dicts, "", detail_html(None), status_html(msg), matches_html(dicts),
                data_html("search-gallery", dicts), "")

    search_outputs = [gallery, sh.results, sh.selected, detail, search_status, matches, data, welcome]
    search_inputs = [q, k, cutoff, sort_date, glob, after, before, label, kind]
    search_btn.click(run_search, search_inputs, search_outputs, api_name="search")
    q.submit(run_search, search_inputs, search_outputs, api_name=False)

    def on_select(sel, results):
        """The selection changed (the viewer opened an item, or an answer cleared it): its details. An item
        opened outside the results (a sample, a citation, a duplicate) is shown from its stored row, so the
        details always name what "More like this" would use."""
        hit = next((r for r in results or [] if r.get("id") == sel), None) if sel else None
        if sel and hit is None:
            try:
                row = backend.row(sel)
                hit = dict(row, name=display_name(row["path"]), score=None)
            except Exception:  # noqa: BLE001 - not an indexed item (any more): nothing selected
                hit = None
        return detail_html(hit) if hit else detail_html(None)

    sh.selected.change(on_select, [sh.selected, sh.results], [detail], api_name=False, show_progress="hidden")

    def run_more(sel, k_, cut_, sort_, glob_, after_, before_, label_, kind_):
        try:
            if not sel:
                raise ImgragError("open a result first (click a thumbnail), then 'More like this'")
            items = backend.more_like(sel, int(k_), glob_, after_, before_, cut_ if cut_ > 0 else None, sort_,
                                      label_, kind_)
        except Exception as e:  # noqa: BLE001
            return (gr.skip(), gr.skip(), gr.skip(), gr.skip(), status_html(error_text(e), True), gr.skip(),
                    gr.skip(), gr.skip())
        dicts = [it.to_dict() for it in items]
        return (gallery_value(items), dicts, "", detail_html(None),
                status_html(f"{len(items)} image(s) like the selected one"), matches_html(dicts),
                data_html("search-gallery", dicts), "")

    # the viewer's "More like this" hands its item over directly (no race with the hidden textbox's update)
    more_btn.click(run_more, [sh.selected, k, cutoff, sort_date, glob, after, before, label, kind], search_outputs,
                   api_name="more_like_this",
                   js="(...a) => { const p = window.imgragViewer && window.imgragViewer.takePending();"
                      " if (p) a[0] = p; return a; }")
    return welcome


def _image_tab(sh: _Shared) -> None:
    import gradio as gr

    with gr.Tab("Search by image", id="image"):
        with gr.Row():
            with gr.Column(scale=1):
                qimg = sh.upload(type="filepath", sources=["upload", "clipboard"], label="Query image",
                                 elem_id="image-query", height=280)
                k2 = gr.Slider(1, sh.max_k, value=12, step=1, label="Results (k)")
                img_btn = gr.Button("Find similar images", variant="primary", elem_id="image-button")
            with gr.Column(scale=3):
                img_status = gr.HTML(status_html(), elem_id="image-status")
                img_gallery = gr.Gallery(label="Nearest images", columns=4, height="auto", object_fit="contain",
                                         allow_preview=False, elem_id="image-gallery", elem_classes=["imgrag-viewable"])
                img_data = gr.HTML(data_html("image-gallery", []), elem_classes=["imgrag-datablock"], container=False)

    def run_image(path, k_):
        try:
            items = sh.backend.search_image(path, int(k_))
        except Exception as e:  # noqa: BLE001
            return [], [], status_html(error_text(e), True), data_html("image-gallery", []), ""
        dicts = [it.to_dict() for it in items]
        return (gallery_value(items), dicts, status_html(f"{len(items)} nearest image(s)"),
                data_html("image-gallery", dicts), "")

    img_btn.click(run_image, [qimg, k2], [img_gallery, sh.results, img_status, img_data, sh.selected],
                  api_name="search_image")


def _classify_tab(sh: _Shared, default_templates: str) -> _ClassifyParts:
    import gradio as gr

    backend = sh.backend
    with gr.Tab("Classify", id="classify"):
        with gr.Row():
            with gr.Column(scale=2):
                labels = gr.Textbox(label="Labels (one per line)", lines=6, value="cat\ndog\nfood\nvehicle\nbuilding",
                                    elem_id="classify-labels")
                templates = gr.Textbox(label="Prompt templates ({} is replaced by the label)", lines=6,
                                       value=default_templates, elem_id="classify-templates")
            with gr.Column(scale=2):
                cimg = sh.upload(type="filepath", sources=["upload", "clipboard"], label="Image to classify",
                                 elem_id="classify-image", height=240)
                cls_btn = gr.Button("Classify image", variant="primary", elem_id="classify-button")
                probs = gr.Label(label="Label probabilities", num_top_classes=10, elem_id="classify-probs")
        cls_status = gr.HTML(status_html(), elem_id="classify-status")
        with gr.Row():
            cls_results_btn = gr.Button("Classify the current search results", elem_id="classify-results")
            cls_index_btn = gr.Button("Preview labels for the whole index (background)", elem_id="classify-index")
        cls_table = gr.HTML("", elem_id="classify-table")
        cls_job = gr.HTML(job_html(backend.jobs.status), elem_id="classify-job")
        from imgrag.app.web.classify_tab import write_section  # preview first, then a confirmed write

        write_section(backend, labels, templates, cls_job, cls_status, sh.timer)

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
        from imgrag.app.web.classify_tab import results_html  # each row's thumbnail opens the viewer

        return results_html(rows, results or []), status_html(f"classified {len(rows)} search result(s)")

    cls_results_btn.click(run_classify_results, [sh.results, labels, templates], [cls_table, cls_status],
                          api_name="classify_results")
    return _ClassifyParts(labels=labels, templates=templates, write_back=None, index_btn=cls_index_btn,
                          status=cls_status, job=cls_job)


def _ask_tab(sh: _Shared) -> None:
    from imgrag.app.web.ask_tab import build_ask_tab  # streamed answers (app/web/ask_tab.py)

    build_ask_tab(sh)


def _index_view(backend: Backend) -> tuple[str, str]:
    try:
        info = backend.info()
        sk = backend.skipped()
        return info_html(info), skipped_html(sk, info.get("skipped"))
    except Exception as e:  # noqa: BLE001
        return status_html(error_text(e), True), ""


def _index_tab(sh: _Shared, demo) -> _IndexParts:
    import gradio as gr

    backend = sh.backend
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
                with gr.Accordion("Tune: adapt the model to your labels or captions", open=False):
                    tune_source = gr.Textbox(
                        label="A folder per class (folder name = class text), or a captions file (path<TAB>caption)",
                        placeholder="/home/me/Pictures/by-subject", elem_id="tune-source")
                    with gr.Row():
                        tune_loss = gr.Radio(["siglip", "clip"], value="siglip", label="Loss", scale=2,
                                             elem_id="tune-loss")
                        tune_btn = gr.Button("Tune adapter (background)", scale=1, elem_id="tune-button")
        skipped_box = gr.HTML("", elem_id="index-skipped")
        from imgrag.app.web.index_tab import folders_section  # indexed folders: list, remove (web/index_tab.py)

        folders_section(backend, demo, idx_job)

    def index_view():
        return _index_view(backend)

    refresh_btn.click(index_view, None, [info_box, skipped_box], api_name="index_info")
    demo.load(index_view, None, [info_box, skipped_box], api_name=False)
    return _IndexParts(info=info_box, skipped=skipped_box, folder=folder, index_btn=index_btn, status=idx_status,
                       job=idx_job, tune_source=tune_source, tune_loss=tune_loss, tune_btn=tune_btn)


def _job_wiring(sh: _Shared, demo, cls: _ClassifyParts, idx: _IndexParts) -> None:
    """The two background jobs (index a folder, classify the whole index) and the timer that shows their
    progress in both tabs while one runs."""
    import gradio as gr

    backend = sh.backend

    def start_index(folder_):
        try:
            from imgrag.app.web.folders import add_folder  # remembered for the folder list

            add_folder(backend, folder_)
        except Exception as e:  # noqa: BLE001
            return status_html(error_text(e), True), gr.skip()
        return status_html("indexing started; you can keep searching meanwhile"), gr.Timer(active=True)

    idx.index_btn.click(start_index, [idx.folder], [idx.status, sh.timer], api_name="index_folder")

    def start_tune(source_, loss_):
        try:
            backend.start_tune(source_, loss_ or "siglip")
        except Exception as e:  # noqa: BLE001
            return status_html(error_text(e), True), gr.skip()
        return status_html("tuning an adapter in the background (towers frozen: stored vectors only)"), \
            gr.Timer(active=True)

    idx.tune_btn.click(start_tune, [idx.tune_source, idx.tune_loss], [idx.status, sh.timer], api_name="tune")

    def start_classify_index(labels_, templates_):
        from imgrag.app.web.classify_tab import start_preview  # nothing is written until "Write these labels"

        try:
            start_preview(backend, labels_, templates_)
        except Exception as e:  # noqa: BLE001
            return status_html(error_text(e), True), gr.skip()
        return status_html("previewing labels over the whole index (nothing is written yet)"), gr.Timer(active=True)

    cls.index_btn.click(start_classify_index, [cls.labels, cls.templates], [cls.status, sh.timer],
                        api_name="classify_index")

    def tick():
        st = backend.jobs.status
        h = job_html(st)
        if st.state == "running":
            return h, h, gr.skip(), gr.skip(), gr.skip()
        info, sk = _index_view(backend)
        return h, h, info, sk, gr.Timer(active=False)

    sh.timer.tick(tick, None, [idx.job, cls.job, idx.info, idx.skipped, sh.timer], api_name=False,
                  show_progress="hidden")
    demo.load(lambda: gr.Timer(active=backend.jobs.busy()), None, [sh.timer], api_name=False)
