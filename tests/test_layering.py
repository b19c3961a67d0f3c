"""The layers stay apart: the analysis library never imports the dashboard's framework, and no
source file reaches outside the project through a hard-coded '../shared' path."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

# Imports every module under analysis/ in a fresh interpreter, then reports what it failed to
# import and whether streamlit got loaded along the way.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import analysis

failed = {}
names = ["analysis"]
for module in pkgutil.walk_packages(analysis.__path__, "analysis.", onerror=lambda name: failed.setdefault(name, "")):
    if module.name.rpartition(".")[2] == "__main__":
        continue  # `python -m` entry points run their command when imported
    names.append(module.name)
    try:
        importlib.import_module(module.name)
    except (Exception, SystemExit) as error:
        failed[module.name] = f"{type(error).__name__}: {error}"
streamlit = sorted(name for name in sys.modules if name == "streamlit" or name.startswith("streamlit."))
print(json.dumps({"modules": names, "failed": failed, "streamlit": streamlit}))
"""


@pytest.mark.slow  # a fresh interpreter imports torch, scipy, pandas, ...: several seconds
def test_importing_all_of_analysis_leaves_streamlit_unloaded():
    done = subprocess.run([sys.executable, "-c", IMPORT_ALL], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert not report["failed"], report["failed"]
    # the walk really went into the subpackages
    assert {"analysis.cli", "analysis.lm.model", "analysis.dynamics.lds"} <= set(report["modules"])
    assert report["streamlit"] == [], "analysis/ must not import streamlit (it is the dashboard's, in app/)"


def test_no_source_file_hard_codes_a_shared_folder():
    offenders = []
    for package in ("analysis", "app"):
        for path in sorted((REPO_ROOT / package).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                data = path.read_bytes()
                if b"../shared" in data or b"..\\shared" in data:
                    offenders.append(str(path.relative_to(REPO_ROOT)))
    assert offenders == [], f"hard-coded '../shared' path in {offenders}; take the location from the environment"
