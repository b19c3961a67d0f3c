"""`dynaprune prune` stops promptly on SIGTERM in every phase (background jobs rely on it)."""
import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # runs `dynaprune prune` in a subprocess


@pytest.mark.parametrize("delay_s", [0.5, 4.0])
def test_sigterm_stops_the_pipeline_quickly_and_resumably(synthetic_sample, tmp_path, delay_s):
    out = tmp_path / "pruned"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "analysis.cli", "prune", "--from", str(synthetic_sample),
                                "--ratio", "0.5", "--epochs-per-stage", "1", "--out", str(out), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    # wait until the command is past its imports and working, then stop it
    deadline = time.monotonic() + 60
    while not (out / "pipeline.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(delay_s)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 143, output
    assert time.monotonic() - sent < 15, "SIGTERM took too long to stop the pipeline"
    assert "run the same command again" in output
    assert not list(out.rglob(".tmp-*")), "a half-written file was left behind"
