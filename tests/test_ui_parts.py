"""Pieces of the web UI that issue 18 asks for, called directly (no server, no browser): the Index tab's
progress line (images/s, ETA, "no images found"), the Ask tab's "loading the model…" event, long input cut
where it is echoed, the classify tables whose thumbnails open the viewer, and the Search tab's details for
an item opened outside the results. The same things in Chromium: tests/test_ui_journeys.py, test_ui_viewer.py.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from imgrag.app.web.jobs import JobStatus
from imgrag.retrieval.errors import BadQueryError
from test_ui_core import backend, corpus  # noqa: F401 (fixtures: a fake-embedder index of colour images)
from ui_support import XSS_NAME


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def _tags(html: str) -> list[tuple[str, dict]]:
    p = _Tags()
    p.feed(html)
    return p.tags


def test_job_line_shows_rate_and_eta_while_running_and_no_images_found_after():
    from imgrag.app.web.html import job_html

    st = JobStatus(kind="index", state="running", title="index /photos", done=50, total=200, started=1.0)
    st.finished = 11.0  # 10 s in: 5 images/s, 150 to go
    line = job_html(st)
    assert "50/200 images · 5.0 images/s · ETA 30s" in line and "width:25%" in line
    st = JobStatus(kind="index", state="done", title="index /empty", started=1.0, detail={"scanned": 0})
    st.finished = 2.0
    line = job_html(st)
    assert "no images found in /empty" in line and "0/0" not in line
    st = JobStatus(kind="classify", state="running", title="preview 4 labels", done=3, total=12, started=1.0)
    st.finished = 4.0
    assert "3/12 items · 1.0 items/s · ETA 9s" in job_html(st)


def test_ask_announces_loading_the_model_before_the_first_answer(backend):  # noqa: F811
    from imgrag.app.web.ask_tab import ask_events, needs_loading
    from imgrag.retrieval.generators.base import Generator

    class Slow(Generator):
        """Loads its weights on the first answer, like smollm2."""

        name, text_only, max_images, image_size = "test:slow", True, 4, None

        def __init__(self) -> None:
            self._model = None

        def stream(self, question, items):
            self._model = object()
            yield "It is red [1]."

    gen = Slow()
    backend.config.generator = gen
    assert needs_loading(gen)
    events = list(ask_events(backend, "red", k=3, max_images=2))
    kinds = [k for k, _ in events]
    assert kinds[0] == "loading" and events[0][1] == "test:slow", kinds
    assert "token" in kinds and kinds[-1] == "result"
    assert kinds.index("loading") < kinds.index("token")
    # loaded now: the second question says nothing about loading
    assert not needs_loading(gen)
    assert "loading" not in [k for k, _ in ask_events(backend, "red", k=3, max_images=2)]


def test_echoed_input_is_cut():
    from imgrag.app.web.backend import make_filters
    from imgrag.app.web.html import ERROR_CHARS, error_text
    from imgrag.app.web.viewer import cut

    assert cut("zebra " * 1000) == ("zebra " * 14)[:79] + "…" and len(cut("x" * 5000)) == 80
    assert cut("  a\n b  ") == "a b"
    with pytest.raises(BadQueryError) as e:
        make_filters(after="last tuesday " * 400)
    assert len(str(e.value)) < 100 and "…" in str(e.value)
    msg = error_text(BadQueryError("not a folder: " + "/x" * 4000 + "\nsecond line"))
    assert len(msg) == ERROR_CHARS and msg.endswith("…") and "\n" not in msg


def test_classify_tables_open_the_viewer_and_escape_names():
    from imgrag.app.web.classify_tab import preview_html, results_html

    bad = f"/p/{XSS_NAME}"
    items = [{"id": "/p/cat.jpg", "path": "/p/cat.jpg", "name": "cat.jpg", "score": 0.9},
             {"id": bad, "path": bad, "name": XSS_NAME, "score": 0.5}]
    rows = [{"id": i["id"], "name": i["name"], "label": "<b>cat</b>", "score": 0.8, "top": [("<b>cat</b>", 0.8)]}
            for i in items]
    h = results_html(rows, items)
    tags = _tags(h)
    assert "<b>cat</b>" not in h and "&lt;b&gt;cat&lt;/b&gt;" in h
    assert not any(t == "img" and "onerror" in a for t, a in tags)
    buttons = [a for t, a in tags if t == "button"]
    assert [b["data-imgrag-i"] for b in buttons] == ["0", "1"]
    src = next(a for t, a in tags if "data-imgrag-source" in a)["data-imgrag-source"]
    data = next(a for t, a in tags if a.get("class") == "imgrag-data")
    assert data["data-for"] == src == "classify-results"
    assert [it["id"] for it in json.loads(data["data-items"])] == ["/p/cat.jpg", bad]

    detail = {"counts": {"cat": 2, "<i>dog</i>": 1}, "examples": {"cat": ["/p/cat.jpg", "/p/gone.jpg"],
                                                                  "<i>dog</i>": [bad]}}
    h = preview_html(detail, {"/p/cat.jpg": items[0], bad: items[1]})  # gone.jpg: no longer indexed
    tags = _tags(h)
    assert "<i>dog" not in h and "nothing is written" in h
    assert [a["data-imgrag-i"] for t, a in tags if t == "button"] == ["0", "1"]
    data = next(a for t, a in tags if a.get("class") == "imgrag-data")
    assert data["data-for"] == "classify-examples"
    assert [it["id"] for it in json.loads(data["data-items"])] == ["/p/cat.jpg", bad]
    assert re.search(r"<td><b>cat</b></td><td>2</td>", h)  # most first


def test_details_of_an_item_opened_outside_the_results(backend):  # noqa: F811
    from imgrag.app.web.html import detail_html

    item = backend.search_text("red", 1)[0].to_dict()
    row = dict(backend.row(item["id"]), name="red.png", score=None)  # what the Search tab shows for it
    h = detail_html(row)
    assert "red.png" in h and "score" not in h and "/imgrag/image?id=" in h


def test_details_link_a_document_page_to_that_page():
    from imgrag.app.web.html import detail_html

    page = {"id": "/d/a.pdf#page=3", "path": "/d/a.pdf", "name": "a.pdf", "score": 0.4, "page": 3}
    h = detail_html(page)
    assert "href='/imgrag/preview?id=%2Fd%2Fa.pdf%23page%3D3'" in h and ">open page 3</a>" in h
    photo = {"id": "/p/cat.jpg", "path": "/p/cat.jpg", "name": "cat.jpg", "score": 0.4}
    assert "href='/imgrag/image?id=%2Fp%2Fcat.jpg'" in detail_html(photo)
