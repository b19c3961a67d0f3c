"""Entry point of a job's supervisor process: `python -m analysis.jobs JOB_ID` (see supervisor.py)."""
import sys

from analysis.jobs.supervisor import main

sys.exit(main(sys.argv[1:]))
