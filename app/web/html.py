"""The HTML pieces the web UI's tabs show, as pure functions (tested directly). Every untrusted string — file
names, labels, page text, messages — is escaped here."""

from __future__ import annotations

import html
import itertools
import logging
import os
import traceback
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from imgrag.app.web.jobs import format_eta
from imgrag.retrieval.errors import ImgragError
from imgrag.retrieval.paths import display

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.app.web.backend import ResultItem
    from imgrag.app.web.jobs import JobStatus

log = logging.getLogger("imgrag.ui")
#: an error line is cut to this many characters (it may quote a 5,000-character input)
ERROR_CHARS = 300

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


def esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def error_text(e: BaseException) -> str:
    """A one-line, user-readable message for any exception (never a traceback)."""
    if isinstance(e, ImgragError):  # may echo the user's input (a path, a date): one line, cut
        msg = " ".join(str(e).split())
        return msg if len(msg) <= ERROR_CHARS else msg[: ERROR_CHARS - 1] + "…"
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
    rows = [("file", it["name"]), ("folder", display(os.path.dirname(it["path"])))]
    if it.get("score") is not None:  # none for an item opened outside a result list (a sample, a citation)
        rows.append(("score", f"{it['score']:.4f}"))
    if it.get("matched_terms"):  # hybrid: the score is the similarity raised by these words
        rows.append(("similarity", f"{it['similarity']:.4f}" if it.get("similarity") is not None else "–"))
        rows.append(("keyword", f"{it['keyword']:.2f} ({', '.join(it['matched_terms'])})"))
    if it.get("taken_at"):
        rows.append(("taken", str(it["taken_at"])[:19].replace("T", " ")))
    if it.get("width"):
        rows.append(("size", f"{it['width']}×{it['height']} px"))
    if it.get("label"):
        rows.append(("label", it["label"]))
    if it.get("page"):
        rows.append(("page", str(it["page"])))
    if it.get("copies"):  # exact copies folded into this result (display form already)
        rows.append(("also at", "; ".join(it["copies"])))
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    if it.get("snippet"):
        body += f"<tr><th>text</th><td class='imgrag-snippet'>{snippet_html(it['snippet'], it.get('match_spans'))}</td></tr>"
    # a document page has no image file of its own: its link opens that page rendered (not the PDF's page 1)
    route, text = ("preview", f"open page {int(it['page'])}") if it.get("page") else ("image", "open the original")
    link = f"/imgrag/{route}?id={quote(it['id'], safe='')}"
    return (f"<div class='imgrag-detail'><table class='imgrag-table'>{body}</table>"
            f"<a href='{esc(link)}' target='_blank' rel='noopener noreferrer'>{text}</a></div>")


def job_html(st: JobStatus) -> str:
    if st.state == "idle":
        return "<div class='imgrag-status'>No background job has run yet.</div>"
    if st.kind == "index" and st.state == "done" and st.detail.get("scanned") == 0:  # not "0/0 done"
        return (f"<div class='imgrag-job' data-state='done'><div>no images found in "
                f"{esc(st.title.removeprefix('index '))}</div></div>")
    pct = round(100 * st.fraction)
    unit = {"index": "images", "tune": "steps"}.get(st.kind, "items")
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
    if "adapter" in info:  # imgrag tune: whether queries go through a tuned adapter, and how it measured
        from imgrag.retrieval.tune.adapter import describe_adapter

        rows.append(("tuned adapter", describe_adapter(info["adapter"])))
    return "<table class='imgrag-table'>" + "".join(
        f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows) + "</table>"


def skipped_html(rows: list[dict[str, Any]], total: int | None = None) -> str:
    if not rows:
        return "<div>No skipped files.</div>"
    head = f"<div>{total if total is not None else len(rows)} file(s) could not be indexed:</div>"
    body = "".join(f"<tr><td><code>{esc(display(str(r.get('path'))))}</code></td><td>{esc(r.get('reason'))}</td></tr>" for r in rows)
    return head + f"<table class='imgrag-table'><tr><th>file</th><th>reason</th></tr>{body}</table>"


def generator_html(name: str, text_only: bool = False) -> str:
    return f"<div>Generator: <b>{esc(name)}</b>{' (text-only fallback)' if text_only else ''}</div>"


def notes_html(notes: list[str]) -> str:
    return "<div class='imgrag-status'>" + "<br>".join(esc(n) for n in notes) + "</div>"
