"""The browser tests' shared Chromium setup (tests/test_ui_*.py): Debian's chromium driven by Playwright, the
markers and skip reason, one browser per module, a page opened on a server, and the waits every test uses.

Playwright cannot download browsers here, so the tests use ``/usr/bin/chromium`` (.ci/run installs it). A
module gets the browser by importing the :func:`chromium` fixture (``from browser_support import chromium``).
Every wait is for a condition on the page, never a fixed pause.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import pytest

from ui_support import ROOT

CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-output" / "ui"
DOCS_IMG = ROOT / "docs" / "img"
#: headless, offline: nothing Chromium itself would fetch (updates, sync, safe browsing lists)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
HAVE_CHROMIUM = os.path.exists(CHROMIUM)
NO_CHROMIUM = "Debian chromium is not installed (apt-get install chromium); .ci/run installs it"
needs_chromium = pytest.mark.skipif(not HAVE_CHROMIUM, reason=NO_CHROMIUM)
#: ``pytestmark`` of a browser test module
MARKS = [pytest.mark.browser, pytest.mark.slow, needs_chromium]
QUERY_BOX = "#search-query textarea, #search-query input"


@contextmanager
def launched() -> Iterator:
    """A running Chromium (Playwright's sync API allows one per thread at a time)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture(scope="module")
def chromium():
    """One Chromium per test module."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    with launched() as browser:
        yield browser


def open_page(browser, url: str, width: int = 1280, height: int = 900, timeout_ms: int = 120_000,
              ready: str | None = QUERY_BOX):
    """A new page at ``url``, ``width``×``height``, once ``ready`` (a selector) is on it."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    if ready:
        page.wait_for_selector(ready)
    return page


def tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


def seq(page, status: str) -> str:
    """The ``data-seq`` of a status line (each answer gets a new one: app/web/html.py status_html)."""
    return page.evaluate(f"() => document.querySelector('{status} [data-seq]')?.dataset.seq || ''")


def rendered(page) -> None:
    """Wait for the DOM update that just landed to be laid out and painted (two animation frames)."""
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def wait_new(page, status: str, before: str) -> None:
    """Wait until the status line ``status`` shows an answer newer than ``before`` (a ``seq``), painted."""
    page.wait_for_function("([sel, before]) => { const e = document.querySelector(sel + ' [data-seq]');"
                           " return e && e.dataset.seq !== before; }", arg=[status, before])
    rendered(page)


def click_and_wait(page, button: str, status: str) -> None:
    """Click, then wait for the status line to be replaced by this click's answer."""
    before = seq(page, status)
    page.click(button)
    wait_new(page, status, before)


def search(page, text: str) -> None:
    """Run a text search from the Search tab and wait for its answer."""
    tab(page, "Search")
    page.locator(QUERY_BOX).first.fill(text)
    click_and_wait(page, "#search-button", "#search-status")


def captions(page, gallery: str = "#search-gallery") -> list[str]:
    return [c.strip() for c in page.locator(f"{gallery} .caption-label, {gallery} figcaption, "
                                            f"{gallery} .caption").all_inner_texts() if c.strip()]


def viewer_open(page) -> None:
    page.wait_for_selector("#imgrag-viewer:not([hidden])")


def viewer_close(page) -> None:
    page.keyboard.press("Escape")
    page.wait_for_selector("#imgrag-viewer", state="hidden")
