"""The Duplicates tab (app/web/duplicates_tab.py): the rows and HTML built directly, the background search on a
small index, then in headless Chromium against a real `imgrag serve` on a lite index with planted copies (a
resized and a re-encoded copy of a sample photo, and a byte copy of the file named like HTML): the tab shows
the group with the keeper badge first, and clicking a thumbnail opens the viewer on that group. Every wait in
the browser is for a condition, never a fixed pause. Writes docs/img/ui-duplicates.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from datetime import datetime
from html.parser import HTMLParser
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image

from fakes import FakeEmbedder
from imgrag.app.web.backend import Backend, UIConfig
from imgrag.app.web.duplicates_tab import DuplicateFinder, group_rows, groups_html, human_size
from imgrag.indexer.pipeline import IndexOptions, build_index
from imgrag.retrieval.index import Index
from imgrag.retrieval.queries.duplicates import Member
from browser_support import DOCS_IMG, SHOTS, chromium, needs_chromium  # noqa: F401 (chromium: a fixture)
from ui_support import XSS_NAME, Server, build_lite_index, make_lite_corpus


class _Tags(HTMLParser):
    """Every start tag and the text, as a browser's parser sees them (an unescaped name would add tags)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Tags:
    p = _Tags()
    p.feed(html)
    return p


def _group() -> list[Member]:
    """A group as find_duplicates might hand it over, but with the keeper last (the helper must put it first)."""
    return [Member(path=f"/photos/x/{XSS_NAME}", keeper=False, size=2048, width=400, height=300, score=0.93,
                   mtime_ns=1_600_000_000 * 10**9),
            Member(path="/photos/album/copy.jpg", keeper=False, size=900, width=800, height=600, score=1.0,
                   same_file=True, taken_at=datetime(2019, 5, 1, 10, 0)),
            Member(path="/photos/original.jpg", keeper=True, size=3_400_000, width=800, height=600, score=1.0,
                   taken_at=datetime(2019, 5, 1, 10, 0))]


def test_rows_keeper_first_and_facts():
    rows = group_rows([_group()])[0]
    assert [r["keeper"] for r in rows] == [True, False, False]
    assert [r["path"] for r in rows] == ["/photos/original.jpg", f"/photos/x/{XSS_NAME}", "/photos/album/copy.jpg"]
    k, x, c = rows
    assert (k["resolution"], k["size"], k["date"], k["tag"]) == ("800×600", "3.4 MB", "taken 2019-05-01 10:00",
                                                                  "keeper")
    assert x["tag"] == "similarity 0.930" and x["date"].startswith("modified 2020-09-1") and x["size"] == "2.0 KB"
    assert c["tag"] == "same file"
    assert human_size(None) == "?" and human_size(999) == "999 bytes" and human_size(1_500_000_000) == "1.5 GB"


def test_html_escapes_hostile_names_and_counts():
    groups = group_rows([_group(), _group()[1:]])
    h = groups_html(groups, items=42)
    p = _parse(h)
    assert not any(t == "img" and "onerror" in a for t, a in p.tags)  # the name stayed text
    assert all(t in {"div", "button", "img", "span"} for t, _ in p.tags), {t for t, _ in p.tags}
    text = " ".join(p.text)
    assert "2 group(s) of duplicates, 3 image(s) besides the keepers, among 42 images" in text
    assert "Nothing was deleted" in text
    assert XSS_NAME in text  # shown, as text
    assert [a["data-imgrag-source"] for t, a in p.tags if "data-imgrag-source" in a] == ["dups-1", "dups-2"]
    heads = [m.group(0) for m in re.finditer(r"group \d · \d images", h)]
    assert heads == ["group 1 · 3 images", "group 2 · 2 images"]
    # one keeper badge per group, on the first card
    cards = [a for t, a in p.tags if t == "div" and "imgrag-dup-card" in a.get("class", "")]
    assert [("keeper" in a["class"]) for a in cards] == [True, False, False, True, False]
    # the viewer's data: one block per group, in card order, parsed back intact
    blocks = [a for t, a in p.tags if t == "div" and a.get("class") == "imgrag-data"]
    items = json.loads(blocks[0]["data-items"])
    assert [it["id"] for it in items] == [r["id"] for r in groups[0]]
    assert items[1]["name"] == XSS_NAME and ["role", "keeper"] in items[0]["meta"]
    thumbs = [a["src"] for t, a in p.tags if t == "img"]
    assert thumbs[1].startswith("/imgrag/thumb?id=%2Fphotos%2Fx%2F%3Cimg")  # the id is URL-quoted


