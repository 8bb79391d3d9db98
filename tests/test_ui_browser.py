"""End to end in real headless Chromium (Debian package) driven by Playwright, against a real
`imgrag serve` on a lite-model index of sample images.

Screenshots of every tab go to test-output/ui/. Every request the browser makes is recorded and must
stay on the server (no fonts, scripts or analytics from the network).
"""

from __future__ import annotations

import re
import shutil

import pytest

from browser_support import (MARKS, SHOTS, captions, chromium, click_and_wait, open_page, rendered,  # noqa: F401
                             search, tab)
from ui_support import SAMPLES, XSS_NAME, Server, build_lite_index, make_lite_corpus

pytestmark = MARKS


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("uibrowser")
    coll = make_lite_corpus(base / "photos")
    idx = base / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, cache=base / "cache", log=SHOTS / "serve.log")
    yield {"base": base, "coll": coll, "idx": idx, "server": server}
    server.stop()


@pytest.fixture(scope="module")
def browser_page(site, chromium):
    requests: list[str] = []
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    page.on("request", lambda r: requests.append(r.url))  # before the first request
    page.set_default_timeout(120_000)
    page.goto(site["server"].url)
    page.wait_for_selector("#search-query textarea, #search-query input")
    yield page, requests
    page.close()


def test_search_shows_expected_top_image_and_more_like_this(browser_page):
    page, _ = browser_page
    search(page, "a cat")
    assert "result(s) for 'a cat'" in page.locator("#search-status").inner_text()
    page.wait_for_selector("#search-gallery img")
    caps = captions(page, "#search-gallery")
    assert caps and "cat_chelsea.jpg" in caps[0], caps
    assert re.match(r"0\.\d{3} · cat_chelsea\.jpg", caps[0])
    srcs = page.locator("#search-gallery img").evaluate_all("els => els.map(e => e.src)")
    assert all("/imgrag/thumbs/" in s for s in srcs)  # cached thumbnails, not originals
    page.screenshot(path=str(SHOTS / "search.png"), full_page=True)
    # select the top result: details, then "more like this" (the item itself is excluded)
    page.locator("#search-gallery img").first.click()  # opens the viewer (tests/test_ui_viewer.py) and selects
    page.wait_for_function("() => document.querySelector('#search-detail').innerText.includes('cat_chelsea.jpg')")
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    click_and_wait(page, "#more-like-this", "#search-status")
    assert "like the selected" in page.locator("#search-status").inner_text()
    caps = captions(page, "#search-gallery")
    assert caps and not any("cat_chelsea.jpg" in c for c in caps)


@pytest.fixture
def reset_filters(browser_page):
    yield
    page, _ = browser_page
    for sel in ("#search-glob", "#search-after"):  # back to no filters for the next tests
        page.locator(f"{sel} textarea, {sel} input").first.fill("")
    page.locator("#search-sort-date input[type=checkbox]").uncheck()


def test_filters_cutoff_and_sort_by_date(browser_page, reset_filters):
    page, _ = browser_page
    tab(page, "Search")
    page.get_by_text("Filters and options").click()
    page.locator("#search-glob textarea, #search-glob input").first.fill("*/dated/*")
    page.locator("#search-sort-date input[type=checkbox]").check()
    search(page, "a flower")
    caps = captions(page, "#search-gallery")
    assert len(caps) == 2 and "daisy_2019.jpg · 2019-05-01" in caps[0] and "apple_2021.jpg · 2021-07-15" in caps[1], caps
    page.locator("#search-gallery .thumbnail-item").first.click()  # the viewer shows the capture date
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert re.search(r"taken\s+2019-05-01 10:00:00", page.locator("#imgrag-viewer .iv-meta").inner_text())
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    page.locator("#search-after textarea, #search-after input").first.fill("2020-01-01")
    search(page, "a flower")
    caps = captions(page, "#search-gallery")
    assert len(caps) == 1 and "apple_2021.jpg" in caps[0], caps
    page.locator("#search-after textarea, #search-after input").first.fill("not a date")
    search(page, "a flower")
    assert "⚠ after: 'not a date' is not a date (use YYYY-MM-DD)" in page.locator("#search-status").inner_text()
    page.screenshot(path=str(SHOTS / "search-filters.png"), full_page=True)


def test_file_names_with_html_are_shown_escaped(browser_page):
    page, _ = browser_page
    search(page, "an owl")
    page.wait_for_selector("#search-gallery img")
    caps = captions(page, "#search-gallery")
    hit = [i for i, c in enumerate(caps) if "onerror" in c]
    assert hit, caps
    assert XSS_NAME in caps[hit[0]]  # shown literally, as text
    page.locator("#search-gallery img").nth(hit[0]).click()
    page.wait_for_function("() => document.querySelector('#search-detail').innerText.includes('onerror')")
    assert XSS_NAME in page.locator("#search-detail").inner_text()
    assert page.locator("#imgrag-viewer .iv-name").inner_text() == XSS_NAME  # the viewer shows it as text too
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    # every image has loaded or failed (an injected <img onerror> would have fired), then one task turn
    # for queued load/error handlers
    page.wait_for_function("() => [...document.images].every(i => i.complete)")
    page.evaluate("() => new Promise(r => setTimeout(r, 0))")
    assert page.evaluate("() => window.__xss") is None  # the handler never ran
    assert page.locator("img[onerror]").count() == 0
    page.screenshot(path=str(SHOTS / "search-escaped-name.png"), full_page=True)


