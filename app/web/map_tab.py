"""The Map tab: a 2-D map of the collection (retrieval/queries/projection.py) drawn as one SVG.

The first :data:`THUMB_POINTS` points are thumbnails (``<image>`` from ``/imgrag/thumb``), the rest dots, at most
:data:`MAX_POINTS` in all (a bounded sample; the PCA axes come from every vector). ``static/map.js`` gives it
wheel zoom, drag to pan, a click that opens the viewer and shift-drag (or the *Box select* toggle) that lists
the boxed images under the map; those tiles open the viewer too. Colour by group, label, folder or date.
The projection of an index is computed once per index state and kept (one per backend).
"""

from __future__ import annotations

import weakref
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.app.web.html import error_text, esc
from imgrag.app.web.viewer import data_html

if TYPE_CHECKING:  # pragma: no cover
    from imgrag.app.web.backend import Backend
    from imgrag.retrieval.queries.projection import MapData

MAX_POINTS = 2000
THUMB_POINTS = 300
_METHOD_NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
SIZE = 1000  # SVG user units of the square map
_cache: "weakref.WeakKeyDictionary[Backend, tuple[Any, MapData, list[str]]]" = weakref.WeakKeyDictionary()

CSS = """
.imgrag-map { position: relative; }
.imgrag-map svg { width: 100%; height: 640px; background: #f8fafc; border: 1px solid var(--border-color-primary);
  border-radius: 8px; cursor: grab; touch-action: none; user-select: none; }
.imgrag-map svg.dragging { cursor: grabbing; }
.imgrag-map.selecting svg { cursor: crosshair; }
.imgrag-map .mp-pt { cursor: zoom-in; }
.imgrag-map .mp-box { fill: rgba(37, 99, 235, .12); stroke: #2563eb; stroke-width: 2; vector-effect: non-scaling-stroke; }
.imgrag-map .mp-bar { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin: 6px 0; font-size: .9em; }
.imgrag-map .mp-bar button { padding: 2px 10px; border: 1px solid var(--border-color-primary); border-radius: 6px;
  background: var(--background-fill-secondary); cursor: pointer; }
.imgrag-map.selecting .mp-select { background: #2563eb; color: #fff; }
.imgrag-map .mp-key { display: inline-flex; align-items: center; gap: 4px; }
.imgrag-map .mp-key i { width: 12px; height: 12px; border-radius: 3px; display: inline-block; }
.imgrag-map .mp-note { color: var(--body-text-color-subdued); }
"""


def head_html() -> str:
    """The ``<head>`` addition that loads the map script and its CSS (inline, as the viewer's)."""
    js = resources.files("imgrag.app.web").joinpath("static/map.js").read_text(encoding="utf-8")
    return f"<style>{CSS}</style>\n<script>\n" + js.replace("</", "<\\/") + "\n</script>"


def _state(backend: "Backend") -> tuple:
    """What identifies the index's contents for the cache: its item count and the change times of the manifest
    and of the folders under the index (a store commit writes a new file into one of them)."""
    root = Path(str(backend.root))
    stamps = [p.stat().st_mtime_ns for p in (root / "imgrag.json", root, *root.glob("*/")) if p.exists()]
    return (str(root), backend.index().store.count(), *stamps)


def map_data(backend: "Backend", max_points: int = MAX_POINTS, method: str = "pca") -> tuple["MapData", list[str]]:
    """The projection of the backend's index and each point's group, computed once per index state and method."""
    from imgrag.retrieval.queries.projection import group_values, project_store

    key = (_state(backend), max_points, method)
    hit = _cache.get(backend)
    if hit is not None and hit[0] == key:
        return hit[1], hit[2]
    data = project_store(backend.index().store, max_points=max_points, method=method)
    groups = group_values(data.vectors)
    _cache[backend] = (key, data, groups)
    return data, groups


def _fmt_date(v: Any) -> str:
    return str(v)[:19].replace("T", " ") if v else ""


