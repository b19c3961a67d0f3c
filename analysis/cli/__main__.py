"""`python -m analysis.cli ...`: the same as the `dynaprune` command."""
import sys

from analysis.cli import run_main

sys.exit(run_main())
