"""Which run won, by how much, at what cost: a sweep's table and figure, read from TensorBoard events.

Everything comes from the event files that every run writes, through TensorBoard's own reader, so
a report can be rebuilt at any time, also for runs still going or killed:

    python -m charlm.report logs/multiruns/2026-11-23_14-05-33    # one sweep
    python -m charlm.report logs                                  # every run under logs/

writes `report.md` (the table, the figure, the last sample of each run) and `report.png` (val
perplexity against step, one line per run, beside the best val perplexity of each) into that
folder, and prints the table. A multirun does this by itself when it ends (`SweepReport`, a Hydra
callback set in conf/hydra/default.yaml).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

log = logging.getLogger(__name__)

EVENTS = "events.out.tfevents.*"
ERROR_FILE = "error.txt"  # what a failed sweep job died of (training.train_job writes it)
_SAMPLES_TAG = "samples/text_summary"  # SampleText's TEXT-tab entries
COLUMNS = (
    "run",
    "params",
    "val loss",
    "val ppl",
    "val bpc",
    "test ppl",
    "chars/s",
    "time",
    "epochs",
    "status",
)


def job_name(run_dir: Path) -> str:
    """A sweep job's overrides from its directory name: `1_hidden=256` -> `hidden=256`."""
    return re.sub(r"^\d+_", "", run_dir.name)


def _exp(loss: float) -> float:
    return math.inf if loss >= 709 else math.exp(loss)  # a diverged run's loss would overflow; nan stays nan


@dataclass
class RunSummary:
    """One run's figures, as its events record them (None: not logged, e.g. a run cut short)."""

    name: str
    path: Path
    status: str = "unfinished"  # finished / failed / unfinished (no end recorded: still going, or killed)
    parameters: int | None = None
    val_loss: float | None = None  # the best, nats per character
    test_ppl: float | None = None
    chars_per_sec: float | None = None  # training only, validation left out
    wall_time: float | None = None  # seconds, first event to last
    epochs: int | None = None
    val_ppl_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val ppl)
    sample: str | None = None  # the last text the run wrote in its TEXT tab
    error: str | None = None  # why a sweep job failed

    @property
    def val_ppl(self) -> float | None:
        return None if self.val_loss is None else _exp(self.val_loss)

    @property
    def val_bpc(self) -> float | None:
        return None if self.val_loss is None else self.val_loss / math.log(2)

    def cells(self) -> dict[str, str]:
        """The table row, formatted: the same in the terminal, report.md and a run's last line."""
        values = (
            self.name,
            _fmt(self.parameters, "{:,}"),
            _fmt(self.val_loss, "{:.4f}"),
            _fmt(self.val_ppl, "{:.3f}"),
            _fmt(self.val_bpc, "{:.3f}"),
            _fmt(self.test_ppl, "{:.3f}"),
            _fmt(self.chars_per_sec, "{:,.0f}"),
            _fmt(self.wall_time, None),
            _fmt(self.epochs, "{}"),
            self.status,
        )
        return dict(zip(COLUMNS, values, strict=True))

    def line(self) -> str:
        """One line for the end of a run's log."""
        cells = self.cells()
        return f"{cells.pop('run')}: " + ", ".join(f"{k} {v}" for k, v in cells.items())


def _fmt(value: float | None, spec: str | None) -> str:
    if value is None:
        return "-"
    if not math.isfinite(value):
        return str(value)  # nan, inf: a diverged run
    if spec is None:  # a duration
        minutes, seconds = divmod(round(value), 60)
        hours, minutes = divmod(minutes, 60)
        return (
            f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"
        )
    return spec.format(value)


