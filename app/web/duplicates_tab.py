"""The Duplicates tab: ``imgrag duplicates`` in the web UI, groups of near-duplicate images side by side.

A "Find duplicates" button runs :func:`~imgrag.retrieval.queries.duplicates.find_duplicates` in a background
thread (it decodes every candidate's file for the thumbnail check: tens of seconds on a few thousand images),
polled by the tab's own timer. Each group is a row of thumbnails, the suggested keeper first with a badge,
each with its path, resolution, file size and date; clicking one opens the viewer (``static/viewer.js``) on
that group. Nothing is deleted: the groups are a suggestion.

The search is read-only, so it has its own :class:`~.jobs.JobRunner` rather than the backend's, which runs
one *writing* job at a time: finding duplicates neither waits for indexing nor blocks it. The HTML pieces
are pure functions (every file name escaped), tested directly in tests/test_ui_duplicates.py.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Sequence
from urllib.parse import quote

from imgrag.app.web.html import error_text, esc, status_html
from imgrag.app.web.jobs import JobRunner, JobStatus, format_eta
from imgrag.app.web.viewer import view_item
from imgrag.retrieval.paths import display

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.app.web.backend import Backend
    from imgrag.retrieval.queries.duplicates import DuplicateReport, Member

#: groups drawn at most (largest first); the CLI's ``--json`` lists them all
MAX_GROUPS_SHOWN = 200

NOTHING_DELETED = ("Nothing is deleted: the groups are a suggestion, the keeper is the largest, then oldest "
                   "image. Remove files yourself if you wish.")

CSS = """
.imgrag-dups { display: flex; flex-direction: column; gap: 14px; }
.imgrag-dups-summary { font-weight: 600; }
.imgrag-dups-empty { padding: 14px; border: 1px dashed var(--border-color-primary); border-radius: 8px; font-size: 1.1em; }
.imgrag-dup-group { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px; }
.imgrag-dup-head { color: var(--body-text-color-subdued); font-size: .9em; margin-bottom: 6px; }
.imgrag-dup-row { display: flex; gap: 10px; overflow-x: auto; align-items: flex-start; padding-bottom: 4px; }
.imgrag-dup-card { flex: 0 0 190px; font-size: .82em; line-height: 1.35; }
.imgrag-dup-card button { display: block; width: 190px; height: 160px; padding: 0; border: 1px solid var(--border-color-primary);
  border-radius: 6px; background: #f6f7f9; cursor: zoom-in; overflow: hidden; }
.imgrag-dup-card img { width: 100%; height: 100%; object-fit: contain; }
.imgrag-dup-card.keeper button { border: 3px solid #16a34a; }
.imgrag-dup-path { overflow-wrap: anywhere; margin-top: 4px; }
.imgrag-dup-facts { color: var(--body-text-color-subdued); }
.imgrag-dup-badge { display: inline-block; padding: 0 7px; border-radius: 999px; font-size: .85em; font-weight: 600;
  margin: 4px 4px 0 0; background: #e5e7eb; color: #111827; }
.imgrag-dup-badge.keeper { background: #16a34a; color: #fff; }
"""


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return "?"  # pragma: no cover


def _date(m: "Member") -> str:
    """Capture date where known, else the file's modification date (said as such)."""
    if m.taken_at is not None:
        return "taken " + str(m.taken_at)[:16].replace("T", " ")
    if m.mtime_ns:
        return "modified " + datetime.fromtimestamp(m.mtime_ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d")
    return ""


def group_rows(groups: Sequence[Sequence["Member"]]) -> list[list[dict[str, Any]]]:
    """One list of plain dicts per group, the keeper first (then as given), raw strings (escaped later).

    An image's id is its path (document pages, whose ids differ, are never grouped), which the thumbnail
    and viewer routes take.
    """
    out: list[list[dict[str, Any]]] = []
    for g in groups:
        ordered = sorted(g, key=lambda m: not m.keeper)  # stable: the others keep their order
        rows = []
        for m in ordered:
            res = f"{m.width}×{m.height}" if m.width and m.height else "?×?"
            tag = "keeper" if m.keeper else ("same file" if m.same_file else f"similarity {m.score:.3f}")
            rows.append({"id": m.path, "path": m.path, "display": display(m.path),
                         "name": display(os.path.basename(m.path)), "resolution": res, "size": human_size(m.size),
                         "date": _date(m), "keeper": m.keeper, "tag": tag, "width": m.width, "height": m.height,
                         "taken_at": m.taken_at, "score": m.score})
        out.append(rows)
    return out


def _viewer_items(rows: list[dict[str, Any]]) -> str:
    """The viewer's data for one group (as :func:`~.viewer.data_html`, with duplicate-specific facts)."""
    items = []
    for r in rows:
        it = view_item({k: r[k] for k in ("id", "path", "width", "height", "taken_at")})
        it["meta"] = [("role", r["tag"]), ("path", r["display"]), ("resolution", f"{r['resolution']} px"),
                      ("file size", r["size"])] + ([("date", r["date"])] if r["date"] else [])
        items.append(it)
    return json.dumps(items, ensure_ascii=True)


def groups_html(groups: list[list[dict[str, Any]]], items: int, limit: int = MAX_GROUPS_SHOWN) -> str:
    """The result: a summary line, then one row of thumbnails per group (or a clear "no duplicates found")."""
    if not groups:
        return (f"<div class='imgrag-dups'><div class='imgrag-dups-empty' id='imgrag-dups-none'>No duplicates found "
                f"among {esc(items)} images.</div></div>")
    extra = sum(len(g) - 1 for g in groups)
    summary = (f"{len(groups)} group(s) of duplicates, {extra} image(s) besides the keepers, among {items} images. "
               "Nothing was deleted.")
    if len(groups) > limit:
        summary += f" Showing the {limit} largest groups; `imgrag duplicates --json` lists all."
    parts = [f"<div class='imgrag-dups'><div class='imgrag-dups-summary'>{esc(summary)}</div>"]
    for n, rows in enumerate(groups[:limit], 1):
        src = f"dups-{n}"
        cards = []
        for i, r in enumerate(rows):
            badge = (f"<span class='imgrag-dup-badge {'keeper' if r['keeper'] else ''}'>"
                     f"{esc('keeper' if r['keeper'] else r['tag'])}</span>")
            thumb = f"/imgrag/thumb?id={quote(r['id'], safe='')}"
            cards.append(
                f"<div class='imgrag-dup-card{' keeper' if r['keeper'] else ''}'>"
                f"<button type='button' data-imgrag-i='{i}' title='{esc(r['display'])}'>"
                f"<img src='{esc(thumb)}' alt='{esc(r['name'])}' loading='lazy'></button>{badge}"
                f"<div class='imgrag-dup-path'>{esc(r['display'])}</div>"
                f"<div class='imgrag-dup-facts'>{esc(r['resolution'])} px · {esc(r['size'])}"
                f"{' · ' + esc(r['date']) if r['date'] else ''}</div></div>")
        parts.append(f"<div class='imgrag-dup-group' data-imgrag-source='{src}'>"
                     f"<div class='imgrag-dup-head'>group {n} · {len(rows)} images</div>"
                     f"<div class='imgrag-dup-row'>{''.join(cards)}</div>"
                     f"<div class='imgrag-data' data-for='{src}' data-items='{esc(_viewer_items(rows))}' hidden></div>"
                     "</div>")
    return "".join(parts) + "</div>"


class DuplicateFinder:
    """Runs the search in the background and keeps the last report (one per server, like the index)."""

    def __init__(self, backend: "Backend") -> None:
        self.backend = backend
        self.jobs = JobRunner()
        self._lock = threading.Lock()
        self.report: "DuplicateReport | None" = None

    def start(self, threshold: float, bursts: bool) -> JobStatus:
        from imgrag.retrieval.queries.duplicates import DuplicateOptions, find_duplicates

        opts = DuplicateOptions(threshold=float(threshold), bursts=bool(bursts))
        opts.resolved()  # a bad threshold is refused now, not in the thread
        index = self.backend.index()  # no index: refused now, with its own message

        def job(st: JobStatus) -> str:
            with self._lock:
                self.report = None
            rep = find_duplicates(index.store, opts)  # a failure: the runner keeps one line, logs the rest
            with self._lock:
                self.report = rep
            st.done = st.total = rep.items
            return f"{len(rep.groups)} group(s) among {rep.items} images"

        return self.jobs.start("duplicates", "find duplicates", job)

    def wait(self, timeout: float | None = None) -> JobStatus:
        return self.jobs.wait(timeout)

    def view(self) -> tuple[str, str, bool]:
        """(status line, groups HTML, still running)."""
        st = self.jobs.status
        if st.state == "running":
            return (status_html(f"looking for duplicates… {format_eta(st.elapsed)} so far "
                                "(candidates from the index, then a thumbnail check of each pair)"), "", True)
        if st.state == "failed":
            return status_html(st.message, True), "", False
        with self._lock:
            rep = self.report
        if rep is None:
            return status_html(), "", False
        took = rep.seconds.get("total", st.elapsed)
        msg = (f"checked {rep.items} images in {format_eta(took) if took >= 1 else f'{took:.1f}s'} "
               f"({rep.candidates} candidate pairs, {rep.rejected} rejected by the thumbnail check)")
        return status_html(msg), groups_html(group_rows(rep.groups), rep.items), False


def build_duplicates_tab(sh: Any) -> DuplicateFinder:
    """The Duplicates tab (``sh``: layout's shared state; only its backend is used)."""
    import gradio as gr

    from imgrag.retrieval.queries.duplicates import BURST_THRESHOLD, DEFAULT_THRESHOLD

    finder = DuplicateFinder(sh.backend)
    with gr.Tab("Duplicates", id="duplicates"):
        gr.HTML(f"<div>Groups of near-duplicate images: resized, re-encoded, slightly cropped or brightened "
                f"copies. <b>{esc(NOTHING_DELETED)}</b></div>", elem_id="dups-note")
        with gr.Row():
            threshold = gr.Slider(0.5, 1.0, value=DEFAULT_THRESHOLD, step=0.01, label="Candidate similarity",
                                  info="least cosine similarity for a pair to be checked (lower: more candidates)",
                                  elem_id="dups-threshold", scale=3)
            bursts = gr.Checkbox(False, label="Include burst shots (looser check)", elem_id="dups-bursts", scale=1)
            find_btn = gr.Button("Find duplicates", variant="primary", elem_id="dups-button", scale=1)
        status = gr.HTML(status_html(), elem_id="dups-status")
        result = gr.HTML("", elem_id="dups-groups", css_template=CSS)
        timer = gr.Timer(1.0, active=False)

    def start(threshold_, bursts_):
        try:
            finder.start(threshold_, bursts_)
        except Exception as e:  # noqa: BLE001
            return status_html(error_text(e), True), gr.skip(), gr.skip()
        st, html, _ = finder.view()
        return st, html, gr.Timer(active=True)

    find_btn.click(start, [threshold, bursts], [status, result, timer], api_name="find_duplicates")
    bursts.change(lambda b: BURST_THRESHOLD if b else DEFAULT_THRESHOLD, [bursts], [threshold], api_name=False)

    def tick():
        st, html, running = finder.view()
        if running:
            return st, gr.skip(), gr.skip()
        return st, html, gr.Timer(active=False)

    timer.tick(tick, None, [status, result, timer], api_name=False, show_progress="hidden")
    return finder
