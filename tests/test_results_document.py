"""benchmarks/results.py, loaded as a module (it is a script, not part of the package); its tests
are in tests/test_reference_runs.py."""
from __future__ import annotations

import importlib.util
import sys

from tests.conftest import REPO_ROOT

RESULTS_SCRIPT = REPO_ROOT / "benchmarks" / "results.py"


def load_results_module():
    spec = importlib.util.spec_from_file_location("results_script", RESULTS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