def _hparams_record(accumulator: Any, tag: str) -> Any:
    """The hparams plugin's record under `tag` (session start or end), or None."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    try:
        content = accumulator.PluginTagToContent("hparams")[tag]
    except KeyError:  # no hparams written (no such plugin), or not this record
        return None
    return plugin_data_pb2.HParamsPluginData.FromString(content)


def _status(accumulator: Any) -> str:
    from tensorboard.plugins.hparams import api_pb2

    record = _hparams_record(accumulator, "_hparams_/session_end_info")
    if record is None:
        return "unfinished"
    return "finished" if record.session_end_info.status == api_pb2.STATUS_SUCCESS else "failed"


def _hparams(accumulator: Any) -> dict[str, Any]:
    record = _hparams_record(accumulator, "_hparams_/session_start_info")
    if record is None:
        return {}
    start = record.session_start_info
    # each a protobuf Value: number_value, string_value or bool_value
    return {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}


def read_run(path: Path, name: str | None = None) -> RunSummary:
    """A run's summary from the event files in its directory (training and test write one each).

    The best val loss is the log of the last `hp_metric`, the best val perplexity of the whole run:
    a run resumed into a new directory keeps its best from before the resume, as its checkpoint
    does (a diverged run's, whose perplexity overflows, is the least of its val losses). Its val
    curve, chars/s and time cover what it logged after the resume.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logging.getLogger("tensorboard").setLevel(logging.WARNING)  # it logs every file it reads at INFO
    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])

    def scalars(tag: str) -> list[Any]:
        return accumulator.Scalars(tag) if tag in tags else []

    run = RunSummary(name=name or path.name, path=path, status=_status(accumulator))
    hparams = _hparams(accumulator)
    parameters = hparams.get("model/parameters")
    run.parameters = None if parameters is None else int(parameters)
    best_ppl = [e.value for e in scalars("hp_metric")]
    if best_ppl and 0 < best_ppl[-1] < math.inf:
        run.val_loss = math.log(best_ppl[-1])
    elif val_losses := [e.value for e in scalars("val/loss")]:  # hp_metric overflows past a loss of 88.7
        run.val_loss = min((v for v in val_losses if not math.isnan(v)), default=math.nan)
    run.val_ppl_curve = [(e.step, e.value) for e in scalars("val/ppl")]
    if test := scalars("test/ppl"):
        run.test_ppl = test[-1].value
    chars, seconds = scalars("train/lengths"), scalars("train/time")
    if chars and seconds and seconds[-1].value > 0:
        # under DDP the counts are rank 0's, and every rank reads as many characters
        run.chars_per_sec = chars[-1].value / seconds[-1].value * hparams.get("trainer/world_size", 1)
    if times := [e.wall_time for tag in tags for e in accumulator.Scalars(tag)]:
        run.wall_time = max(times) - min([accumulator.FirstEventTimestamp(), *times])
    # Lightning logs the epoch with every write, and at the test once more (by then one past the last)
    fit_steps = [
        e.step for tag in tags if tag != "epoch" and not tag.startswith("test/") for e in scalars(tag)
    ]
    if epochs := [e.value for e in scalars("epoch") if fit_steps and e.step <= max(fit_steps)]:
        run.epochs = int(max(epochs)) + 1
    if _SAMPLES_TAG in accumulator.Tags()["tensors"]:
        from tensorboard.util import tensor_util

        text = tensor_util.make_ndarray(accumulator.Tensors(_SAMPLES_TAG)[-1].tensor_proto).item()
        run.sample = "\n".join(line.removeprefix("    ") for line in text.decode().split("\n"))
    return run


def _job_order(path: Path) -> tuple[str, int, str]:
    """Runs by folder, then a sweep's jobs by number (10_... after 9_...)."""
    match = re.match(r"(\d+)_", path.name)
    return (str(path.parent), int(match.group(1)) if match else -1, path.name)


def find_runs(root: Path) -> list[RunSummary]:
    """Every run under `root` (a folder holding event files), in job order, named by its overrides:
    `hidden=256` for `<multirun>/1_hidden=256`; by its path under `root` otherwise."""
    logged = {p.parent for p in root.rglob(EVENTS)}
    failed = {p.parent for p in root.rglob(ERROR_FILE)}
    runs = []
    for path in sorted(logged | failed, key=_job_order):
        if path.parent == root:
            name = job_name(path)
        else:
            name = path.name if path == root else str(path.relative_to(root))
        run = read_run(path, name) if path in logged else RunSummary(name=name, path=path)
        if path in failed:  # it may have logged before it failed, or not
            run.status, run.error = "failed", (path / ERROR_FILE).read_text(encoding="utf-8").strip()
        runs.append(run)
    return runs


