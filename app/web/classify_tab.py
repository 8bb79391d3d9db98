"""Whole-index classification in the Classify tab: a preview first (counts per label, a few examples, nothing
written), then writing the labels as a separate action with a confirmation. Written labels are what the
Search tab's Label filter (and the API's ``label``) select."""

# no `from __future__ import annotations`: Gradio reads handler annotations at runtime.

import os
from typing import Any

from imgrag.app.web.html import error_text, esc, status_html
from imgrag.app.web.viewer import cut, data_html

EXAMPLES = 4  # example images shown per label


def start_preview(backend, labels: str, templates: str):
    """Classify every stored vector in the background without writing; the job's ``detail`` holds
    ``counts`` (label → items) and ``examples`` (label → ids of the most confident items)."""
    from imgrag.retrieval.queries.classify import classify_index

    clf = backend.classifier(labels, templates)  # bad labels/templates fail now, not in the job
    index = backend.index()

    def job(st) -> str:
        st.total = index.store.count()
        counts: dict[str, int] = {}
        best: dict[str, list[tuple[float, str]]] = {}

        def prog(done: int, total: int) -> None:
            st.done, st.total = done, total

        for item_id, _path, p in classify_index(index, clf, write=False, progress=prog):
            lab = str(p.label) if p.label is not None else "(none)"
            counts[lab] = counts.get(lab, 0) + 1
            ex = best.setdefault(lab, [])
            ex.append((float(p.score), item_id))
            if len(ex) > 4 * EXAMPLES:  # keep the list short: the best few survive
                ex.sort(reverse=True)
                del ex[EXAMPLES:]
        st.detail = {"preview": True, "labels": list(clf.labels), "counts": counts,
                     "examples": {k: [i for _, i in sorted(v, reverse=True)[:EXAMPLES]] for k, v in best.items()}}
        return f"preview of {st.done} items ready; nothing written yet"

    return backend.jobs.start("classify", f"preview {len(clf.labels)} labels over the index", job)


def _thumb_button(i: int, item: dict[str, Any]) -> str:
    """A thumbnail that opens the viewer at item ``i`` of the enclosing ``data-imgrag-source``."""
    from urllib.parse import quote

    from imgrag.retrieval.paths import display

    name = item.get("name") or display(os.path.basename(item["path"]))
    return (f"<button type='button' class='imgrag-thumb-btn' data-imgrag-i='{i}' title='{esc(name)}'>"
            f"<img src='/imgrag/thumb?id={esc(quote(item['id'], safe=''))}' alt='{esc(name)}' loading='lazy'></button>")


def example_rows(backend, detail: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stored rows of the preview's example images (for the viewer); ones gone since are left out."""
    from imgrag.app.web.files import NotServable

    out: dict[str, dict[str, Any]] = {}
    for ids in (detail.get("examples") or {}).values():
        for i in ids:
            try:
                out[i] = backend.row(i)
            except NotServable:
                pass
    return out


def preview_html(detail: dict[str, Any], rows: dict[str, dict[str, Any]] | None = None) -> str:
    """Counts per label (most first) with a few example thumbnails each; with ``rows`` (id → stored row)
    each example opens the viewer, stepping through all the examples."""
    counts = detail.get("counts") or {}
    body, items = [], []
    for lab, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        imgs = ""
        for i in (detail.get("examples") or {}).get(lab, []):
            if rows is not None and i not in rows:
                continue
            item = (rows or {}).get(i) or {"id": i, "path": i}
            imgs += _thumb_button(len(items), item)
            items.append(item)
        body.append(f"<tr><td><b>{esc(cut(lab, 60))}</b></td><td>{n}</td><td>{imgs}</td></tr>")
    return ("<div id='classify-preview-ready'>Preview — nothing is written until you press "
            "<i>Write these labels</i>. Click an example to open it.</div>"
            "<div data-imgrag-source='classify-examples'><table class='imgrag-table'><tr><th>label</th><th>items</th>"
            f"<th>examples</th></tr>{''.join(body)}</table>{data_html('classify-examples', items)}</div>")


def results_html(rows: list[dict[str, Any]], items: list[dict[str, Any]]) -> str:
    """The top labels of classified search results (``Backend.classify_ids`` rows), each with its thumbnail,
    which opens the viewer; ``items`` are the search results (dicts) the rows came from."""
    by_id = {it["id"]: it for it in items}
    shown = [by_id.get(r["id"]) or {"id": r["id"], "path": r["id"], "name": r["name"]} for r in rows]
    body = "".join(
        f"<tr><td>{_thumb_button(i, it)}</td><td>{esc(r['name'])}</td><td><b>{esc(r['label'] or '(none)')}</b> "
        f"{r['score']:.2f}</td><td>{esc(', '.join(f'{lab} {p:.2f}' for lab, p in r['top']))}</td></tr>"
        for i, (r, it) in enumerate(zip(rows, shown)))
    return (f"<div data-imgrag-source='classify-results'><table class='imgrag-table'><tr><th></th><th>file</th>"
            f"<th>label</th><th>top 3</th></tr>{body}</table>{data_html('classify-results', shown)}</div>")


def write_section(backend, labels, templates, job, status, timer) -> None:
    """The preview table and the explicit, confirmed write-back, under the tab's job line ``job``."""
    import gradio as gr

    preview = gr.HTML("", elem_id="classify-preview")
    with gr.Row():
        write_btn = gr.Button("Write these labels into the index…", visible=False, elem_id="classify-write")
    with gr.Row(visible=False, elem_id="classify-confirm-row") as confirm_row:
        confirm_text = gr.HTML("", elem_id="classify-confirm-text")
        yes_btn = gr.Button("Yes, write labels", variant="stop", scale=0, elem_id="classify-write-confirm")
        no_btn = gr.Button("Cancel", scale=0, elem_id="classify-write-cancel")

    def after_job():
        st = backend.jobs.status
        if st.state == "running":
            return gr.skip(), gr.skip(), gr.skip()
        if st.kind == "classify" and st.state == "done" and st.detail.get("preview"):
            return preview_html(st.detail, example_rows(backend, st.detail)), gr.Button(visible=True), status_html("")
        if st.kind == "classify" and st.state == "done":
            return ("<div id='classify-written'>Labels written. Filter on them with <i>Label</i> under "
                    "Search › Filters and options.</div>"), gr.Button(visible=False), status_html("")
        return gr.skip(), gr.skip(), status_html("") if st.kind == "classify" else gr.skip()

    # the stale "classifying…" line goes when the job ends
    job.change(after_job, None, [preview, write_btn, status], api_name=False, show_progress="hidden")

    def ask_confirm():
        st = backend.jobs.status
        n = st.total if st.detail.get("preview") else 0
        return gr.Row(visible=True), (f"<div>Write the top label of all {n} items into the index? It replaces "
                                      "labels written before (files are not changed).</div>")

    write_btn.click(ask_confirm, None, [confirm_row, confirm_text], api_name=False)
    no_btn.click(lambda: gr.Row(visible=False), None, [confirm_row], api_name=False)

    def do_write(labels_, templates_):
        try:
            backend.start_classify_index(labels_, templates_, write=True)
        except Exception as e:  # noqa: BLE001
            return gr.Row(visible=False), status_html(error_text(e), True), gr.skip(), gr.skip()
        return (gr.Row(visible=False), status_html("writing labels in the background"), gr.Button(visible=False),
                gr.Timer(active=True))

    yes_btn.click(do_write, [labels, templates], [confirm_row, status, write_btn, timer], api_name="write_labels")
