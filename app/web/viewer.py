"""The image viewer and the first screen: the data blocks the viewer script reads, the first-screen HTML,
citation links, and the viewer's CSS and ``<head>`` script (``static/viewer.js``).

Every gallery that can open the viewer has a hidden ``.imgrag-data`` block beside it holding its items as
JSON (escaped into an attribute; the script inserts every string as text, never as HTML). Pure functions,
no gradio import, tested directly and in Chromium (tests/test_ui_viewer.py).
"""

from __future__ import annotations

import json
import os
import re
from importlib import resources
from typing import Any, Iterable
from urllib.parse import quote

from imgrag.app.web.html import esc
from imgrag.retrieval.paths import display

#: echoed user input (a query in a status line) is cut to this many characters
ECHO_CHARS = 80

CSS = """
.imgrag-datablock { display: none !important; }
.imgrag-viewable .grid-wrap.fixed-height { max-height: none !important; height: auto !important; overflow: visible !important; }
.imgrag-viewable .grid-container { grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)) !important;
  grid-template-rows: none !important; grid-auto-rows: auto !important; align-items: start; }
.imgrag-viewable .thumbnail-item { cursor: zoom-in; aspect-ratio: auto !important; height: auto !important;
  display: flex !important; flex-direction: column !important; align-items: stretch !important; }
.imgrag-viewable .thumbnail-item > img { width: 100% !important; height: auto !important; aspect-ratio: 1 / 1;
  object-fit: contain !important; flex: none; }
.imgrag-viewable .thumbnail-item.selected { box-shadow: none !important; }
.imgrag-viewable .caption-label { position: static !important; white-space: normal !important; overflow: visible !important;
  text-overflow: clip !important; max-width: 100% !important; font-size: 0.82em; line-height: 1.3;
  /* score and name first; a document page's snippet is cut after three lines (the viewer shows it all) */
  overflow-wrap: anywhere; background: var(--block-background-fill) !important; color: var(--body-text-color) !important;
  display: -webkit-box !important; -webkit-line-clamp: 3; -webkit-box-orient: vertical; overflow: hidden !important;
  /* the clip is at the padding edge: bottom padding would show a sliver of the 4th line, a border does not */
  padding-bottom: 0 !important; border-bottom: 4px solid var(--block-background-fill) !important; }
@media (max-width: 640px) {
  .imgrag-viewable .grid-container { grid-template-columns: repeat(2, minmax(0, 1fr)) !important; }
}
.imgrag-welcome { line-height: 1.5; }
.imgrag-welcome .imgrag-facts { color: var(--body-text-color-subdued); }
.imgrag-examples button { margin: 4px 6px 0 0; padding: 2px 10px; border: 1px solid var(--border-color-primary);
  border-radius: 999px; background: var(--background-fill-secondary); cursor: pointer; }
.imgrag-tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(120px, 1fr)); gap: 8px; margin-top: 8px; }
.imgrag-tiles button { padding: 0; border: 1px solid var(--border-color-primary); border-radius: 6px; background: #f6f7f9;
  cursor: zoom-in; aspect-ratio: 1; overflow: hidden; }
.imgrag-tiles img { width: 100%; height: 100%; object-fit: contain; }
button.imgrag-thumb-btn { padding: 0; margin: 0 4px 4px 0; border: 1px solid var(--border-color-primary); border-radius: 4px;
  background: #f6f7f9; cursor: zoom-in; vertical-align: middle; }
button.imgrag-thumb-btn img { height: 64px; max-width: 96px; object-fit: contain; display: block; border-radius: 4px; }
a[href^="#imgrag-cite-"] { font-weight: 600; text-decoration: underline; cursor: zoom-in; }
html.imgrag-viewer-open { overflow: hidden; }
.imgrag-viewer { position: fixed; inset: 0; z-index: 10000; background: rgba(10, 12, 16, .97); color: #eef0f3;
  display: grid; grid-template-columns: minmax(0, 1fr) 320px; }
.imgrag-viewer[hidden] { display: none; }
.imgrag-viewer .iv-stage { position: relative; display: flex; align-items: center; justify-content: center; min-height: 0; padding: 16px; }
.imgrag-viewer .iv-img { max-width: 100%; max-height: calc(100vh - 32px); object-fit: contain; background: #fff; }
.imgrag-viewer button { font: inherit; color: inherit; cursor: pointer; }
.imgrag-viewer .iv-prev, .imgrag-viewer .iv-next { position: absolute; top: 50%; transform: translateY(-50%); width: 48px; height: 64px;
  font-size: 40px; border: 0; border-radius: 8px; background: rgba(255,255,255,.12); }
.imgrag-viewer .iv-prev { left: 12px; } .imgrag-viewer .iv-next { right: 12px; }
.imgrag-viewer button:disabled { opacity: .25; cursor: default; }
.imgrag-viewer .iv-info { background: #1b1e24; padding: 16px 18px; overflow-y: auto; position: relative; }
.imgrag-viewer .iv-close { position: absolute; top: 8px; right: 10px; font-size: 30px; border: 0; background: none; }
.imgrag-viewer .iv-name { margin: 6px 32px 10px 0; font-size: 1.1em; overflow-wrap: anywhere; color: #fff; }
.imgrag-viewer .iv-pos { color: #aab; font-size: .9em; }
.imgrag-viewer .iv-meta { border-collapse: collapse; font-size: .92em; width: 100%; }
.imgrag-viewer .iv-meta th { text-align: left; color: #aab; padding: 3px 10px 3px 0; vertical-align: top; font-weight: 500; border: 0; }
.imgrag-viewer .iv-meta td { overflow-wrap: anywhere; padding: 3px 0; border: 0; }
.imgrag-viewer .iv-actions { display: flex; flex-direction: column; gap: 8px; margin-top: 16px; }
.imgrag-viewer .iv-actions > * { padding: 8px 12px; border-radius: 6px; border: 1px solid #3a3f4a; background: #262a33;
  text-align: center; color: #fff; text-decoration: none; }
.imgrag-viewer .iv-more { background: #2563eb !important; border-color: #2563eb !important; }
@media (max-width: 720px) {
  .imgrag-viewer { grid-template-columns: 1fr; grid-template-rows: minmax(0, 58vh) auto; overflow-y: auto; }
  .imgrag-viewer .iv-img { max-height: calc(58vh - 24px); }
  .imgrag-viewer .iv-prev, .imgrag-viewer .iv-next { width: 40px; height: 52px; font-size: 30px; }
}
"""


