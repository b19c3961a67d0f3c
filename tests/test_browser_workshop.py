"""The dashboard as a workshop instrument, in a real browser (Debian's Chromium through Playwright,
the server and page of tests/test_browser.py) at 1280x720: a newcomer opens the start page, follows
its path through every page, steps through the method with the step in the address, opens a link a
teacher handed out and presses Reset. Every request the browser makes along the way is recorded:
none may leave the machine (no remote fonts, icons, images or telemetry).

Skipped when /usr/bin/chromium is missing. Every wait is bounded.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qs, urlparse

import pytest

from app.method_steps import STEPS
from tests import test_browser
from tests.test_browser import CHROMIUM, screenshot, settle

# the dashboard server and the Chromium page of the browser tests, one of each for this module too
server = test_browser.server
page = test_browser.page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]

WORKSHOP_SCREEN = {"width": 1280, "height": 720}
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
IN_PAGE_SCHEMES = {"data", "blob", "about"}  # never a network request
PATH_HEADINGS = ["Data", "Trajectories", "Dynamics", "Prune", "Fine-tune", "Compare", "The method, step by step"]


def is_local(url: str) -> bool:
    parsed = urlparse(url)
    return parsed.scheme in IN_PAGE_SCHEMES or parsed.hostname in LOCAL_HOSTS


def query(tab) -> dict:
    return {key: values[-1] for key, values in parse_qs(urlparse(tab.url).query).items()}


def main_text(tab) -> str:
    return tab.locator("[data-testid='stMain']").first.inner_text()


def sidebar_text(tab) -> str:
    return tab.locator("[data-testid='stSidebar']").first.inner_text()


def assert_fits_the_width(tab) -> None:
    """Nothing in the page is wider than the window: no sideways scrolling at 1280x720."""
    overflow = tab.evaluate("() => { const m = document.querySelector('[data-testid=\"stMain\"]');"
                            " return Math.max(m.scrollWidth - m.clientWidth,"
                            " document.documentElement.scrollWidth - window.innerWidth); }")
    assert overflow <= 1, f"{tab.url}: {overflow}px wider than the window"


def go_to_start(tab) -> None:
    tab.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Start here", exact=True).click()
    tab.get_by_role("heading", name="dynaprune").first.wait_for()
    settle(tab)


def test_a_newcomer_follows_the_path_and_resets_without_a_request_leaving_the_machine(server, page):
    requests = []
    record_request = lambda request: requests.append(request.url)  # noqa: E731
    record_socket = lambda socket: requests.append(socket.url)  # noqa: E731
    page.on("request", record_request)
    page.on("websocket", record_socket)
    page.set_viewport_size(WORKSHOP_SCREEN)
    try:
        page.goto(server["url"])
        page.get_by_role("heading", name="dynaprune").first.wait_for()
        settle(page)
        assert "sample: synthetic" in main_text(page) and "Penn Treebank" in main_text(page)
        assert query(page) == {"source": "synthetic"}
        assert_fits_the_width(page)
        screenshot(page, "start")

        for number, heading in enumerate(PATH_HEADINGS, start=1):
            if number > 1:
                go_to_start(page)
            main = page.locator("[data-testid='stMain']").first
            main.get_by_role("link", name=re.compile(rf"^{number}\. ")).click()
            page.get_by_role("heading", name=heading).first.wait_for()
            settle(page)
            assert_fits_the_width(page)
            assert query(page).get("source") == "synthetic", page.url  # the address keeps naming the trajectory

        # The method, one step at a time, the step in the address; every step fits the screen's width
        for number, step in enumerate(STEPS, start=1):
            if number > 1:
                page.get_by_role("button", name="Next").click()
            page.get_by_role("heading", name=f"{number}. {step.title}").wait_for()
            settle(page)
            assert query(page) == {"source": "synthetic", "step": step.slug}
            page.locator(".katex").first.wait_for()
            page.locator(".js-plotly-plot").first.wait_for()
            assert_fits_the_width(page)
            screenshot(page, f"learn-{step.slug}")

        # a link a teacher handed out: another sample, a later step
        page.goto(f"{server['url']}/learn?source=ptb-small&step=distance")
        page.get_by_role("heading", name=re.compile(r"^4\. Measure")).wait_for()
        settle(page)
        assert "sample: ptb-small" in sidebar_text(page)
        assert query(page) == {"source": "ptb-small", "step": "distance"}

        page.get_by_role("button", name="Reset to the sample").click()
        page.get_by_role("heading", name="dynaprune").first.wait_for()
        settle(page)
        assert "sample: synthetic" in sidebar_text(page) and "sample: synthetic" in main_text(page)
        assert query(page) == {"source": "synthetic"}
    finally:
        page.remove_listener("request", record_request)
        page.remove_listener("websocket", record_socket)
    assert any(urlparse(url).path.startswith("/_stcore") for url in requests), "the recording saw the page load"
    assert [url for url in requests if not is_local(url)] == []
