"""The image viewer and the first screen, end to end in real headless Chromium (Debian package) driven by
Playwright, against a real `imgrag serve` on a mixed index: sample photos plus two PDFs (document pages).

Journeys: first screen (count, examples, sample) → search → open the viewer → arrow keys → Esc → more like
this → the results change; a new search clears the selection in the page and the server; ask → click [1] →
the viewer shows that cited image; at 390 px the score and name of each result are readable. Every wait is
for a condition, never a fixed pause. Screenshots land in docs/img/ (the viewer first) and test-output/ui/.
"""

from __future__ import annotations

import re
import shutil

import pytest

from browser_support import (DOCS_IMG, MARKS, SHOTS, captions, chromium, open_page, seq,  # noqa: F401 (fixture)
                             wait_new)
from ui_support import Server, build_lite_index, make_lite_corpus

pytestmark = MARKS


def _write_pdf(path, pages: list[str]) -> None:
    fpdf = pytest.importorskip("fpdf", reason="fpdf2 makes the test PDFs")
    pdf = fpdf.FPDF(format="A4")
    for text in pages:
        pdf.add_page()
        pdf.set_font("helvetica", size=22)
        pdf.multi_cell(0, 12, text + "\n" + "Routine notes for the record. " * 12)
    pdf.output(str(path))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("uiviewer")
    coll = make_lite_corpus(base / "photos")
    docs = coll / "docs"
    docs.mkdir()
    _write_pdf(docs / "report.pdf", ["Annual lighthouse maintenance report", "Harbour bus timetable",
                                     "Penguin colony survey"])
    _write_pdf(docs / "menu.pdf", ["Coffee and tea menu", "Sunflower salad"])
    idx = base / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, cache=base / "cache", log=SHOTS / "serve-viewer.log")
    yield server
    server.stop()


def _open_page(site, chromium, width: int = 1280, height: int = 900):
    return open_page(chromium, site.url, width, height)


@pytest.fixture
def page(site, chromium):
    pg = _open_page(site, chromium)
    yield pg
    pg.close()


def _search(page, text: str) -> None:
    page.get_by_role("tab", name="Search", exact=True).click()
    before = seq(page, "#search-status")
    page.locator("#search-query textarea, #search-query input").first.fill(text)
    page.click("#search-button")
    wait_new(page, "#search-status", before)
    page.wait_for_selector("#search-gallery .thumbnail-item img")


_THUMBS_LOADED = "() => [...document.querySelectorAll('#search-gallery img')].every(i => i.complete && i.naturalWidth > 0)"


def _viewer_name(page) -> str:
    return page.locator("#imgrag-viewer .iv-name").inner_text()


def _selected(page) -> str:
    return page.evaluate("() => document.querySelector('#selected-id textarea, #selected-id input').value")


def test_first_screen_shows_count_examples_and_sample(page):
    page.wait_for_selector("#search-welcome .imgrag-tiles img")
    facts = page.locator("#search-welcome .imgrag-facts").inner_text()
    assert re.search(r"\b1[0-9] items\b", facts) and "model lite" in facts, facts  # 13 photos + 5 pages
    assert re.search(r"last update \d{4}-\d\d-\d\d \d\d:\d\d", facts), facts
    examples = page.locator("#search-welcome [data-imgrag-example]")
    assert examples.count() >= 2
    # a sample tile opens the viewer; the Search tab's details then name that item (the selection is true)
    page.locator("#search-welcome [data-imgrag-i]").first.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    name = _viewer_name(page).split(" · ")[0]
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    page.wait_for_function("([n]) => document.querySelector('#search-detail').innerText.includes(n)", arg=[name])
    # an example query runs a search
    label = examples.first.inner_text()
    before = seq(page, "#search-status")
    examples.first.click()
    wait_new(page, "#search-status", before)
    assert label in page.locator("#search-status").inner_text()


