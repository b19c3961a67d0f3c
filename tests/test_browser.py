"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against
`streamlit run app/main.py`. Loads the app, moves the pruning slider, launches a short fine-tune
(1 epoch per stage) on the synthetic sample, waits for it and finds its curve on the Compare page.
Saves a screenshot of each page; with DYNAPRUNE_SCREENSHOTS=docs/screenshots they become the
README's pictures, otherwise they go to a temporary directory.

Skipped when /usr/bin/chromium is missing (install Debian's package: apt-get install chromium).
Every wait is bounded.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from analysis import jobs
from app.launch import DashboardStartError, start_dashboard, stop_dashboard

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("DYNAPRUNE_SCREENSHOTS")
                   or Path(os.environ.get("TMPDIR", "/tmp")) / "dynaprune-screenshots")
PAGE_S = 60
FINE_TUNE_S = 600
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no browser at {CHROMIUM} (apt-get install chromium)"),
]


def prune_command_available() -> bool:
    from analysis.cli import COMMANDS

    return "prune" in COMMANDS


@pytest.fixture(scope="module")
def server(samples, tmp_path_factory):
    """`streamlit run app/main.py` on a free local port, with its own runs folder and jobs home."""
    work = tmp_path_factory.mktemp("dashboard")
    env = dict(os.environ, DYNAPRUNE_SAMPLES_DIR=str(samples), DYNAPRUNE_RUNS_DIR=str(work / "runs"),
               DYNAPRUNE_HOME=str(work / "home"), DYNAPRUNE_DASHBOARD_THREADS="1", OMP_NUM_THREADS="1",
               STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    try:
        process, url = start_dashboard(work, env)
    except DashboardStartError as error:
        pytest.fail(str(error))
    yield {"url": url, "work": work, "env": env}
    for job in jobs.list_jobs(home=work / "home"):
        if not job.finished:
            jobs.cancel(job.id, kill_timeout_s=5, home=work / "home")
            jobs.wait(job.id, timeout_s=30, home=work / "home")
    stop_dashboard(process)


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=CHROMIUM_FLAGS, viewport={"width": 1440, "height": 1100})
        context.set_default_timeout(PAGE_S * 1000)
        tab = context.pages[0] if context.pages else context.new_page()
        try:
            yield tab
        finally:
            context.close()


def settle(tab) -> None:
    """Wait until Streamlit has finished running the page's script."""
    tab.wait_for_timeout(300)
    tab.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=PAGE_S * 1000)
    tab.wait_for_timeout(300)


def open_page(tab, title: str) -> None:
    tab.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True).click()
    tab.get_by_role("heading", name=re.compile(title)).first.wait_for()
    settle(tab)


def metric_value(tab, label: str) -> str:
    box = tab.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text()


def screenshot(tab, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=False)


def test_explore_and_move_the_pruning_slider(server, page):
    page.goto(f"{server['url']}/data")  # the start page is the default; tests/test_browser_workshop.py walks it
    page.get_by_text("Current trajectory").wait_for()
    settle(page)
    assert "synthetic" in page.locator("section.main, [data-testid='stMain']").first.inner_text()
    screenshot(page, "data")

    for title, name in [("Trajectories", "trajectories"), ("Dynamics", "dynamics")]:
        open_page(page, title)
        page.locator(".js-plotly-plot").first.wait_for()
        screenshot(page, name)

    open_page(page, "Prune")
    page.locator(".js-plotly-plot").first.wait_for()
    before = int(metric_value(page, "Units pruned in all"))
    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    slider.focus()
    for _ in range(6):  # 0.5 -> 0.2 in steps of 0.05
        slider.press("ArrowLeft")
    page.wait_for_function(
        "([label, old]) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')]"
        ".some(m => m.innerText.includes(label) && !m.innerText.includes(String(old)))",
        arg=["Units pruned in all", before], timeout=PAGE_S * 1000)
    settle(page)
    after = int(metric_value(page, "Units pruned in all"))
    assert after < before
    screenshot(page, "prune")

    open_page(page, "The method")
    page.locator(".katex").first.wait_for()
    screenshot(page, "learn")