def test_empty_and_capped():
    none = groups_html([], items=7)
    assert "No duplicates found among 7 images." in none and "imgrag-dup-group" not in none
    many = group_rows([_group()[1:]] * 5)
    h = groups_html(many, items=10, limit=2)
    assert h.count("imgrag-dup-group'") == 2 and "Showing the 2 largest groups" in h


def _scene(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((256, 192),
                                                                                     Image.Resampling.BICUBIC)


def test_finder_runs_in_background_and_reports(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    for s in range(4):
        _scene(s).save(d / f"scene{s}.png")
        os.utime(d / f"scene{s}.png", ns=(10**18, 10**18))  # the originals are the oldest files
    _scene(0).resize((128, 96), Image.Resampling.LANCZOS).save(d / "scene0_small.png")
    _scene(0).save(d / "scene0_q40.jpg", quality=40)
    idx = Index.create_or_open(tmp_path / "idx", FakeEmbedder())
    build_index(idx, [str(d)], IndexOptions(batch_size=4, workers=0))
    finder = DuplicateFinder(Backend(UIConfig(index_root=tmp_path / "idx"), index=idx))
    assert finder.view()[1:] == ("", False)  # nothing run yet: no groups
    # the fake embedder puts every picture here above 0.5: the thumbnail check must keep scenes apart
    finder.start(0.5, False)
    st = finder.wait(120)
    assert st.state == "done", st.message
    status, html, running = finder.view()
    assert not running and "checked 6 images" in status
    p = _parse(html)
    srcs = [a["src"] for t, a in p.tags if t == "img"]
    want = ["/imgrag/thumb?id=" + quote(str(d / n), safe="") for n in ("scene0.png", "scene0_q40.jpg", "scene0_small.png")]
    assert srcs[0] == want[0] and sorted(srcs) == sorted(want), srcs  # one group, the original first
    assert "1 group(s) of duplicates, 2 image(s) besides the keepers, among 6 images" in html
    # a bad threshold is refused before any thread starts
    from imgrag.retrieval.errors import BadQueryError

    with pytest.raises(BadQueryError):
        finder.start(1.5, False)
    # nothing was deleted
    assert len(list(d.iterdir())) == 6


# --- in Chromium ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory):
    base = tmp_path_factory.mktemp("uidups")
    coll = make_lite_corpus(base / "photos")
    cat = coll / "cat_chelsea.jpg"
    os.utime(cat, ns=(10**18, 10**18))  # the original is the oldest file
    img = Image.open(cat).convert("RGB")
    copies = coll / "copies"
    copies.mkdir()
    img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS).save(copies / "cat_small.png")
    img.save(copies / "cat_q30.jpg", quality=30)
    (coll / "album").mkdir()
    shutil.copy(coll / XSS_NAME, coll / "album" / XSS_NAME)  # a hostile name in a group of its own
    idx = base / "idx"
    build_lite_index(coll, idx)
    server = Server(idx, cache=base / "cache", log=SHOTS / "serve-duplicates.log")
    yield server, coll
    server.stop()


@pytest.mark.browser
@pytest.mark.slow
@needs_chromium
def test_tab_shows_groups_with_keeper_and_opens_viewer(site, chromium):
    server, coll = site
    page = chromium.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(180_000)
    try:
        page.goto(server.url)
        page.get_by_role("tab", name="Duplicates", exact=True).click()
        assert "Nothing is deleted" in page.locator("#dups-note").inner_text()
        page.click("#dups-button")
        # whichever answer comes (groups, "no duplicates", an error), then what it says
        page.wait_for_selector("#dups-groups .imgrag-dup-group, #imgrag-dups-none, #dups-status .imgrag-error")
        assert "checked 16 images" in page.locator("#dups-status").inner_text()  # 13 sample files + 3 copies
        groups = page.locator("#dups-groups .imgrag-dup-group")
        paths = [[p.strip() for p in groups.nth(i).locator(".imgrag-dup-path").all_inner_texts()]
                 for i in range(groups.count())]
        cat = next(g for g in paths if any(p.endswith("cat_chelsea.jpg") for p in g))
        assert cat[0] == str(coll / "cat_chelsea.jpg"), paths  # the keeper first: largest, then oldest
        assert sorted(cat[1:]) == [str(coll / "copies" / "cat_q30.jpg"), str(coll / "copies" / "cat_small.png")]
        owl = next(g for g in paths if any(p.endswith(XSS_NAME) for p in g))
        assert sorted(owl) == sorted([str(coll / XSS_NAME), str(coll / "album" / XSS_NAME)]), paths
        gi = paths.index(cat)
        group = groups.nth(gi)
        badges = group.locator(".imgrag-dup-badge").all_inner_texts()
        assert badges[0].strip() == "keeper" and "keeper" not in " ".join(badges[1:]), badges
        assert re.search(r"\d+×\d+ px · [\d.]+ (KB|MB)", group.locator(".imgrag-dup-facts").first.inner_text())
        page.wait_for_function("(i) => [...document.querySelectorAll('#dups-groups .imgrag-dup-group')[i]"
                               ".querySelectorAll('img')].every(im => im.complete && im.naturalWidth > 0)", arg=gi)
        assert page.evaluate("() => window.__xss") is None  # the HTML-like file name stayed text
        group.scroll_into_view_if_needed()
        page.screenshot(path=str(DOCS_IMG / "ui-duplicates.png"))
        # a click on the second thumbnail opens the viewer on that group, at that image
        group.locator("button[data-imgrag-i='1']").click()
        page.wait_for_selector("#imgrag-viewer:not([hidden])")
        assert page.locator("#imgrag-viewer .iv-pos").inner_text().startswith("2 of 3")
        assert page.locator("#imgrag-viewer .iv-name").inner_text() == os.path.basename(cat[1])
        page.wait_for_function("() => document.querySelector('#imgrag-viewer .iv-img').naturalWidth > 0")
        assert "similarity" in page.locator("#imgrag-viewer .iv-meta").inner_text()
        page.screenshot(path=str(SHOTS / "duplicates-viewer.png"))
        page.keyboard.press("Escape")
        page.wait_for_selector("#imgrag-viewer", state="hidden")
        # nothing was deleted
        assert (coll / "copies" / "cat_small.png").exists() and (coll / "album" / XSS_NAME).exists()
    finally:
        page.close()


def test_finder_refuses_a_second_run_and_shows_a_failure(tmp_path, monkeypatch):
    import threading

    import imgrag.retrieval.queries.duplicates as dq
    from imgrag.retrieval.errors import ImgragError

    class _Idx:  # no store needed: the search itself is replaced
        store = None
        root = tmp_path / "idx"

    gate = threading.Event()

    def slow_fail(store, opts):
        gate.wait(60)
        raise ImgragError("the index is being rebuilt; try again when it is done")

    monkeypatch.setattr(dq, "find_duplicates", slow_fail)
    finder = DuplicateFinder(Backend(UIConfig(index_root=tmp_path / "idx"), index=_Idx()))  # type: ignore[arg-type]
    finder.start(0.8, False)
    status, html, running = finder.view()
    assert running and "looking for duplicates" in status and html == ""
    with pytest.raises(ImgragError, match="already running"):
        finder.start(0.8, True)
    gate.set()
    assert finder.wait(60).state == "failed"
    status, html, running = finder.view()
    assert not running and html == "" and "imgrag-error" in status and "being rebuilt" in status