def head_html() -> str:
    """The ``<head>`` addition that loads the viewer (inline: the page then needs no extra route)."""
    js = resources.files("imgrag.app.web").joinpath("static/viewer.js").read_text(encoding="utf-8")
    # the CSS goes in <head> too: Gradio scopes its css= rules to the app, and the viewer lives on <body>
    return (f"<style>{CSS}</style>\n<script>\n" + js.replace("</", "<\\/") + "\n</script>")


def cut(text: str, n: int = ECHO_CHARS) -> str:
    """``text`` on one line, at most ``n`` characters (an ellipsis marks the cut) — for echoing input."""
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _url(route: str, item_id: str) -> str:
    return f"/imgrag/{route}?id={quote(item_id, safe='')}"


def view_item(it: dict[str, Any], n: int | None = None) -> dict[str, Any]:
    """What the viewer shows for one item (a ``ResultItem.to_dict()`` or a stored row with ``id``/``path``)."""
    rows: list[tuple[str, str]] = [("folder", display(os.path.dirname(it["path"])))]
    if it.get("page"):
        rows.append(("page", str(it["page"])))
    if it.get("score") is not None:
        rows.append(("score", f"{float(it['score']):.3f}"))
    if it.get("matched_terms"):
        rows.append(("words", ", ".join(it["matched_terms"])))
    taken = it.get("taken_at")
    if taken:
        rows.append(("taken", str(taken)[:19].replace("T", " ")))
    if it.get("width"):
        rows.append(("size", f"{it['width']}×{it['height']} px"))
    if it.get("label"):
        rows.append(("label", str(it["label"])))
    page = it.get("page")
    # a document page has no image file of its own: "open" shows the rendered page
    original = _url("preview", it["id"]) if page else _url("image", it["id"])
    return {"id": it["id"], "name": it.get("name") or display(os.path.basename(it["path"])), "page": page,
            "n": n, "meta": rows, "preview": _url("preview", it["id"]), "original": original}