def test_search_by_image_finds_the_near_duplicate(browser_page, tmp_path):
    from PIL import Image

    page, _ = browser_page
    q = tmp_path / "coffee_query.jpg"
    with Image.open(SAMPLES / "food/coffee_cup.jpg") as im:  # a smaller, re-encoded copy
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(q, quality=80)
    tab(page, "Search by image")
    page.locator("#image-query input[type=file]").set_input_files(str(q))
    page.wait_for_selector("#image-query img")
    click_and_wait(page, "#image-button", "#image-status")
    assert "nearest" in page.locator("#image-status").inner_text()
    page.wait_for_selector("#image-gallery img")
    caps = captions(page, "#image-gallery")
    assert caps and "coffee_cup.jpg" in caps[0], caps
    # a result opens the viewer, on that result
    page.locator("#image-gallery .thumbnail-item").first.click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert page.locator("#imgrag-viewer .iv-name").inner_text() == "coffee_cup.jpg"
    assert page.locator("#imgrag-viewer .iv-pos").inner_text() == f"1 of {len(caps)}"
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    page.screenshot(path=str(SHOTS / "search-by-image.png"), full_page=True)


def test_oversized_upload_is_refused_with_a_message(browser_page, tmp_path):
    import struct
    import zlib

    page, _ = browser_page

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    bomb = tmp_path / "bomb.png"  # declares 20000×20000 pixels in 80 bytes
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))
    tab(page, "Search by image")
    page.locator("#image-query button[aria-label*='Clear'], #image-query button[title*='Clear']").first.click(timeout=5000) \
        if page.locator("#image-query button[aria-label*='Clear'], #image-query button[title*='Clear']").count() else None
    with page.expect_response(lambda r: "/upload" in r.url and r.request.method == "POST"):
        page.locator("#image-query input[type=file]").set_input_files(str(bomb))
    page.wait_for_selector("#image-query img")  # the upload is the component's value now
    click_and_wait(page, "#image-button", "#image-status")
    txt = page.locator("#image-status").inner_text()
    assert "upload refused: image too large: 400 MP > 50 MP limit" in txt and "Traceback" not in txt


def test_classify_an_upload(browser_page):
    page, _ = browser_page
    tab(page, "Classify")
    page.locator("#classify-labels textarea").fill("cat\ncoffee\nrocket\nguitar\nbus")
    tmpl = page.locator("#classify-templates textarea").input_value()
    assert "{}" in tmpl and len(tmpl.splitlines()) >= 2  # the default set, pre-filled
    page.locator("#classify-image input[type=file]").set_input_files(str(SAMPLES / "animals/cat_chelsea.jpg"))
    page.wait_for_selector("#classify-image img")
    page.click("#classify-button")
    page.wait_for_function("() => /cat/.test(document.querySelector('#classify-probs').innerText)")
    rendered(page)
    lines = [ln.strip() for ln in page.locator("#classify-probs").inner_text().splitlines() if ln.strip()]
    lines = [ln for ln in lines if ln != "Label probabilities"]
    assert lines[0] == "cat", lines  # the top label heads the chart
    # the current search results (state shared with the Search tab)
    search(page, "a cat")
    tab(page, "Classify")
    click_and_wait(page, "#classify-results", "#classify-status")
    assert "classified 12 search result(s)" in page.locator("#classify-status").inner_text()
    rows = page.locator("#classify-table tr").all_inner_texts()
    assert len(rows) == 13 and "cat_chelsea.jpg" in rows[1] and "\tcat" in rows[1], rows[:3]
    # each row's thumbnail opens the viewer on that result
    page.locator("#classify-table button[data-imgrag-i='0']").click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert page.locator("#imgrag-viewer .iv-name").inner_text() == "cat_chelsea.jpg"
    page.keyboard.press("ArrowRight")
    page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-pos').innerText === '2 of 12'")
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    # the whole index, in the background: a preview, nothing written (writing: tests/test_ui_journeys.py)
    page.click("#classify-index")
    page.wait_for_selector("#classify-job [data-state='done']", timeout=300_000)
    job = page.locator("#classify-job").inner_text()
    assert "13/13 items" in job and "nothing written" in job, job
    page.screenshot(path=str(SHOTS / "classify.png"), full_page=True)


