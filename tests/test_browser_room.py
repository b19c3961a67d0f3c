"""The dashboard as a room's shared instrument, in a real browser (Debian's Chromium, driven by
Playwright, against `streamlit run app/main.py`): the participant's name survives a reload, and a
model trained on Penn Treebank, where there is none, cannot be fine-tuned until the Fetch button
has downloaded it, from a mirror this test serves on 127.0.0.1 ($DYNAPRUNE_PTB_URL).

The mirror serves the real files, whose published checksums the download checks, so that test
needs DYNAPRUNE_PTB_DIR (it is skipped, saying so, without it); the dashboard itself runs without
it and with an empty cache. Skipped when /usr/bin/chromium is missing. Every wait is bounded.
"""
from __future__ import annotations

import functools
import http.server
import os
import re
import threading
from pathlib import Path

import pytest

from analysis.lm.download import PTB_SHA256, PTB_URL_ENV_VAR, ptb_files_verified
from app.launch import DashboardStartError, free_port, start_dashboard, stop_dashboard
from tests.test_browser import (
    CHROMIUM,
    PAGE_S,
    open_page,
    page,  # noqa: F401  (the browser tab fixture; it opens this module's server)
    settle,
)

FETCH_S = 120

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output clean
        pass


@pytest.fixture(scope="module")
def ptb_mirror(tmp_path_factory):
    """The base URL of a local HTTP server holding the three PTB files from DYNAPRUNE_PTB_DIR, or
    None without them (then the address is a port nothing listens on: nothing leaves the machine)."""
    source = os.environ.get("DYNAPRUNE_PTB_DIR")
    if not source:
        yield f"http://127.0.0.1:{free_port()}/ptb/"
        return
    root = tmp_path_factory.mktemp("mirror")
    for name in PTB_SHA256:
        (root / name).write_bytes((Path(source) / name).read_bytes())
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def server(samples, ptb_mirror, tmp_path_factory):
    """`streamlit run app/main.py` on a free local port with no Penn Treebank: DYNAPRUNE_PTB_DIR unset,
    an empty cache, and the operator's mirror set to `ptb_mirror`."""
    work = tmp_path_factory.mktemp("room")
    env = {key: value for key, value in os.environ.items() if key != "DYNAPRUNE_PTB_DIR"}
    env.update(DYNAPRUNE_SAMPLES_DIR=str(samples), DYNAPRUNE_RUNS_DIR=str(work / "runs"),
               DYNAPRUNE_HOME=str(work / "home"), DYNAPRUNE_DASHBOARD_THREADS="1", OMP_NUM_THREADS="1",
               XDG_CACHE_HOME=str(work / "cache"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false",
               **{PTB_URL_ENV_VAR: ptb_mirror})
    try:
        process, url = start_dashboard(work, env)
    except DashboardStartError as error:
        pytest.fail(str(error))
    yield {"url": url, "work": work}
    stop_dashboard(process)


def test_the_participants_name_survives_a_reload(server, page):  # noqa: F811
    page.goto(server["url"])
    settle(page)
    open_page(page, "Fine-tune")
    page.get_by_label("Your name").fill("Ada")
    page.get_by_role("button", name="Use this name").click()
    page.get_by_text("Participant: Ada").wait_for()
    settle(page)
    assert re.search(r"[?&]name=Ada(&|$)", page.url), page.url
    page.reload()
    page.get_by_role("heading", name="Fine-tune").first.wait_for()
    settle(page)
    page.get_by_text("Participant: Ada").wait_for()
    assert page.get_by_label("Your name").count() == 0  # not asked again


def test_without_ptb_start_waits_for_the_fetch_then_works(server, page):  # noqa: F811
    if not os.environ.get("DYNAPRUNE_PTB_DIR"):
        pytest.skip("DYNAPRUNE_PTB_DIR is not set: the local mirror serves the real files, whose published "
                    "checksums the download checks")
    page.goto(server["url"])
    settle(page)
    open_page(page, "Data")
    page.get_by_role("combobox", name="Sample").click()
    page.get_by_role("option", name="ptb-small").click()
    page.get_by_role("button", name="Use this sample").click()
    page.get_by_text(re.compile("Penn Treebank, which is not on this machine")).first.wait_for()
    settle(page)
    assert page.get_by_role("button", name=re.compile("Fetch Penn Treebank")).count() == 1  # offered here too

    open_page(page, "Fine-tune")
    start = page.get_by_role("button", name="Start fine-tuning")
    start.wait_for()
    assert start.is_disabled()
    page.get_by_role("button", name=re.compile("Fetch Penn Treebank")).click()
    page.get_by_text("fetched and verified").wait_for(timeout=FETCH_S * 1000)
    settle(page)
    page.wait_for_function(
        "() => [...document.querySelectorAll('button')].some(b => b.innerText.includes('Start fine-tuning') "
        "&& !b.disabled)", timeout=PAGE_S * 1000)
    assert not page.get_by_role("button", name="Start fine-tuning").is_disabled()
    assert page.get_by_role("button", name=re.compile("Fetch Penn Treebank")).count() == 0
    assert ptb_files_verified(server["work"] / "cache" / "dynaprune" / "ptb")
