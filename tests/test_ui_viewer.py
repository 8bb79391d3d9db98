"""The image viewer and the first screen, end to end in real headless Chromium (Debian package) driven by
Playwright, against a real `imgrag serve` on a mixed index: sample photos plus two PDFs (document pages).

Journeys: first screen (count, examples, sample) → search → open the viewer → arrow keys → Esc → more like
this → the results change; a new search clears the selection in the page and the server; ask → click [1] →
the viewer shows that cited image; at 390 px the score and name of each result are readable. Every wait is
for a condition, never a fixed pause. Screenshots land in docs/img/ (the viewer first) and test-output/ui/.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from ui_support import ROOT, Server, build_lite_index, make_lite_corpus

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-output" / "ui"
DOCS_IMG = ROOT / "docs" / "img"

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(not os.path.exists(CHROMIUM),
                                 reason="Debian chromium is not installed (apt-get install chromium); .ci/run installs it")]


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


@pytest.fixture(scope="module")
def chromium():
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


def _open_page(site, chromium, width: int = 1280, height: int = 900):
    page = chromium.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(120_000)
    page.goto(site.url)
    page.wait_for_selector("#search-query textarea, #search-query input")
    return page


@pytest.fixture
def page(site, chromium):
    pg = _open_page(site, chromium)
    yield pg
    pg.close()


def _seq(page, status: str) -> str:
    return page.evaluate(f"() => document.querySelector('{status} [data-seq]')?.dataset.seq || ''")


def _wait_new(page, status: str, before: str) -> None:
    page.wait_for_function("([sel, before]) => { const e = document.querySelector(sel + ' [data-seq]');"
                           " return e && e.dataset.seq !== before; }", arg=[status, before])
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _search(page, text: str) -> None:
    page.get_by_role("tab", name="Search", exact=True).click()
    before = _seq(page, "#search-status")
    page.locator("#search-query textarea, #search-query input").first.fill(text)
    page.click("#search-button")
    _wait_new(page, "#search-status", before)
    page.wait_for_selector("#search-gallery .thumbnail-item img")


def _captions(page) -> list[str]:
    return [c.strip() for c in page.locator("#search-gallery .caption-label").all_inner_texts()]


def _viewer_name(page) -> str:
    return page.locator("#imgrag-viewer .iv-name").inner_text()


def _selected(page) -> str:
    return page.evaluate("() => document.querySelector('#selected-id textarea, #selected-id input').value")


def test_first_screen_shows_count_examples_and_sample(page):
    page.wait_for_selector("#search-welcome .imgrag-tiles img")
    facts = page.locator("#search-welcome .imgrag-facts").inner_text()
    assert re.search(r"\b1[0-9] items\b", facts) and "model lite" in facts, facts  # 13 photos + 5 pages
    examples = page.locator("#search-welcome [data-imgrag-example]")
    assert examples.count() >= 2
    # a sample tile opens the viewer
    page.locator("#search-welcome [data-imgrag-i]").first.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    # an example query runs a search
    label = examples.first.inner_text()
    before = _seq(page, "#search-status")
    examples.first.click()
    _wait_new(page, "#search-status", before)
    assert label in page.locator("#search-status").inner_text()


def test_viewer_keys_and_more_like_this(page):
    _search(page, "lighthouse")
    caps = _captions(page)
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
    page.screenshot(path=str(DOCS_IMG / "ui-viewer.png"))
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-pos').innerText.startsWith('3 of')")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-pos').innerText.startsWith('1 of')")
    first = _viewer_name(page)
    assert first.split(" · ")[0] in caps[0]
    # the original opens at its page: a document page links to its rendered page, a photo to the file
    href = page.locator("#imgrag-viewer .iv-open").get_attribute("href")
    assert href.startswith("/imgrag/preview?id=" if "· page" in first else "/imgrag/image?id=")
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    assert _selected(page)  # the item last shown stays selected
    # reopen the second result and ask for more like it from the viewer
    page.locator("#search-gallery .thumbnail-item").nth(1).click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    before = _seq(page, "#search-status")
    page.click("#imgrag-viewer .iv-more")
    _wait_new(page, "#search-status", before)
    assert "like the selected one" in page.locator("#search-status").inner_text()
    after = _captions(page)
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
    before = _seq(page, "#search-status")
    page.click("#more-like-this")
    _wait_new(page, "#search-status", before)
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
