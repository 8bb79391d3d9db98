"""User journeys through the web UI in real headless Chromium, on a mixed photo + PDF index (issue 18):
ask → the answer streams, then its citations; classify → preview → confirmed write; index → add → remove.

No fixed sleeps: every step waits for a condition on the page (or the JSON API) to hold.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.parse

import pytest

from browser_support import MARKS, chromium, open_page, tab  # noqa: F401 (chromium: a fixture)
from test_http_api import PAGES, write_pdf
from ui_support import SAMPLES, Server, build_lite_index, http_get, make_lite_corpus

pytestmark = MARKS


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("fpdf")
    pytest.importorskip("pypdfium2")
    base = tmp_path_factory.mktemp("journeys")
    coll = make_lite_corpus(base / "photos")
    write_pdf(coll / "report.pdf", PAGES)
    idx = base / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, cache=base / "cache")
    yield {"base": base, "coll": coll, "server": server}
    server.stop()


@pytest.fixture(scope="module")
def page(site, chromium):
    pg = open_page(chromium, site["server"].url, timeout_ms=180_000)
    yield pg
    pg.close()


def _api(site, route: str, **params) -> dict:
    st, body, _ = http_get(site["server"].url + "/api/v1" + route + "?" + urllib.parse.urlencode(params))
    assert st == 200, body
    return json.loads(body)


def test_ask_streams_the_answer_then_shows_citations(page):
    smollm = pytest.importorskip("imgrag.retrieval.generators.smollm")
    try:
        smollm.package_dir()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"smollm2 weights not installed: {e}")
    tab(page, "Ask")
    # record every text the answer box shows while the answer is written
    page.evaluate("""() => { window.__answers = []; window.__status = [];
        const el = document.querySelector('#ask-answer'), st = document.querySelector('#ask-status');
        const opts = {subtree: true, childList: true, characterData: true};
        new MutationObserver(() => window.__answers.push(el.innerText)).observe(el, opts);
        new MutationObserver(() => window.__status.push(st.innerText)).observe(st, opts); }""")
    page.locator("#ask-question textarea, #ask-question input").first.fill("What does the price list say bananas cost?")
    page.click("#ask-button")
    page.wait_for_selector("#ask-summary", timeout=300_000)
    page.wait_for_selector("#ask-cited img")
    seen = [t.strip() for t in page.evaluate("() => window.__answers") if t.strip()]
    drafts = [t for t in seen if t.endswith("▍")]
    # the text grew as the generator wrote it (smollm2 yields its preamble, then sentence by sentence; token
    # generators more often): several drafts, each a prefix of the next, before the checked answer
    assert len(set(drafts)) >= 2, seen[:10]
    stems = [d[:-1].rstrip() for d in drafts]
    assert all(b.startswith(a) for a, b in zip(stems, stems[1:]) if a and b), stems[:10]
    final = page.locator("#ask-answer").inner_text().strip()
    assert final and "▍" not in final and "[" in final
    assert page.locator("#ask-cited .caption-label, #ask-cited figcaption").first.inner_text().startswith("[")
    # the first question loads the model (this module's server has not answered before), and says so
    assert any("loading the model" in t for t in page.evaluate("() => window.__status")), \
        page.evaluate("() => window.__status")
    # one short line for people; the notes folded under "Details" (closed)
    summary = page.locator("#ask-summary").inner_text()
    assert "image" in summary and "\n" not in summary.strip()
    assert page.locator("#ask-status details summary").inner_text() == "Details"
    assert page.locator("#ask-status details").get_attribute("open") is None
    assert not page.locator("#ask-status details li").first.is_visible()
    # every [n] in the answer opens its image in the viewer
    links = page.locator('#ask-answer a[href^="#imgrag-cite-"]')
    assert links.count() >= 1
    for i in range(links.count()):
        n = int(links.nth(i).get_attribute("href").rsplit("-", 1)[1])
        links.nth(i).click()
        page.wait_for_selector("#imgrag-viewer:not([hidden])")
        assert f"cited as [{n}]" in page.locator("#imgrag-viewer .iv-pos").inner_text()
        page.keyboard.press("Escape")
        page.wait_for_selector("#imgrag-viewer", state="hidden")


def test_long_question_is_cut_where_it_is_echoed(page):
    tab(page, "Ask")
    box = page.locator("#ask-question textarea, #ask-question input").first
    box.fill("zebra " * 1000)
    assert len(box.input_value()) <= 2000  # the box itself stops at 2,000 characters
    page.click("#ask-button")
    page.wait_for_function("() => /searching|No image|loading|writing|cites|cited/"
                           ".test(document.querySelector('#ask-status').innerText)")
    assert len(page.locator("#ask-status").inner_text()) < 300
    page.wait_for_selector("#ask-summary, #ask-status .imgrag-error", timeout=300_000)


def test_classify_previews_then_writes_after_confirmation(page, site):
    tab(page, "Classify")
    page.locator("#classify-labels textarea").fill("vehicle\nfood\nanimal\ndocument")
    page.click("#classify-index")
    page.wait_for_selector("#classify-preview-ready")
    text = page.locator("#classify-preview").inner_text()
    assert "vehicle" in text and "food" in text and page.locator("#classify-preview img").count() >= 2
    # an example opens the viewer, which steps through all the examples
    n_ex = page.locator("#classify-preview button[data-imgrag-i]").count()
    page.locator("#classify-preview button[data-imgrag-i='1']").click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert page.locator("#imgrag-viewer .iv-pos").inner_text() == f"2 of {n_ex}"
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    page.wait_for_function("() => !document.querySelector('#classify-status').innerText.includes('previewing')")
    # nothing written by the preview
    assert _api(site, "/search", q="a bus", k=3, label="vehicle")["results"] == []
    page.click("#classify-write")
    page.wait_for_selector("#classify-confirm-text :text('Write the top label')")
    page.click("#classify-write-confirm")
    page.wait_for_selector("#classify-written")
    page.wait_for_function("() => document.querySelector('#classify-status').innerText.trim() === ''")
    got = _api(site, "/search", q="a bus", k=3, label="vehicle")["results"]
    assert got and got[0]["name"] == "bus.png" and got[0]["label"] == "vehicle"
    # the Search tab's label filter selects them
    tab(page, "Search")
    page.get_by_role("button", name="Filters and options").click()
    page.locator("#search-label textarea, #search-label input").first.fill("vehicle")
    page.locator("#search-query textarea, #search-query input").first.fill("a bus")
    page.click("#search-button")
    page.wait_for_function("() => /result/.test(document.querySelector('#search-status').innerText)")
    caps = page.locator("#search-gallery .caption-label").all_inner_texts()
    assert caps and any("bus.png" in c for c in caps)
    # the viewer shows the written label
    page.locator("#search-gallery .thumbnail-item").nth(next(i for i, c in enumerate(caps) if "bus.png" in c)).click()
    page.wait_for_selector("#imgrag-viewer:not([hidden])")
    assert re.search(r"label\s+vehicle", page.locator("#imgrag-viewer .iv-meta").inner_text())
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
    page.locator("#search-label textarea, #search-label input").first.fill("")


def _job_done(page) -> None:
    page.wait_for_function("() => { const j = document.querySelector('#index-job [data-state]');"
                           " return j && j.dataset.state !== 'running'; }", timeout=300_000)


def test_index_tab_adds_and_removes_folders(page, site):
    tab(page, "Index")
    page.wait_for_function("() => document.querySelector('#index-folders').innerText.includes('indexed folder')")
    assert str(site["coll"]) in page.locator("#index-folders").inner_text()
    empty = site["base"] / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no pictures here\n")
    folder = page.locator("#index-folder textarea, #index-folder input").first
    folder.fill(str(empty))
    page.click("#index-button")
    page.wait_for_function("([f]) => document.querySelector('#index-job').innerText.includes('no images found in ' + f)",
                           arg=[str(empty)], timeout=300_000)
    assert "0/0" not in page.locator("#index-job").inner_text()
    more = site["base"] / "more"
    more.mkdir()
    shutil.copy(SAMPLES / "animals/elephant.png", more / "elephant.png")
    shutil.copy(SAMPLES / "vehicles/truck.png", more / "truck.png")
    folder.fill(str(more))
    page.click("#index-button")
    page.wait_for_function("([f]) => document.querySelector('#index-folders').innerText.includes(f)",
                           arg=[str(more)], timeout=300_000)
    _job_done(page)
    rows = {r["path"]: r["items"] for r in _api(site, "/info")["folders"]}
    assert rows[str(more)] == 2 and str(empty) not in rows
    # remove it: pick, ask, confirm
    page.locator("#index-remove-choice input").click()
    page.get_by_role("option", name=str(more), exact=True).click()
    page.click("#index-remove")
    page.wait_for_selector("#index-confirm-text :text('Remove 2 item(s)')")
    page.click("#index-remove-confirm")
    page.wait_for_function("() => document.querySelector('#index-folders-status').innerText.includes('removed 2')")
    assert str(more) not in page.locator("#index-folders").inner_text()
    info = _api(site, "/info")
    assert str(more) not in {r["path"] for r in info["folders"]}
    assert _api(site, "/search", q="a truck", k=3)["results"][0]["name"] != "truck.png"
    page.screenshot(path=str(site["base"] / "index-tab.png"), full_page=True)