def data_html(source: str, items: Iterable[dict[str, Any]]) -> str:
    """The hidden block the viewer reads for the gallery with elem_id ``source``."""
    payload = json.dumps([view_item(it, it.get("n")) for it in items], ensure_ascii=True)
    return f"<div class='imgrag-data' data-for='{esc(source)}' data-items='{esc(payload)}' hidden></div>"


_CITE = re.compile(r"\[(\d{1,3})\]")


def link_citations(text: str, known: Iterable[int] | None = None) -> str:
    """Markdown ``text`` with each ``[n]`` a link the viewer opens (``#imgrag-cite-n``); with ``known``,
    only those numbers."""
    ok = None if known is None else set(known)

    def sub(m: re.Match) -> str:
        n = int(m.group(1))
        return m.group(0) if ok is not None and n not in ok else f"[\\[{n}\\]](#imgrag-cite-{n})"

    return _CITE.sub(sub, text or "")


def welcome_html(info: dict[str, Any] | None, sample: list[dict[str, Any]], examples: list[str],
                 error: str = "") -> str:
    """The first screen: item count, model, last update, example queries, a sample of the collection."""
    if error:
        return f"<div class='imgrag-welcome'>{esc(error)}</div>"
    info = info or {}
    facts = [f"<b>{esc(info.get('items', 0))}</b> items", f"model <b>{esc(info.get('model', '?'))}</b>"]
    if info.get("updated_at"):
        facts.append(f"last update {esc(str(info['updated_at'])[:16].replace('T', ' '))}")
    if (info.get("adapter") or {}).get("active"):  # imgrag tune: queries go through a tuned adapter
        facts.append("<span id='imgrag-adapter'>tuned adapter active</span>")
    ex = "".join(f"<button type='button' data-imgrag-example='{esc(q)}'>{esc(q)}</button>" for q in examples)
    tiles = "".join(f"<button type='button' data-imgrag-i='{i}' title='{esc(view_item(it)['name'])}'>"
                    f"<img src='{esc(_url('thumb', it['id']))}' alt='{esc(view_item(it)['name'])}' loading='lazy'></button>"
                    for i, it in enumerate(sample))
    return (f"<div class='imgrag-welcome' data-imgrag-source='welcome'><div class='imgrag-facts'>{' · '.join(facts)}</div>"
            + (f"<div class='imgrag-examples'>Try: {ex}</div>" if ex else "")
            + (f"<div class='imgrag-tiles'>{tiles}</div>" if tiles else "")
            + data_html("welcome", sample) + "</div>")


def example_queries(paths: Iterable[str], limit: int = 4) -> list[str]:
    """Example queries from the collection's own folder names (the commonest first), else generic ones."""
    counts: dict[str, int] = {}
    for p in paths:
        name = os.path.basename(os.path.dirname(p)).strip()
        if name and len(name) <= 30 and name.isprintable() and not name.startswith("."):
            counts[name] = counts.get(name, 0) + 1
    named = [n.replace("_", " ").replace("-", " ") for n, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return (named + ["a photo of a cat", "a document page", "a city at night", "people outdoors"])[:limit]