def test_viewer_keys_and_more_like_this(page):
    _search(page, "lighthouse")
    caps = captions(page)
    assert len(caps) >= 3 and all(re.match(r"\d\.\d{3} · ", c) for c in caps), caps
    assert any(re.search(r"\.pdf p\.\d", c) for c in caps), caps  # page numbers of document pages are visible
    page.locator("#search-gallery .thumbnail-item").nth(1).click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    second = _viewer_name(page)
    assert second.split(" · ")[0] in caps[1]
    assert page.locator("#imgrag-viewer .iv-pos").inner_text().startswith("2 of ")
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-img').naturalWidth > 0")
    meta = page.locator("#imgrag-viewer .iv-meta").inner_text()
    assert "folder" in meta and "score" in meta and "size" in meta
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-pos').innerText.startsWith('3 of')")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-pos').innerText.startsWith('1 of')")
    first = _viewer_name(page)
    assert first.split(" · ")[0] in caps[0]
    page.wait_for_function("() => { const i = document.querySelector('#imgrag-viewer .iv-img');"
                           " return i.complete && i.naturalWidth > 0; }")
    page.screenshot(path=str(DOCS_IMG / "ui-viewer.png"))  # the README's first picture: the best match
    # the original opens at its page: a document page links to its rendered page, a photo to the file
    href = page.locator("#imgrag-viewer .iv-open").get_attribute("href")
    assert href.startswith("/imgrag/preview?id=" if "· page" in first else "/imgrag/image?id=")
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    assert _selected(page)  # the item last shown stays selected
    # reopen the second result and ask for more like it from the viewer
    page.locator("#search-gallery .thumbnail-item").nth(1).click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    before = seq(page, "#search-status")
    page.click("#imgrag-viewer .iv-more")
    wait_new(page, "#search-status", before)
    assert "like the selected one" in page.locator("#search-status").inner_text()
    after = captions(page)
    assert after and after != caps
    assert not any(c.split(" · ")[1] == second.split(" · ")[0] for c in after if " · " in c)  # itself excluded


def test_new_search_clears_the_selection(page):
    _search(page, "a cat")
    page.locator("#search-gallery .thumbnail-item").first.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_function("() => document.querySelector('#search-detail').innerText.includes('file')")
    assert _selected(page)
    _search(page, "a bus")
    page.wait_for_function("() => document.querySelector('#selected-id textarea, #selected-id input').value === ''")
    assert "Select a result" in page.locator("#search-detail").inner_text()
    # "More like this" now says so, instead of answering for a stale item
    before = seq(page, "#search-status")
    page.click("#more-like-this")
    wait_new(page, "#search-status", before)
    assert "open a result first" in page.locator("#search-status").inner_text()


def test_long_query_is_cut_where_echoed(page):
    _search(page, "lighthouse " * 500)
    status = page.locator("#search-status").inner_text()
    assert "…" in status and len(status) < 200, len(status)


def test_phone_layout_shows_score_and_name(site, chromium):
    pg = _open_page(site, chromium, 390, 844)
    try:
        _search(pg, "lighthouse")
        boxes = pg.locator("#search-gallery .caption-label").evaluate_all(
            "els => els.map(e => ({w: e.scrollWidth, cw: e.clientWidth, text: e.innerText, "
            "vis: e.getBoundingClientRect().width > 0}))")
        assert boxes and all(b["vis"] and b["w"] <= b["cw"] + 1 for b in boxes), boxes  # nothing cut off
        assert all(re.match(r"\d\.\d{3} · \S+", b["text"]) for b in boxes), boxes
        pg.wait_for_function(_THUMBS_LOADED)
        pg.screenshot(path=str(DOCS_IMG / "ui-phone.png"))
        pg.locator("#search-gallery .thumbnail-item").first.click()
        pg.wait_for_selector("#imgrag-viewer:not([hidden])")
        pg.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-img').naturalWidth > 0")
        assert pg.locator("#imgrag-viewer .iv-more").is_visible()
        pg.screenshot(path=str(DOCS_IMG / "ui-phone-viewer.png"))
    finally:
        pg.close()


def test_ask_citation_opens_the_viewer(page):
    smollm = pytest.importorskip("imgrag.retrieval.generators.smollm",
                                 reason="the offline smollm2 generator is not in this build")
    try:
        smollm.package_dir()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"smollm2 weights not installed: {e}")
    page.get_by_role("tab", name="Ask", exact=True).click()
    page.locator("#ask-question textarea, #ask-question input").first.fill("What animal is in the photo of a cat?")
    page.click("#ask-button")
    page.wait_for_selector("#ask-cited .thumbnail-item img", timeout=600_000)
    link = page.locator('#ask-answer a[href^="#imgrag-cite-"]').first
    link.wait_for()
    n = int(link.get_attribute("href").rsplit("-", 1)[1])
    caps = [c.strip() for c in page.locator("#ask-cited .caption-label").all_inner_texts()]
    cap = next(c for c in caps if c.startswith(f"[{n}] "))
    link.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert f"cited as [{n}]" in page.locator("#imgrag-viewer .iv-pos").inner_text()
    assert _viewer_name(page).split(" · ")[0] in cap
    page.screenshot(path=str(DOCS_IMG / "ui-ask-viewer.png"))
    page.keyboard.press("Escape")
    page.screenshot(path=str(DOCS_IMG / "ui-ask.png"), full_page=True)
    shutil.copy(DOCS_IMG / "ui-ask.png", SHOTS / "ask-viewer.png")


