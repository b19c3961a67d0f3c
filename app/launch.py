"""Start the dashboard as its own process and stop it: what the browser tests and the browser
benchmark do, written once.

    process, url = start_dashboard(work_dir, env)      # waits until the server answers
    ...
    stop_dashboard(process)
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

MAIN_SCRIPT = Path(__file__).resolve().parent / "main.py"
START_TIMEOUT_S = 90


class DashboardStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


def free_port() -> int:
    """A local port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_dashboard(work_dir: Path, env: dict[str, str], timeout_s: float = START_TIMEOUT_S,
                    ) -> tuple[subprocess.Popen, str]:
    """`streamlit run app/main.py` on a free local port, in `work_dir` (its log: streamlit.log there),
    in a session of its own; returns the process and its URL once /_stcore/health answers."""
    port = free_port()
    log_path = Path(work_dir) / "streamlit.log"
    with open(log_path, "wb") as log:  # the server keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(MAIN_SCRIPT), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(port)],
            cwd=work_dir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as answer:
                if answer.status == 200:
                    return process, url
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_dashboard(process)
            raise DashboardStartError(f"the dashboard did not start: {log_path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.5)


def stop_dashboard(process: subprocess.Popen) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there after 20 s."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)
