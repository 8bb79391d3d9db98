"""The Index tab's folder list: indexed folders with item counts, and removing one after a confirmation
(its rows pruned under the writer lock, :func:`~.folders.remove_folder`). Adding a folder is the tab's
"Index folder" button (:func:`~.folders.add_folder`); the list refreshes when a job ends."""

# no `from __future__ import annotations`: Gradio reads handler annotations at runtime.

from imgrag.app.web.folders import folder_counts, remove_folder, resolve_listed
from imgrag.app.web.html import error_text, esc, status_html
from imgrag.retrieval.paths import display


def folders_html(rows: list[tuple[str, int]]) -> str:
    if not rows:
        return "<div id='imgrag-folders-empty'>No folders indexed yet: add one above.</div>"
    body = "".join(f"<tr><td><code>{esc(display(p))}</code></td><td>{n}</td></tr>" for p, n in rows)
    return f"<table class='imgrag-table'><tr><th>indexed folder</th><th>items</th></tr>{body}</table>"


def folders_section(backend, demo, job) -> None:
    """The list, a picker and a two-step Remove, inside the Index tab; ``job`` is the tab's job line."""
    import gradio as gr

    gr.Markdown("### Indexed folders")
    table = gr.HTML("", elem_id="index-folders")
    with gr.Row():
        pick = gr.Dropdown([], label="Folder to remove from the index (files on disk stay)", scale=4,
                           elem_id="index-remove-choice", allow_custom_value=False)
        remove_btn = gr.Button("Remove folder…", scale=1, elem_id="index-remove")
    with gr.Row(visible=False, elem_id="index-confirm-row") as confirm_row:
        confirm_text = gr.HTML("", elem_id="index-confirm-text")
        yes_btn = gr.Button("Yes, remove", variant="stop", scale=0, elem_id="index-remove-confirm")
        no_btn = gr.Button("Cancel", scale=0, elem_id="index-remove-cancel")
    status = gr.HTML(status_html(), elem_id="index-folders-status")

    def view():
        try:
            rows = folder_counts(backend)
        except Exception as e:  # noqa: BLE001 - no index yet or unreadable: say so, keep the tab usable
            return status_html(error_text(e), True), gr.Dropdown(choices=[], value=None)
        shown = [display(p) for p, _ in rows]
        return folders_html(rows), gr.Dropdown(choices=shown, value=None)

    def ask_confirm(shown):
        try:
            folder = resolve_listed(backend, shown or "")
            n = dict(folder_counts(backend)).get(folder, 0)
        except Exception as e:  # noqa: BLE001
            return gr.Row(visible=False), gr.skip(), status_html(error_text(e), True)
        return (gr.Row(visible=True), f"<div>Remove <b>{n}</b> item(s) under <code>{esc(display(folder))}</code> "
                                      "from the index?</div>", status_html(""))

    def do_remove(shown):
        try:
            folder = resolve_listed(backend, shown or "")
            n = remove_folder(backend, folder)
        except Exception as e:  # noqa: BLE001
            return (gr.Row(visible=False), status_html(error_text(e), True)) + view()
        return (gr.Row(visible=False), status_html(f"removed {n} item(s) under {display(folder)}")) + view()

    remove_btn.click(ask_confirm, [pick], [confirm_row, confirm_text, status], api_name=False)
    no_btn.click(lambda: (gr.Row(visible=False), status_html("")), None, [confirm_row, status], api_name=False)
    yes_btn.click(do_remove, [pick], [confirm_row, status, table, pick], api_name="remove_folder",
                  concurrency_limit=1, concurrency_id="index-write")
    demo.load(view, None, [table, pick], api_name=False)

    def after_job():
        if backend.jobs.status.state == "running":
            return gr.skip(), gr.skip()
        return view()

    job.change(after_job, None, [table, pick], api_name=False, show_progress="hidden")
