"""`python -m analysis.cli ...`: the same as the `dynaprune` command."""
import sys

from analysis.cli import main

sys.exit(main())
