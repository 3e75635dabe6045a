"""A sweep's report: the table (terminal and markdown) and the figure, written into its folder."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from charlm.report.events import find_runs
from charlm.report.summary import COLUMNS, RunSummary, best, groups, scored, verdict

APART = (
    "These runs are of different corpora or vocabularies, whose perplexities do not compare:"
    " each has its own table and best."
)


def table(runs: list[RunSummary], label: str = "") -> Table:
    """The report's table for the terminal (rich), the best row marked."""
    winner = best(runs)
    grid = Table(title="charlm sweep report" + (f": {label}" if label else ""), title_justify="left")
    for column in COLUMNS:
        grid.add_column(column, justify="left" if column in ("run", "status") else "right")
    for run in runs:
        mark = run is winner
        cells = list(run.cells().values())
        cells[0] = f"★ {cells[0]}" if mark else cells[0]
        grid.add_row(*cells, style="bold green" if mark else None)
    return grid


def _markdown_table(runs: list[RunSummary]) -> list[str]:
    winner = best(runs)
    lines = [verdict(runs), ""]
    lines += [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("run", "status") else "--:" for c in COLUMNS) + "|",
    ]
    for run in runs:
        cells = list(run.cells().values())
        if run is winner:
            cells = [f"**{c}**" for c in cells]
            cells[0] = f"★ {cells[0]}"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def markdown(runs: list[RunSummary], figure: str | None) -> str:
    notes = ["val loss is the best of the run, in nats per character; val ppl and bpc follow from it;"]
    notes += ["test ppl is scored with the best checkpoint; chars/s counts training only; time is the wall"]
    notes += ["time from the start of training to the end of the test."]
    if figure:
        notes += ["", f"![val perplexity against step, and the best of each run]({figure})"]
    parts = groups(runs)
    lines = ["# Sweep report", ""]
    if len(parts) == 1:
        lines += [*_markdown_table(runs), "", *notes]
    else:  # the notes first: under each heading, one corpus
        lines += [APART, "", *notes]
        for label, members in parts:
            lines += ["", f"## {label}", "", *_markdown_table(members)]
    failures = [r for r in runs if r.error]
    if failures:
        lines += ["", "## Failed jobs", ""] + [f"- **{r.name}**: {r.error}" for r in failures]
    if damaged := [r for r in runs if r.damage]:
        lines += ["", "## Unreadable files", ""] + [
            f"- **{r.name}**: {line}" for r in damaged for line in r.damage
        ]
    samples = [r for r in runs if r.sample]
    if samples:
        lines += ["", "## Samples", "", "The last text each run wrote (TensorBoard's TEXT tab)."]
        for run in samples:
            lines += ["", f"### {run.name}", "", "```text", run.sample, "```"]
    return "\n".join(lines) + "\n"


def figure(runs: list[RunSummary]) -> Any:
    """Val perplexity against step for every run beside a bar of each run's best (a matplotlib
    Figure), the best run marked; None when no run has a finite val score."""
    # by run, not name: two jobs of a sweep may share their overrides; nan and inf points left out
    curves_of = {id(r): [(step, ppl) for step, ppl in r.val_ppl_curve if math.isfinite(ppl)] for r in runs}
    plotted = [r for r in runs if curves_of[id(r)]]
    if not plotted:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display
    import matplotlib.pyplot as plt

    winners = {id(w) for _, members in groups(runs) if (w := best(members))}  # each corpus its own
    colour = {id(r): f"C{i % 10}" for i, r in enumerate(plotted)}  # one colour per run, in both panels
    height = max(4.5, 0.3 * len(plotted))  # room for every bar's label
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [3, 2]})
    for run in plotted:
        steps, ppl = zip(*curves_of[id(run)], strict=True)
        width = 2.8 if id(run) in winners else 1.5
        curves.plot(
            steps, ppl, marker="o", markersize=3, color=colour[id(run)], label=run.name, linewidth=width
        )
    curves.set(xlabel="step", ylabel="val perplexity", title="val perplexity (lower is better)")
    curves.grid(True, alpha=0.3)
    if len(plotted) <= 12:  # beyond that the bars, in the same colours, say which is which
        curves.legend(fontsize="small")
    finite = {id(r) for r in scored(runs)}
    ranked = [r for r in plotted if id(r) in finite]
    values = [r.val_ppl for r in ranked]
    bars.barh(
        [f"★ {r.name}" if id(r) in winners else r.name for r in ranked],
        values,
        color=[colour[id(r)] for r in ranked],
    )
    bars.invert_yaxis()  # job order, top to bottom
    for y, value in enumerate(values):
        bars.text(value, y, f" {value:.3f}", va="center", fontsize="small")
    bars.set(xlabel="best val perplexity", title="best of each run")
    bars.set_xlim(0, max(values, default=1) * 1.2)
    fig.tight_layout()
    return fig


def plot(runs: list[RunSummary], path: Path) -> bool:
    """Save `figure(runs)` to `path`; False: nothing to plot."""
    fig = figure(runs)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(root: Path, console: Console | None = None) -> list[RunSummary]:
    """Write report.md and report.png into `root` for the runs under it, and print the table."""
    runs = find_runs(root)
    if not runs:
        return runs
    figure = root / "report.png"
    has_figure = plot(runs, figure)
    (root / "report.md").write_text(markdown(runs, figure.name if has_figure else None), encoding="utf-8")
    # a log file or pipe has no width: do not squeeze the table into rich's default 80 columns
    console = console or Console(width=None if sys.stdout.isatty() else 160)
    parts = groups(runs)
    if len(parts) > 1:
        console.print(APART)
    for label, members in parts:
        console.print(table(members, label))
        console.print(verdict(members).replace("**", ""))
    console.print(f"report: {root / 'report.md'}" + (f", {figure}" if has_figure else ""))
    return runs