def test_a_pruning_slider_move_reruns_only_the_preview(server, page):
    """Everything below the Prune page's title is one fragment: a slider move reruns it, not the page
    around it (the navigation, the trajectory's loading, the sidebar), as the server reports."""
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    finished = []

    def frame(payload) -> None:
        if isinstance(payload, (bytes, bytearray)):
            message = ForwardMsg()
            message.ParseFromString(bytes(payload))
            if message.WhichOneof("type") == "script_finished":
                finished.append(ForwardMsg.ScriptFinishedStatus.Name(message.script_finished))

    def watch(socket) -> None:
        socket.on("framereceived", frame)

    page.on("websocket", watch)
    try:
        page.goto(server["url"])
        settle(page)
        open_page(page, "Prune")
        assert finished[-1] == "FINISHED_SUCCESSFULLY"  # opening a page runs it whole
        before = int(metric_value(page, "Units pruned in all"))
        finished.clear()
        slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
        slider.focus()
        slider.press("ArrowRight")
        page.wait_for_function(
            "([label, old]) => [...document.querySelectorAll('[data-testid=\"stMetric\"]')]"
            ".some(m => m.innerText.includes(label) && !m.innerText.includes(String(old)))",
            arg=["Units pruned in all", before], timeout=PAGE_S * 1000)
        settle(page)
        assert int(metric_value(page, "Units pruned in all")) > before
        assert finished and set(finished) == {"FINISHED_FRAGMENT_RUN_SUCCESSFULLY"}, finished
    finally:
        page.remove_listener("websocket", watch)


def test_reference_results_offline_with_one_unpruned_perplexity(server, page):
    """The runs behind docs/results.md come with the project: Compare shows them without any run of
    one's own (it runs before the fine-tuning test adds one), their unpruned baseline is the number
    the Prune page shows, and the trade-off view draws them against the unpruned model and the control."""
    from analysis.reference_runs import find_reference_runs

    if not find_reference_runs(corpus="synthetic"):
        pytest.skip("no reference runs in docs/reference-runs/synthetic (python benchmarks/results.py writes them)")
    page.goto(server["url"])
    settle(page)
    open_page(page, "Prune")
    unpruned = metric_value(page, "Unpruned validation perplexity (full split)")
    open_page(page, "Compare")
    curves = page.locator(".js-plotly-plot").first
    curves.wait_for()
    assert "reference: dynamics-greedy-50" in curves.inner_text()
    assert f"baseline {unpruned}" in curves.inner_text()
    tradeoff = page.locator(".js-plotly-plot").nth(1)
    tradeoff.wait_for()
    assert "frontier" in tradeoff.inner_text() and "control" in tradeoff.inner_text()
    screenshot(page, "compare-reference")
    tradeoff.scroll_into_view_if_needed()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    tradeoff.screenshot(path=str(SCREENSHOTS / "tradeoff.png"))
    if find_reference_runs(corpus="ptb"):  # the PTB evidence, the same way
        corpus = page.get_by_role("combobox", name="Corpus")
        corpus.click()
        corpus.fill("Penn Treebank")
        corpus.press("Enter")
        settle(page)
        curves = page.locator(".js-plotly-plot").first
        curves.wait_for()
        assert "reference: magnitude-50" in curves.inner_text()
        curves.screenshot(path=str(SCREENSHOTS / "reference-ptb.png"))
        settle(page)
        tradeoff = page.locator(".js-plotly-plot").nth(1)
        tradeoff.wait_for()
        assert "frontier" in tradeoff.inner_text()
        tradeoff.scroll_into_view_if_needed()
        tradeoff.screenshot(path=str(SCREENSHOTS / "tradeoff.png"))  # the PTB trade-off is the one to show


@pytest.mark.skipif(not prune_command_available(), reason="the `dynaprune prune` command is not installed")
@pytest.mark.timeout(FINE_TUNE_S + 300)
def test_fine_tune_in_the_background_then_compare(server, page):
    page.goto(server["url"])
    settle(page)
    open_page(page, "Fine-tune")
    page.get_by_label("Epochs per stage", exact=True).fill("1")
    page.get_by_role("textbox", name="Output folder name").fill("browser-run")
    page.get_by_role("button", name="Start fine-tuning").click()
    page.get_by_text(re.compile(r"Job \S+ is (queued|running)")).wait_for()
    settle(page)
    screenshot(page, "finetune")

    home = Path(server["env"]["DYNAPRUNE_HOME"])
    (job,) = jobs.list_jobs(home=home)
    finished = jobs.wait(job.id, timeout_s=FINE_TUNE_S, home=home)
    assert finished.state == jobs.SUCCEEDED, jobs.read_log(job.id, tail=40, home=home)
    # the live panel polls every few seconds; it must show the job's true end state by itself
    page.get_by_text("succeeded: finished").first.wait_for(timeout=PAGE_S * 1000)

    page.get_by_role("button", name="Compare").click()
    page.get_by_role("heading", name="Compare").first.wait_for()
    settle(page)
    plot = page.locator(".js-plotly-plot").first
    plot.wait_for()
    legend = plot.inner_text()
    assert "browser-run" in legend and "zero-shot" in legend
    download = page.get_by_role("button", name=re.compile("Download final.pt"))
    download.wait_for(timeout=PAGE_S * 1000)  # below the table, drawn after it
    assert download.count() == 1
    screenshot(page, "compare")