def test_ask_streams_an_answer_with_a_cited_image(browser_page):
    smollm = pytest.importorskip("imgrag.retrieval.generators.smollm",
                                 reason="the offline smollm2 generator is not in this build")
    try:
        smollm.package_dir()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"smollm2 weights not installed: {e}")
    page, _ = browser_page
    tab(page, "Ask")
    page.locator("#ask-question textarea, #ask-question input").first.fill("What animal is in the photo of a cat?")
    page.click("#ask-button")
    page.wait_for_selector("#ask-cited img", timeout=300_000)
    answer = page.locator("#ask-answer").inner_text()
    assert answer.strip() and "[" in answer
    caps = captions(page, "#ask-cited")
    assert caps and re.match(r"\[\d+\] ", caps[0]) and any("cat_chelsea.jpg" in c for c in caps), caps
    gen = page.locator("#ask-generator").inner_text()
    assert "Generator:" in gen and "smollm2" in gen.lower() and "text-only" in gen
    page.screenshot(path=str(SHOTS / "ask.png"), full_page=True)


def test_index_tab_counts_skips_and_background_indexing(browser_page, site, tmp_path):
    page, _ = browser_page
    tab(page, "Index")
    page.wait_for_function("() => document.querySelector('#index-info').innerText.includes('lite')")
    info = page.locator("#index-info").inner_text()
    assert re.search(r"items\s+13\b", info), info
    skipped = page.locator("#index-skipped").inner_text()
    assert "broken.jpg" in skipped and "not an image (text file)" in skipped
    more = site["base"] / "more"
    more.mkdir()
    shutil.copy(SAMPLES / "animals/elephant.png", more / "elephant.png")
    shutil.copy(SAMPLES / "vehicles/truck.png", more / "truck.png")
    page.locator("#index-folder textarea, #index-folder input").first.fill(str(more))
    page.click("#index-button")
    page.wait_for_function("() => document.querySelector('#index-status').innerText.includes('indexing started')")
    page.wait_for_function("() => { const j = document.querySelector('#index-job [data-state]');"
                           " return j && j.dataset.state !== 'running' && j.innerText.startsWith('index '); }",
                           timeout=300_000)
    job = page.locator("#index-job").inner_text()
    assert "2/2 images" in job and "indexed 2 new/changed images" in job
    page.wait_for_function("() => /items\\s+15\\b/.test(document.querySelector('#index-info').innerText)")
    page.screenshot(path=str(SHOTS / "index.png"), full_page=True)
    search(page, "a truck")  # the new images are searchable at once
    assert "truck.png" in captions(page, "#search-gallery")[0]


def test_paths_outside_the_index_are_refused_in_the_browser(browser_page, site):
    page, _ = browser_page
    url = site["server"].url
    r = page.request.get(f"{url}/imgrag/image?id=/etc/passwd")
    assert r.status == 404 and "root:" not in r.text()
    r = page.request.get(f"{url}/imgrag/image?id=" + str(site["coll"] / "cat_chelsea.jpg"))
    assert r.status == 200 and r.headers["content-type"] == "image/jpeg"
    r = page.request.get(f"{url}/gradio_api/file=/etc/passwd")
    assert r.status == 403


def test_no_request_leaves_the_server(browser_page, site):
    page, requests = browser_page
    assert requests
    allowed = (site["server"].url, "data:", "blob:")
    outside = sorted({u for u in requests if not u.startswith(allowed)})
    assert outside == [], outside


def test_document_results_show_page_and_highlighted_escaped_snippet(tmp_path, chromium):
    """Its own server on a lite index of one generated PDF: the Text matches panel names the document and
    page, marks the query's words with <mark>, and shows HTML from the page text as text."""
    fpdf = pytest.importorskip("fpdf")
    pytest.importorskip("pypdfium2")

    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = fpdf.FPDF(format="A4")
    for text in ["Introduction to the guide", "Cormorants nest on the sea cliffs <img src=x onerror=window.__xss=1>",
                 "Index of terms"]:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.set_xy(15, 20)
        pdf.multi_cell(180, 6, text)
    pdf.output(str(docs / "guide.pdf"))
    idx = tmp_path / "idx"
    build_lite_index(docs, idx)
    server = Server(idx, cache=tmp_path / "cache", log=SHOTS / "serve-docs.log")
    try:
        page = open_page(chromium, server.url)
        search(page, "cormorants cliffs")
        page.wait_for_selector("#search-matches mark")
        first = page.locator("#search-matches li").first
        assert "guide.pdf · page 2" in first.inner_text()
        assert page.locator("#search-matches li").first.locator("mark").all_inner_texts() == ["Cormorants", "cliffs"]
        assert "<img src=x onerror=window.__xss=1>" in first.inner_text()  # page text shown as text
        assert page.locator("#search-matches img").count() == 0
        assert page.evaluate("() => window.__xss") is None
        page.screenshot(path=str(SHOTS / "search-document-matches.png"), full_page=True)
        page.close()
    finally:
        server.stop()
