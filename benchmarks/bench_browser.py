"""Benchmark: how quickly the dashboard answers in a real browser.

Starts `streamlit run app/main.py` on a free loopback port, drives Debian's Chromium with
Playwright and measures, for each embedded sample (synthetic, then ptb-small):

1. the first visit of every page (cold caches: one fresh server for the whole run, and each sample's
   pages are visited once, in the sidebar's order; the first page with a chart also loads the
   browser's plotting library);
2. slider moves on the Prune page, one step of 0.05 at a time with the keyboard: first down from
   0.5 to 0.0, then up to 0.9, so that each ratio is new once and some are revisited (cached);
3. criterion switches on the Prune page (every criterion once, then back to the default).

A time runs from the input event in the page (keydown, pointerdown) to the last change of the page
after Streamlit has reported the end of the script run: the page has finished re-rendering, plots
included (no DOM change for QUIET_MS afterwards). It prints median, min and max, compares them with
the targets (slider: 300 ms synthetic, 500 ms ptb-small; first visits of Trajectories and Dynamics:
2 s), and prints the machine's load averages (os.getloadavg) beside each section: on a busy machine
every figure is slower. Beside the times: when the server's last message arrived, and the CPU time
the server and the browser spent (read from /proc; "browser" counts Chromium, Playwright's driver
and this script). CPU times vary less with the machine's load than wall times, and say which side
to make faster.

ptb-small's zero-shot perplexity needs Penn Treebank ($DYNAPRUNE_PTB_DIR or --ptb-dir); without
it that page shows a warning instead, and the slider is measured all the same.

    python benchmarks/bench_browser.py
    DYNAPRUNE_PTB_DIR=/path/to/ptb python benchmarks/bench_browser.py --samples synthetic ptb-small
    python benchmarks/bench_browser.py --quick          # fewer moves, synthetic only
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from app.launch import DashboardStartError, start_dashboard, stop_dashboard  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SLIDER_TARGET_S = {"synthetic": 0.3, "ptb-small": 0.5}
FIRST_VISIT_TARGET_S = {"Trajectories": 2.0, "Dynamics": 2.0}
QUIET_MS = 500       # no DOM change for this long after the run ended: the page has settled
STEP_S = 120         # the longest any one measured action may take

# Installed once per document: remembers the time of the last DOM change and of the last input
# event while armed, both on the page's own clock (performance.now()).
WATCH_JS = """() => {
  if (window.__bench) return;
  const bench = window.__bench = {last: performance.now(), start: null, armed: false};
  new MutationObserver(() => { bench.last = performance.now(); })
    .observe(document, {subtree: true, childList: true, attributes: true, characterData: true});
  const arm = () => { if (bench.armed) { bench.start = performance.now(); bench.armed = false; } };
  document.addEventListener('keydown', arm, true);
  document.addEventListener('pointerdown', arm, true);
}"""
# Installed before any script of the page: the time the last message from the server arrived.
MESSAGES_JS = """(() => {
  const Native = window.WebSocket;
  window.WebSocket = function (...args) {
    const socket = new Native(...args);
    socket.addEventListener('message', () => { window.__lastMessage = performance.now(); });
    return socket;
  };
  window.WebSocket.prototype = Native.prototype;
  Object.assign(window.WebSocket, {CONNECTING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3});
})();"""
SETTLED_JS = """(quiet) => !document.querySelector('[data-testid="stStatusWidget"]')
  && !document.querySelector('[data-stale="true"]')
  && performance.now() - window.__bench.last > quiet"""
STATE_JS = """() => ({
  running: !!document.querySelector('[data-testid="stStatusWidget"]'),
  stale: [...document.querySelectorAll('[data-stale="true"]')].map(e => e.innerText.slice(0, 60)).slice(0, 3),
  quiet_ms: performance.now() - window.__bench.last, url: location.href})"""


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} / {five:.2f} / {fifteen:.2f} (1 / 5 / 15 min) on {os.cpu_count()} cores"


def cpu_seconds(root: int, leave_out: int | None = None) -> float:
    """CPU time (user + system) of process `root` and all its descendants now alive, without the
    subtree of `leave_out`: what the dashboard server, or the browser, has used so far."""
    parents, times = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def inside(pid: int) -> bool:
        while pid and pid != leave_out:
            if pid == root:
                return True
            pid = parents.get(pid, 0)
        return False

    return sum(seconds for pid, seconds in times.items() if inside(pid))


def start_server(work: Path, samples: Path, ptb_dir: str | None) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, DYNAPRUNE_SAMPLES_DIR=str(samples), DYNAPRUNE_RUNS_DIR=str(work / "runs"),
               DYNAPRUNE_HOME=str(work / "home"), STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    if ptb_dir:
        env["DYNAPRUNE_PTB_DIR"] = ptb_dir
    try:
        return start_dashboard(work, env)
    except DashboardStartError as error:
        sys.exit(str(error))


class Session:
    """One browser tab on the dashboard, counting the script runs the server reports as finished."""

    def __init__(self, tab, server_pid: int):
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.tab = tab
        self.server_pid = server_pid
        self.cpu = (0.0, 0.0)  # of the last timed action: CPU seconds of the server and of the browser
        self.finished = 0
        self.server_s = 0.0  # of the last timed action: until the server's last message arrived
        self.forward_msg = ForwardMsg
        tab.on("websocket", self._watch)

    def _watch(self, socket_) -> None:
        socket_.on("framereceived", self._frame)

    def _frame(self, payload) -> None:
        if isinstance(payload, (bytes, bytearray)):
            message = self.forward_msg()
            try:
                message.ParseFromString(bytes(payload))
            except Exception:  # noqa: BLE001 - not a ForwardMsg: nothing to count
                return
            if message.WhichOneof("type") == "script_finished":
                self.finished += 1

    def timed(self, action) -> float:
        """Seconds from the input event `action` causes to the settled page."""
        self.tab.evaluate(WATCH_JS)
        self.tab.evaluate("() => { window.__bench.start = null; window.__bench.armed = true; }")
        runs = self.finished
        server_cpu, browser_cpu = self._cpu()
        action()
        deadline = time.monotonic() + STEP_S
        # Settled, and the server has reported the end of the run the action started (counted from
        # the socket, so a page that looks settled before the run even began is not taken for done).
        # No busy polling from here: it would take CPU from the dashboard it measures.
        self.settle()
        while self.finished == runs:
            if time.monotonic() > deadline:
                raise TimeoutError("the dashboard never finished the script run")
            self.tab.wait_for_timeout(100)
            self.settle()
        server_now, browser_now = self._cpu()
        self.cpu = (server_now - server_cpu, browser_now - browser_cpu)
        start, last, message = self.tab.evaluate(
            "() => [window.__bench.start, window.__bench.last, window.__lastMessage]")
        if start is None:
            raise RuntimeError("the action caused no input event in the page")
        self.server_s = max(0.0, min(message, last) - start) / 1000
        return max(0.0, last - start) / 1000

    def _cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the server and of everything else this script started (the browser
        and Playwright's driver; the quiet wait adds a little of the latter)."""
        return cpu_seconds(self.server_pid), cpu_seconds(os.getpid(), leave_out=self.server_pid)

    def settle(self) -> None:
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        self.tab.evaluate(WATCH_JS)
        try:
            self.tab.wait_for_function(SETTLED_JS, arg=QUIET_MS, timeout=STEP_S * 1000, polling=100)
        except PlaywrightTimeout:
            state = self.tab.evaluate(STATE_JS)
            raise TimeoutError(f"the page did not settle within {STEP_S} s: {state}") from None


