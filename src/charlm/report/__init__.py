"""Sweep reports from TensorBoard events: which run won, by how much, at what cost.

- `events`: a run's figures read back from its event files
- `summary`: one run's row, and the verdict
- `render`: the table and figure, report.md and report.png
- `sweep`: the Hydra callback that writes a multirun's report when it ends
- `board`: a live TensorBoard server, for scripts and tests
- `python -m charlm.report <folder>`: rebuild a report
"""

from charlm.report.events import find_runs, read_run
from charlm.report.render import write_report
from charlm.report.summary import COLUMNS, RunSummary, job_name

__all__ = ["COLUMNS", "RunSummary", "find_runs", "job_name", "read_run", "write_report"]