def _gallery_items(page, gallery: str = "search-gallery") -> list[dict]:
    """What the viewer reads for a gallery (its hidden data block)."""
    return page.evaluate("(g) => JSON.parse(document.querySelector(`.imgrag-data[data-for='${g}']`)"
                         ".dataset.items)", gallery)


def test_document_page_opens_at_its_page(page, site):
    _search(page, "harbour bus timetable")
    items = _gallery_items(page)
    i = next(j for j, it in enumerate(items) if it["name"] == "report.pdf" and it["page"] == 2)
    page.locator("#search-gallery .thumbnail-item").nth(i).click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert _viewer_name(page) == "report.pdf · page 2"
    meta = page.locator("#imgrag-viewer .iv-meta").inner_text()
    assert re.search(r"page\s+2\b", meta) and re.search(r"score\s+\d\.\d{3}", meta), meta
    link = page.locator("#imgrag-viewer .iv-open")
    assert link.inner_text() == "Open page 2"
    href = link.get_attribute("href")
    assert href.startswith("/imgrag/preview?id=")
    # that link is page 2 rendered, not page 1 (nor the PDF file)
    p2 = page.request.get(site.url + href)
    p1_item = next(it for it in items if it["name"] == "report.pdf" and it["page"] != 2)
    p1 = page.request.get(site.url + p1_item["original"])
    assert p2.status == 200 and p2.headers["content-type"] == "image/jpeg" and p2.body() != p1.body()
    page.keyboard.press("Escape")
    # the Search tab's details of the selected page link to the same rendered page
    page.wait_for_function("() => document.querySelector('#search-detail').innerText.includes('open page 2')")
    assert page.locator("#search-detail a").get_attribute("href") == href


def test_filters_by_type_folder_and_dates(page):
    def run(text: str) -> list[str]:
        _search(page, text)
        return captions(page)

    page.get_by_role("button", name="Filters and options").click()
    page.locator("#search-kind label", has_text="Document pages").click()
    caps = run("lighthouse")
    assert caps and all(re.search(r"\.pdf p\.\d", c) for c in caps), caps
    page.locator("#search-kind label", has_text="Photos").click()
    caps = run("lighthouse")
    assert caps and not any(".pdf" in c for c in caps), caps
    page.locator("#search-kind label", has_text="All").click()
    glob = page.locator("#search-glob textarea, #search-glob input").first
    glob.fill("*/docs/*")  # a folder
    caps = run("lighthouse")
    assert caps and all(".pdf p." in c for c in caps), caps
    glob.fill("")
    after = page.locator("#search-after textarea, #search-after input").first
    before = page.locator("#search-before textarea, #search-before input").first
    after.fill("2019-01-01")
    before.fill("2019-12-31")
    caps = run("a flower")
    assert len(caps) == 1 and "daisy_2019.jpg" in caps[0], caps
    after.fill("")
    before.fill("")


def test_desktop_grid_fills_the_page_with_readable_captions(page):
    _search(page, "lighthouse")
    boxes = page.locator("#search-gallery .caption-label").evaluate_all(
        "els => els.map(e => ({w: e.scrollWidth, cw: e.clientWidth, text: e.innerText,"
        " x: e.closest('.thumbnail-item').getBoundingClientRect().x}))")
    assert len(boxes) == 12 and all(b["w"] <= b["cw"] + 1 for b in boxes), boxes
    assert all(re.match(r"\d\.\d{3} · \S+", b["text"]) for b in boxes), boxes
    assert len({round(b["x"]) for b in boxes}) >= 5  # columns across the page, not a narrow strip
    # no inner scroll box: every row of results is laid out in the page
    wrap = page.evaluate("() => { const w = document.querySelector('#search-gallery .grid-wrap');"
                         " return [w.scrollHeight, w.clientHeight]; }")
    assert wrap[0] <= wrap[1] + 1, wrap
    page.wait_for_function(_THUMBS_LOADED)
    page.screenshot(path=str(DOCS_IMG / "ui-search.png"))


def test_ask_about_this_image_from_the_viewer(page):
    _search(page, "a cat")
    page.locator("#search-gallery .thumbnail-item").first.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    name = _viewer_name(page)
    page.click("#imgrag-viewer .iv-ask")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    box = page.locator("#ask-question textarea, #ask-question input").first
    box.wait_for()
    page.wait_for_function("([n]) => { const b = document.querySelector('#ask-question textarea, #ask-question input');"
                           " return b && b.value.includes(n); }", arg=[name])
    assert box.input_value() == f"What does {name} show?"
    assert page.get_by_role("tab", name="Ask", exact=True).get_attribute("aria-selected") == "true"