def _scored(runs: list[RunSummary]) -> list[RunSummary]:
    """The runs with a finite best val perplexity, best first (a diverged run ranks nowhere)."""
    finite = [r for r in runs if r.val_ppl is not None and math.isfinite(r.val_ppl)]
    return sorted(finite, key=lambda r: r.val_ppl)


def best(runs: list[RunSummary]) -> RunSummary | None:
    scored = _scored(runs)
    return scored[0] if scored else None


def verdict(runs: list[RunSummary]) -> str:
    """Which run won and by how much, in one sentence."""
    scored = _scored(runs)
    if not scored:
        return "No run has a finite val score (yet)."
    winner = scored[0]
    text = (
        f"Best: **{winner.name}**, val perplexity {winner.val_ppl:.3f} ({winner.val_bpc:.3f} bits per char)"
    )
    if len(scored) > 1:
        runner_up = scored[1]
        gap = runner_up.val_ppl / winner.val_ppl - 1
        text += f"; next {runner_up.name}, {runner_up.val_ppl:.3f} ({gap:+.1%})"
    return text + "."


def table(runs: list[RunSummary]) -> Table:
    """The report's table for the terminal (rich), the best row marked."""
    winner = best(runs)
    grid = Table(title="charlm sweep report", title_justify="left")
    for column in COLUMNS:
        grid.add_column(column, justify="left" if column in ("run", "status") else "right")
    for run in runs:
        mark = run is winner
        cells = list(run.cells().values())
        cells[0] = f"★ {cells[0]}" if mark else cells[0]
        grid.add_row(*cells, style="bold green" if mark else None)
    return grid


def markdown(runs: list[RunSummary], figure: str | None) -> str:
    winner = best(runs)
    lines = ["# Sweep report", "", verdict(runs), ""]
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
    lines += ["", "val loss is the best of the run, in nats per character; val ppl and bpc follow from it;"]
    lines += ["test ppl is scored with the best checkpoint; chars/s counts training only; time is the wall"]
    lines += ["time from the start of training to the end of the test."]
    if figure:
        lines += ["", f"![val perplexity against step, and the best of each run]({figure})"]
    failures = [r for r in runs if r.error]
    if failures:
        lines += ["", "## Failed jobs", ""] + [f"- **{r.name}**: {r.error}" for r in failures]
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

    winner = best(runs)
    colour = {id(r): f"C{i % 10}" for i, r in enumerate(plotted)}  # one colour per run, in both panels
    height = max(4.5, 0.3 * len(plotted))  # room for every bar's label
    fig, (curves, bars) = plt.subplots(1, 2, figsize=(12, height), gridspec_kw={"width_ratios": [3, 2]})
    for run in plotted:
        steps, ppl = zip(*curves_of[id(run)], strict=True)
        width = 2.8 if run is winner else 1.5
        curves.plot(
            steps, ppl, marker="o", markersize=3, color=colour[id(run)], label=run.name, linewidth=width
        )
    curves.set(xlabel="step", ylabel="val perplexity", title="val perplexity (lower is better)")
    curves.grid(True, alpha=0.3)
    if len(plotted) <= 12:  # beyond that the bars, in the same colours, say which is which
        curves.legend(fontsize="small")
    finite = {id(r) for r in _scored(runs)}
    scored = [r for r in plotted if id(r) in finite]
    values = [r.val_ppl for r in scored]
    bars.barh(
        [f"★ {r.name}" if r is winner else r.name for r in scored],
        values,
        color=[colour[id(r)] for r in scored],
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
    console.print(table(runs))
    console.print(verdict(runs).replace("**", ""))
    console.print(f"report: {root / 'report.md'}" + (f", {figure}" if has_figure else ""))
    return runs


class SweepReport(Callback):
    """Hydra callback: when a multirun ends, write its report into the multirun directory; exit
    non-zero when a job failed, so that scripts notice."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        runs = write_report(root)
        if not runs:
            log.warning("no TensorBoard events under %s: no sweep report", root)
        if failed := [r.name for r in runs if r.error]:
            log.error("%d of %d jobs failed: %s (see report.md)", len(failed), len(runs), ", ".join(failed))
            raise SystemExit(1)


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
    if not write_report(folder):
        parser.exit(
            1, f"error: no TensorBoard event files under {folder}: is it a run or multirun directory?\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
