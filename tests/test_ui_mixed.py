"""The Search tab over photos and a PDF in one index, in real headless Chromium (issue 15, part 1).

A photo query is not emptied by the page text (auto → hybrid used to drop the photos), a mixed query shows
the photo and the page with its matched words, and the relevance slider cuts the score the caption shows.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest

from browser_support import MARKS, captions, chromium, open_page, search  # noqa: F401 (chromium: a fixture)
from ui_support import SAMPLES, Server, build_lite_index

pytestmark = MARKS

PHOTOS = ["animals/cat_chelsea.jpg", "food/bananas.png", "food/teapot.png", "space/rocket_launch.jpg",
          "music/guitar.png", "plants/sunflower.png"]
PAGES = ["Quarterly report: revenue of the flux capacitor division grew by eight percent this year.",
         "Market stall price list: ripe bananas cost two euros a kilo this week, pears three."]


def _search(page, text: str) -> list[str]:
    search(page, text)
    return captions(page)


CUTOFF_IS = ("([v]) => Math.abs(parseFloat(document.querySelector('#search-cutoff input[type=range]').value)"
             " - v) < 1e-6")


def _set_cutoff(page, value: float) -> None:
    """Type the cutoff into the slider's number box, as a user does, and wait until the slider holds it. In 2
    of ~6 CI runs the slider never held the typed value: typed right after the accordion opened, both inputs
    read 0 again (seen with a debug print; Gradio mounting the accordion's content then, it seems). The typing
    is retried (a bounded wait each time), then the slider itself is set; the searches below check that the
    cutoff really applies."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    want = round(value, 2)
    for _ in range(3):
        box = page.locator("#search-cutoff input[type=number]").first
        box.fill(f"{want:.2f}")
        box.press("Enter")
        try:
            page.wait_for_function(CUTOFF_IS, arg=[want], timeout=20_000)
            return
        except PlaywrightTimeout:
            continue
    page.locator("#search-cutoff input[type=range]").first.fill(f"{want:.2f}")
    page.wait_for_function(CUTOFF_IS, arg=[want], timeout=20_000)


def test_mixed_index_search_tab_shows_photos_pages_and_cuts_the_shown_score(tmp_path, chromium):
    fpdf = pytest.importorskip("fpdf")
    pytest.importorskip("pypdfium2")

    coll = tmp_path / "coll"
    coll.mkdir()
    for rel in PHOTOS:
        shutil.copy(SAMPLES / rel, coll / os.path.basename(rel))
    pdf = fpdf.FPDF(format="A4")
    for text in PAGES:
        pdf.add_page()
        pdf.set_font("helvetica", size=12)
        pdf.set_xy(15, 20)
        pdf.multi_cell(180, 6, text)
    pdf.output(str(coll / "report.pdf"))
    idx = tmp_path / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, cache=tmp_path / "cache")
    try:
        page = open_page(chromium, server.url)
        caps = _search(page, "a cat")  # a photo query: the index holds text, so this is hybrid
        assert caps and "cat_chelsea.jpg" in caps[0], caps
        caps = _search(page, "ripe bananas")
        banana = next(c for c in caps if "bananas.png" in c)
        doc = next(c for c in caps if "report.pdf p.2" in c)
        assert "words: ripe, banana" in doc and "words:" not in banana
        shown = float(re.match(r"(\d\.\d{3}) · ", banana).group(1))
        page.get_by_text("Filters and options").click()
        low, high = round(shown - 0.01, 2), round(shown + 0.01, 2)  # the slider's step is 0.01
        _set_cutoff(page, low)
        assert any("bananas.png" in c for c in _search(page, "ripe bananas"))
        _set_cutoff(page, high)
        caps = _search(page, "ripe bananas")
        assert not any("bananas.png" in c for c in caps)
        assert all(float(c.split(" · ")[0]) >= high - 5e-4 for c in caps)  # captions round to 3 places
        page.close()
    finally:
        server.stop()
