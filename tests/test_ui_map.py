"""The Map tab end to end in real headless Chromium (Debian package) driven by Playwright, against a real
`imgrag serve` on the lite sample collection: the map draws a point per image (thumbnails), wheel zooms, drag
pans, clicking a point opens the viewer on that image, shift-drag lists the boxed images (which open the viewer
too), and the colour keys answer through the tab's endpoint. Every wait is for a condition, never a fixed pause.
The screenshot lands in docs/img/ui-map.png.
"""

from __future__ import annotations

import json
import re

import pytest

from browser_support import DOCS_IMG, MARKS, SHOTS, chromium, open_page  # noqa: F401 (chromium: a fixture)
from ui_support import Server, build_lite_index, gradio_call, make_lite_corpus

pytestmark = MARKS


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("uimap")
    coll = make_lite_corpus(base / "photos")
    idx = base / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, cache=base / "cache", log=SHOTS / "serve-map.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(site, chromium):
    pg = open_page(chromium, site.url, 1280, 1000, ready=None)
    pg.get_by_role("tab", name="Map", exact=True).click()
    pg.click("#map-draw")
    pg.wait_for_selector("#map-view .imgrag-map svg .mp-pt")
    yield pg
    pg.close()


def _items(page) -> list[dict]:
    return json.loads(page.locator("#map-view .imgrag-data").get_attribute("data-items"))


def _viewbox(page) -> list[float]:
    return [float(v) for v in page.locator("#map-view svg").get_attribute("viewBox").split()]


def test_map_draws_a_thumbnail_per_image(page):
    items = _items(page)
    names = {it["name"] for it in items}
    assert len(items) == 13 and "cat_chelsea.jpg" in names and "daisy_2019.jpg" in names  # broken.jpg skipped
    assert page.locator("#map-view .mp-thumb").count() == 13
    page.wait_for_function("() => [...document.querySelectorAll('#map-view .mp-thumb image')].length === 13")
    assert re.search(r"^13 items · PCA \(axes \d+% \+ \d+% of the variance\)$",
                     page.locator("#map-view .mp-note").last.inner_text())
    legend = page.locator("#map-view .mp-legend").inner_text()
    assert "group 1" in legend
    # thumbnails come from the thumbnail route and load
    href = page.locator("#map-view .mp-thumb image").first.get_attribute("href")
    assert href.startswith("/imgrag/thumb?id=")
    status = page.evaluate("(u) => fetch(u).then(r => r.status)", href)
    assert status == 200


def test_wheel_zooms_and_drag_pans(page):
    box = page.locator("#map-view svg").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    before = _viewbox(page)
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, -400)
    page.wait_for_function("(w) => +document.querySelector('#map-view svg').getAttribute('viewBox').split(' ')[2] < w",
                           arg=before[2])
    zoomed = _viewbox(page)
    page.mouse.move(box["x"] + 5, box["y"] + 5)  # a corner: a drag that starts on background
    page.mouse.down()
    page.mouse.move(box["x"] + 105, box["y"] + 55, steps=5)
    page.mouse.up()
    page.wait_for_function("(x) => +document.querySelector('#map-view svg').getAttribute('viewBox').split(' ')[0] < x",
                           arg=zoomed[0])
    assert _viewbox(page)[2] == pytest.approx(zoomed[2])  # panning keeps the zoom
    page.click("#map-view .mp-reset")
    page.wait_for_function("() => document.querySelector('#map-view svg').getAttribute('viewBox') === '0.00 0.00 1000.00 1000.00'")


def test_clicking_a_point_opens_the_viewer(page):
    items = _items(page)
    # the point that is really on top at the centre of the last thumbnail (points may overlap)
    pt = page.locator("#map-view .mp-thumb").last.bounding_box()
    x, y = pt["x"] + pt["width"] / 2, pt["y"] + pt["height"] / 2
    i = page.evaluate("([x, y]) => +document.elementFromPoint(x, y).closest('.mp-pt').dataset.i", [x, y])
    page.mouse.click(x, y)
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert page.locator("#imgrag-viewer .iv-name").inner_text() == items[i]["name"]
    assert page.locator("#imgrag-viewer .iv-pos").inner_text() == f"{i + 1} of 13"
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-img').naturalWidth > 0")
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")


def test_box_select_lists_the_boxed_images(page):
    box = page.locator("#map-view svg").bounding_box()
    # the left half of the map (as drawn: the SVG is centred in its box)
    x0, y0 = box["x"] + 2, box["y"] + 2
    x1, y1 = box["x"] + box["width"] / 2, box["y"] + box["height"] - 2
    expected = page.evaluate("""([x0, y0, x1, y1]) => [...document.querySelectorAll('#map-view .mp-pt')].filter(p => {
        const svg = p.ownerSVGElement, m = svg.getScreenCTM();
        const q = new DOMPoint(+p.dataset.x, +p.dataset.y).matrixTransform(m);
        return q.x >= x0 && q.x <= x1 && q.y >= y0 && q.y <= y1; }).map(p => +p.dataset.i).sort((a, b) => a - b)""",
                             [x0, y0, x1, y1])
    assert 0 < len(expected) < 13, expected  # the box holds some points, not all: the test can tell
    page.keyboard.down("Shift")
    page.mouse.move(x0, y0)
    page.mouse.down()
    page.mouse.move(x1, y1, steps=6)
    page.mouse.up()
    page.keyboard.up("Shift")
    page.wait_for_selector("#map-view .mp-selected .mp-count")
    assert page.locator("#map-view .mp-count").inner_text() == f"{len(expected)} image(s) selected"
    tiles = page.locator("#map-view .mp-selected [data-imgrag-i]")
    assert [int(t) for t in tiles.evaluate_all("els => els.map(e => e.dataset.imgragI)")] == expected
    assert _viewbox(page)[0] == 0  # a selection does not pan
    page.wait_for_function("() => [...document.querySelectorAll('#map-view .mp-selected img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    page.screenshot(path=str(DOCS_IMG / "ui-map.png"), full_page=True)
    # a listed image opens in the viewer
    tiles.first.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert page.locator("#imgrag-viewer .iv-name").inner_text() == _items(page)[expected[0]]["name"]
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")


def test_colour_keys_through_the_endpoint(site):
    html = gradio_call(site.url, "map", ["folder", "pca"])[0]
    assert "data-colour='folder'" in html and "dated (2)" in html
    html = gradio_call(site.url, "map", ["date", "pca"])[0]
    assert "2019 (1)" in html and "2021 (1)" in html and "(no date) (11)" in html
    html = gradio_call(site.url, "map", ["label", "pca"])[0]
    assert "(no label) (13)" in html


def test_tsne_where_installed(site):
    pytest.importorskip("sklearn", reason="scikit-learn (t-SNE) is not installed: the map offers PCA only")
    html = gradio_call(site.url, "map", ["group", "tsne"])[0]
    assert "13 items · t-SNE" in html and html.count("class='mp-pt") == 13
