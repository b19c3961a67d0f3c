"""A sweep on a two-node Ray cluster started on this machine (`ray start --head` and `ray start
--address`, one CPU each): its trials land on both nodes, and killing the worker node mid-sweep
loses nothing (the trial that ran there runs again on the head and resumes).

Slow (about two minutes) and timing-sensitive on a loaded 2-core machine (the worker must die while
its trial runs), so it runs only with DYNAPRUNE_RAY_CLUSTER_TESTS=1. Both nodes bind the loopback
address. The cluster's processes
are ended by their process groups, which this test started, not with `ray stop` (that stops every
Ray process on the machine).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from analysis.sweeps.runner import read_records
from analysis.utils.fileio import read_json_lines
from tests.conftest import REPO_ROOT
from tests.test_sweep import GRID, write_spec

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("DYNAPRUNE_RAY_CLUSTER_TESTS") != "1",
                                 reason="a two-node Ray cluster: set DYNAPRUNE_RAY_CLUSTER_TESTS=1")]
RAY = str(Path(sys.executable).with_name("ray"))
READY = "block forever"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Node:
    """`ray start ... --block` in a session of its own: every process of the node is in its group."""

    def __init__(self, args: list[str], log: Path, env: dict):
        self.log = log
        with open(log, "wb") as handle:
            self.process = subprocess.Popen([RAY, "start", *args, "--block"], stdout=handle, stderr=subprocess.STDOUT,
                                            env=env, start_new_session=True)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while READY not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None and time.monotonic() < deadline, self.log.read_text(errors="replace")
            time.sleep(0.5)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        self.kill(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.kill(signal.SIGKILL)  # the node's daemons too, whether or not the launcher ended
        self.process.wait(30)


@pytest.fixture
def cluster(tmp_path):
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": temp, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    nodes = []
    try:
        head = Node(["--head", "--node-ip-address", "127.0.0.1",
                     "--num-cpus", "1", "--port", str(port), "--temp-dir", temp, "--include-dashboard",
                     "false", "--object-store-memory", "100000000"], tmp_path / "head.log", env)
        nodes.append(head)
        head.wait_ready()
        worker = Node(["--address", f"127.0.0.1:{port}", "--node-ip-address", "127.0.0.1",
                       "--num-cpus", "1", "--object-store-memory", "100000000"],
                      tmp_path / "worker.log", env)
        nodes.append(worker)
        worker.wait_ready()
        yield {"address": f"127.0.0.1:{port}", "env": env, "worker": worker}
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(temp, ignore_errors=True)


def sweep(spec: Path, out: Path, cluster) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "analysis.cli", "sweep", str(spec), "--out", str(out), "--address",
                             cluster["address"]], cwd=REPO_ROOT, env=cluster["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_trials_land_on_both_nodes_and_survive_losing_one(tmp_path, synthetic_sample, cluster):
    spec = write_spec(tmp_path / "grid.toml", synthetic_sample, GRID.replace("stages = 2", "stages = 3"))
    first = sweep(spec, tmp_path / "spread", cluster)
    output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, output
    records = read_records(tmp_path / "spread")
    assert len(records) == 4 and {r["status"] for r in records.values()} == {"succeeded"}
    assert len({r["node_id"] for r in records.values()}) == 2, records  # both nodes ran trials
    assert all(r["host"] and r["prune_pid"] > 0 for r in records.values())

    out = tmp_path / "killed"
    second = sweep(spec, out, cluster)
    deadline = time.monotonic() + 300
    # both nodes busy (one trial each): then the worker node dies with its trial half done
    while len(list(out.glob("trials/*/stage_1"))) < 2:
        assert second.poll() is None and time.monotonic() < deadline, second.communicate()[0]
        time.sleep(0.1)
    cluster["worker"].kill()
    output, _ = second.communicate(timeout=600)
    assert second.returncode == 0, output
    records = read_records(out)
    assert len(records) == 4 and {r["status"] for r in records.values()} == {"succeeded"}, output
    assert sum(r["attempts"] for r in records.values()) >= 5, output  # the lost trial ran again
    for trial in out.glob("trials/*"):  # and nothing was lost or written twice
        kinds = [e["event"] for e in read_json_lines(trial / "metrics.jsonl")]
        assert kinds.count("baseline") == 1 and kinds.count("stage_end") == 3 and kinds.count("final") == 1, kinds