def map_html(data: "MapData", groups: list[str], colour_by: str = "group") -> str:
    """The SVG map, legend and toolbar, the viewer's data block (source ``map``) and the selection area."""
    from imgrag.retrieval.paths import display
    from imgrag.retrieval.queries.projection import legend, point_values

    values = point_values(data.rows, colour_by, groups)
    colour, keys = legend(values)
    # thumbnails as large as the number of them allows (a few dozen images: big enough to recognise)
    n_thumbs = min(len(data.rows), THUMB_POINTS)
    t = 80 if n_thumbs <= 30 else 56 if n_thumbs <= 120 else 36
    pad, span = 10 + t // 2, SIZE - 20 - t
    parts: list[str] = []
    # dots first, thumbnails on top of them
    for i in range(len(data.rows) - 1, -1, -1):
        r, (x, y) = data.rows[i], data.xy[i]
        cx, cy = pad + float(x) * span, pad + (1.0 - float(y)) * span
        name = esc(display(Path(str(r["path"])).name) + (f" p.{r['page']}" if r.get("page") else ""))
        c = colour[values[i]]
        if i < THUMB_POINTS:
            parts.append(f"<g class='mp-pt mp-thumb' data-i='{i}' data-x='{cx:.1f}' data-y='{cy:.1f}'>"
                         f"<title>{name}</title><rect x='{cx - t / 2 - 3:.1f}' y='{cy - t / 2 - 3:.1f}' width='{t + 6}' "
                         f"height='{t + 6}' rx='4' fill='{c}'/><image href='/imgrag/thumb?id={esc(_q(r['id']))}' "
                         f"x='{cx - t / 2:.1f}' y='{cy - t / 2:.1f}' width='{t}' height='{t}' "
                         f"preserveAspectRatio='xMidYMid slice'/></g>")
        else:
            parts.append(f"<circle class='mp-pt mp-dot' data-i='{i}' data-x='{cx:.1f}' data-y='{cy:.1f}' "
                         f"cx='{cx:.1f}' cy='{cy:.1f}' r='5' fill='{c}'><title>{name}</title></circle>")
    key_html = "".join(f"<span class='mp-key'><i style='background:{c}'></i>{esc(v)} ({n})</span>"
                       for v, c, n in keys)
    shown = len(data.rows)
    note = (f"{shown} of {data.items} items shown" if shown < data.items else f"{shown} items") + \
        f" · {_METHOD_NAMES.get(data.method, data.method)}" + (f" (axes {data.explained[0]:.0%} + {data.explained[1]:.0%} of the variance)"
                                       if data.method == "pca" and len(data.explained) == 2 else "")
    items = [dict(r, taken_at=_fmt_date(r.get("taken_at"))) for r in data.rows]
    return (f"<div class='imgrag-map' data-imgrag-source='map' data-colour='{esc(colour_by)}'>"
            f"<div class='mp-bar'><button type='button' class='mp-select' aria-pressed='false'>Box select</button>"
            f"<button type='button' class='mp-reset'>Reset view</button>"
            f"<span class='mp-note'>wheel: zoom · drag: pan · click: open · shift-drag: select</span></div>"
            f"<svg viewBox='0 0 {SIZE} {SIZE}' data-size='{SIZE}' preserveAspectRatio='xMidYMid meet' "
            f"role='img' aria-label='Map of the collection'>{''.join(parts)}</svg>"
            f"<div class='mp-bar mp-legend'>{key_html}</div><div class='mp-bar mp-note'>{esc(note)}</div>"
            f"<div class='mp-selected'></div>{data_html('map', items)}</div>")


def _q(item_id: str) -> str:
    from urllib.parse import quote

    return quote(str(item_id), safe="")


def methods() -> list[tuple[str, str]]:
    """The projection dropdown's choices: PCA (seconds, the default), then t-SNE / UMAP where installed
    (t-SNE of 2,000 points took about a minute on 2 shared cores: worth it only when asked for)."""
    import importlib.util

    out = [("PCA (fast)", "pca")]
    if importlib.util.find_spec("sklearn") is not None:
        out.append(("t-SNE (slower)", "tsne"))
    if importlib.util.find_spec("umap") is not None:
        out.append(("UMAP (slower)", "umap"))
    return out


def render(backend: "Backend", colour_by: str = "group", method: str = "pca") -> str:
    """The tab's HTML for the backend's index, or a readable message."""
    if not backend.has_index():
        return "<div class='imgrag-map-empty'>No index yet: add a folder in the Index tab.</div>"
    try:
        data, groups = map_data(backend, method=method or "pca")
        return map_html(data, groups, colour_by)
    except Exception as e:  # noqa: BLE001 - the tab shows the error, the page keeps working
        return f"<div class='imgrag-map-empty'>{esc(error_text(e))}</div>"


def map_tab(backend: "Backend") -> None:
    """The Map tab (inside the caller's ``gr.Blocks``): colour and projection dropdowns, a draw button, the map."""
    import gradio as gr

    with gr.Tab("Map", id="map"):
        with gr.Row():
            colour = gr.Dropdown([("Group", "group"), ("Label", "label"), ("Folder", "folder"), ("Date (year)", "date")],
                                 value="group", label="Colour by", elem_id="map-colour", scale=2)
            method = gr.Dropdown(methods(), value="pca", label="Projection", elem_id="map-method", scale=2)
            draw = gr.Button("Draw the map", variant="primary", elem_id="map-draw", scale=1)
        view = gr.HTML("<div class='imgrag-map-empty'>Draw the map to see the whole collection at once.</div>",
                       elem_id="map-view")

    def draw_map(colour_by, method_):
        return render(backend, colour_by or "group", method_ or "pca")

    draw.click(draw_map, [colour, method], [view], api_name="map")
    colour.change(draw_map, [colour, method], [view], api_name=False)