def summary(seconds: list[float]) -> str:
    if not seconds:
        return "none"
    return (f"median {statistics.median(seconds) * 1e3:6.0f} ms (min {min(seconds) * 1e3:.0f}, "
            f"max {max(seconds) * 1e3:.0f}, n = {len(seconds)})")


def verdict(value: float, target: float) -> str:
    return f"target {target * 1e3:.0f} ms: {'met' if value <= target else 'MISSED'} ({value / target:.2f}x)"


def open_page(session: Session, title: str) -> float:
    link = session.tab.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title, exact=True)
    return session.timed(link.click)


def choose_sample(session: Session, name: str) -> None:
    tab = session.tab
    open_page(session, "Data")
    tab.get_by_role("combobox", name="Sample").click()
    tab.get_by_role("option", name=name, exact=True).click()
    session.settle()
    tab.get_by_role("button", name="Use this sample").click()
    tab.get_by_text(f"Current trajectory: sample: {name}").wait_for(timeout=STEP_S * 1000)
    session.settle()


def slider_value(session: Session) -> float:
    return float(session.tab.locator('[data-testid="stSlider"] input[type="range"]').first.input_value())


def bench_sample(context, url: str, server_pid: int, name: str, moves: int) -> dict:
    tab = context.new_page()
    session = Session(tab, server_pid)
    results = {"load_start": load()}
    tab.goto(url)
    tab.locator('[data-testid="stSidebarNav"] a').first.wait_for(timeout=STEP_S * 1000)
    session.settle()
    # a link's text is its icon's name, then its title; the landing page's link is the page's own address
    links = tab.locator('[data-testid="stSidebarNav"] a').all()
    pages = [link.inner_text().strip().split("\n")[-1] for link in links]
    here = tab.url.split("?")[0].rstrip("/")
    landing = next(page for page, link in zip(pages, links)
                   if (link.get_attribute("href") or "").split("?")[0].rstrip("/") == here)
    if name != "synthetic":
        choose_sample(session, name)
    visits, visit_parts = {}, {}
    for title in [page for page in pages if page != landing] + [landing]:
        visits[title] = open_page(session, title)
        visit_parts[title] = (session.server_s, *session.cpu)
    results["visits"], results["visit_parts"], results["landing"] = visits, visit_parts, landing
    results["load_visits"] = load()

    open_page(session, "Prune")
    slider = tab.locator('[data-testid="stSlider"] input[type="range"]').first
    new, revisited, server, cpu, seen = [], [], [], [], {round(slider_value(session), 2)}
    keys = ["ArrowLeft"] * round(slider_value(session) / 0.05) + ["ArrowRight"] * round(0.9 / 0.05)
    for key in keys[:moves]:
        slider.focus()
        seconds = session.timed(lambda key=key: slider.press(key))
        value = round(slider_value(session), 2)
        (revisited if value in seen else new).append(seconds)
        server.append(session.server_s)
        cpu.append(session.cpu)
        seen.add(value)
    results["slider_new"], results["slider_revisited"], results["slider_server"] = new, revisited, server
    results["slider_cpu"] = cpu
    results["load_slider"] = load()

    switches = []
    for criterion in ["dynamics", "magnitude", "random", "dynamics-greedy"]:
        tab.get_by_role("combobox", name="Criterion").click()
        option = tab.get_by_role("option", name=criterion, exact=True)
        option.wait_for(timeout=STEP_S * 1000)
        switches.append((criterion, session.timed(option.click)))
    results["criterion"] = switches
    results["load_criterion"] = load()
    tab.close()
    return results


