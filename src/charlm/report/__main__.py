"""python -m charlm.report FOLDER: which run won, by how much, at what cost.

Everything comes from the event files that every run writes, through TensorBoard's own reader, so
a report can be rebuilt at any time, also for runs still going or killed:

    python -m charlm.report logs/multiruns/2026-11-23_14-05-33    # one sweep
    python -m charlm.report logs                                  # every run under logs/

writes `report.md` (the table, the figure, the last sample of each run) and `report.png` (val
perplexity against step, one line per run, beside the best val perplexity of each) into that
folder, and prints the table. A multirun does this by itself when it ends (`SweepReport`, a Hydra
callback set in conf/hydra/default.yaml, `charlm.report.sweep`).

Runs of different corpora or vocabularies get a table, and a best, each. A file that cannot be read
whole (a damaged events file) gets one line on stderr, its run the status `damaged` and no figures,
and the exit status is 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from charlm.report.render import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m charlm.report",
        description="Rebuild report.md and report.png from the TensorBoard event files under a folder.",
    )
    parser.add_argument(
        "folder", type=Path, help="a multirun directory (logs/multiruns/<date>_<time>) or logs/"
    )
    folder = parser.parse_args(argv).folder
    if not folder.is_dir():
        parser.exit(2, f"error: {folder} is not a folder: give a multirun directory or logs/\n")
    try:
        runs = write_report(folder)
    except OSError as err:  # report.md or report.png
        why = f"cannot write the report into {folder} ({err.strerror})"
        parser.exit(1, f"error: {why}: give a folder you can write to\n")
    if not runs:
        parser.exit(
            1, f"error: no TensorBoard event files under {folder}: is it a run or multirun directory?\n"
        )
    for line in (line for run in runs for line in run.damage):
        print(f"error: {line}", file=sys.stderr)
    return 1 if any(run.damage for run in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
