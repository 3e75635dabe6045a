"""One run's row of a sweep report, and which run won: plain figures, no files read.

Shared by the report (which reads the figures from TensorBoard events) and by the end of a
training run (which has them in memory).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # finished / failed / unfinished (no end recorded: still going, or killed) / damaged (an events
    # file that cannot be read whole: no figures shown)
    status: str = "unfinished"
    parameters: int | None = None
    val_loss: float | None = None  # the best, nats per character
    test_ppl: float | None = None
    chars_per_sec: float | None = None  # training only, validation left out
    wall_time: float | None = None  # seconds, first event to last
    epochs: int | None = None
    val_ppl_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, val ppl)
    sample: str | None = None  # the last text the run wrote in its TEXT tab
    error: str | None = None  # why a sweep job failed
    corpus: dict[str, Any] = field(default_factory=dict)  # what its perplexity is of (events.CORPUS_HPARAMS)
    damage: list[str] = field(default_factory=list)  # one line for each of its files that cannot be read

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


def scored(runs: list[RunSummary]) -> list[RunSummary]:
    """The runs with a finite best val perplexity, best first (a diverged run ranks nowhere)."""
    finite = [r for r in runs if r.val_ppl is not None and math.isfinite(r.val_ppl)]
    return sorted(finite, key=lambda r: r.val_ppl)


def best(runs: list[RunSummary]) -> RunSummary | None:
    ranked = scored(runs)
    return ranked[0] if ranked else None


def groups(runs: list[RunSummary]) -> list[tuple[str, list[RunSummary]]]:
    """The runs whose perplexities compare (the same corpus, splits, vocabulary...), each group
    labelled by its corpus and what else sets it apart (`corpus=names, vocab_size=27`), in job
    order; one group, labelled "", when all compare. Runs that logged no corpus (a job that failed
    before training, a damaged run) join the only group, or else make one of their own."""
    known = [r for r in runs if r.corpus]
    keys = dict.fromkeys(k for r in known for k in r.corpus)
    shown = ["corpus", *(k for k in keys if k != "corpus" and len({r.corpus.get(k) for r in known}) > 1)]
    grouped: dict[str, list[RunSummary]] = {}
    for run in known:
        label = ", ".join(f"{k}={run.corpus[k]}" for k in shown if k in run.corpus)
        grouped.setdefault(label or "corpus unknown", []).append(run)
    if len(grouped) <= 1:
        return [("", runs)]
    for run in runs:
        if not run.corpus:
            grouped.setdefault("corpus unknown", []).append(run)
    return list(grouped.items())


def verdict(runs: list[RunSummary]) -> str:
    """Which run won and by how much, in one sentence."""
    ranked = scored(runs)
    if not ranked:
        return "No run has a finite val score (yet)."
    winner = ranked[0]
    text = (
        f"Best: **{winner.name}**, val perplexity {winner.val_ppl:.3f} ({winner.val_bpc:.3f} bits per char)"
    )
    if len(ranked) > 1:
        runner_up = ranked[1]
        gap = runner_up.val_ppl / winner.val_ppl - 1
        text += f"; next {runner_up.name}, {runner_up.val_ppl:.3f} ({gap:+.1%})"
    return text + "."