def report(name: str, results: dict) -> None:
    print(f"\n== {name} ==  ({results['load_start']} at the start)")
    print(f"first visits ({results['load_visits']} after them):")
    for title, seconds in results["visits"].items():
        target = FIRST_VISIT_TARGET_S.get(title)
        note = ("(warm: the page the dashboard opened on)" if title == results["landing"] else
                "(warm: the sample was chosen there)" if title == "Data" and name != "synthetic" else
                verdict(seconds, target) if target else "")
        server, server_cpu, browser_cpu = results["visit_parts"][title]
        print(f"  {title:13s} {seconds * 1e3:7.0f} ms  (server's last message at {server * 1e3:.0f} ms; CPU: "
              f"server {server_cpu * 1e3:.0f} ms, browser {browser_cpu * 1e3:.0f} ms)  {note}")
    target = SLIDER_TARGET_S.get(name)
    print(f"Prune slider ({results['load_slider']} after the moves):")
    for label, seconds in (("new ratio", results["slider_new"]), ("revisited ratio", results["slider_revisited"])):
        note = verdict(statistics.median(seconds), target) if seconds and target else ""
        print(f"  {label:16s} {summary(seconds)}  {note}")
    print(f"  of which until the server's last message: {summary(results['slider_server'])}; the rest is the "
          "browser drawing")
    server_cpu, browser_cpu = zip(*results["slider_cpu"])
    print(f"  CPU time per move: server median {statistics.median(server_cpu) * 1e3:.0f} ms, browser median "
          f"{statistics.median(browser_cpu) * 1e3:.0f} ms (wall times stretch by the share of the cores they get)")
    print(f"criterion switch ({results['load_criterion']} after them):")
    for criterion, seconds in results["criterion"]:
        note = "(seen before: cached) " if criterion == "dynamics-greedy" else ""
        if target:
            note += f"against the slider's {verdict(seconds, target)}"
        print(f"  to {criterion:16s} {seconds * 1e3:7.0f} ms  {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", nargs="+", default=["synthetic", "ptb-small"])
    parser.add_argument("--moves", type=int, default=28, help="slider moves per sample (at most 28)")
    parser.add_argument("--ptb-dir", default=os.environ.get("DYNAPRUNE_PTB_DIR"))
    parser.add_argument("--samples-dir", default=os.environ.get("DYNAPRUNE_SAMPLES_DIR")
                        or str(REPO_ROOT / "sample_checkpoints"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.moves = ["synthetic"], 8
    if not CHROMIUM.is_file():
        sys.exit(f"no browser at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    ptb = args.ptb_dir or "not set (no zero-shot perplexity on ptb-small)"
    print(f"{load()} before starting; Penn Treebank: {ptb}")
    with tempfile.TemporaryDirectory(prefix="dynaprune-bench-browser-") as work:
        work = Path(work)
        process, url = start_server(work, Path(args.samples_dir), args.ptb_dir)
        try:
            with sync_playwright() as playwright:
                context = playwright.chromium.launch_persistent_context(
                    str(work / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                    args=CHROMIUM_FLAGS, viewport={"width": 1440, "height": 1100})
                context.set_default_timeout(STEP_S * 1000)
                context.add_init_script(MESSAGES_JS)
                try:
                    for name in args.samples:
                        report(name, bench_sample(context, url, process.pid, name, args.moves))
                finally:
                    context.close()
        finally:
            stop_dashboard(process)
    print(f"\n{load()} at the end")


if __name__ == "__main__":
    main()
