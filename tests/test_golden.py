"""Short runs of `train.py` log the very losses they logged before the package was laid out by
stage (recorded at e06e962, torch 2.13.0 on CPU): a refactor that changes a number is not one.

The runs cover the settings that draw random numbers in training (shuffling, dropout, locked
dropout), the stateful streams, a scratch cell and a cosine schedule. The figures are float32
values read back from TensorBoard's event files, compared exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY, run_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow  # each case is a train.py subprocess

RUNS = {
    "lstm_windows_dropout": ["model=lstm", "model.dropout=0.1"],
    "gru_stateful_locked": [
        "model=gru",
        "model.num_layers=2",
        "model.dropout=0.2",
        "model.locked_dropout=true",
        "data.stateful=true",
    ],
    "rnn_scratch_cosine": ["model=rnn", "model.impl=scratch", "scheduler=cosine", "data.stride=7"],
}

# train/loss at each logging step, then val/loss at each validation, then test/loss
GOLDEN: dict[str, dict[str, list[float]]] = {
    "gru_stateful_locked": {
        "train/loss": [
            3.3550753593444824,
            3.326852798461914,
            3.319424629211426,
            3.292837142944336,
            3.282271385192871,
            3.2635605335235596,
        ],
        "val/loss": [3.2967045307159424, 3.2488183975219727],
        "test/loss": [3.2488183975219727],
    },
    "lstm_windows_dropout": {
        "train/loss": [
            3.281562566757202,
            3.277554512023926,
            3.2850399017333984,
            3.2553772926330566,
            3.246243953704834,
            3.237452745437622,
        ],
        "val/loss": [3.2584831714630127, 3.223688840866089],
        "test/loss": [3.223688840866089],
    },
    "rnn_scratch_cosine": {
        "train/loss": [
            3.3161349296569824,
            3.2928624153137207,
            3.2681150436401367,
            3.229644775390625,
            3.228334903717041,
            3.222221851348877,
        ],
        "val/loss": [3.2437922954559326, 3.218081474304199],
        "test/loss": [3.218081474304199],
    },
}


def logged(run_dir: Path) -> dict[str, list[float]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    return {
        t: [e.value for e in accumulator.Scalars(t)]
        for t in ("train/loss", "val/loss", "test/loss")
        if t in tags
    }


@pytest.mark.skipif(torch.__version__.split("+")[0] != "2.13.0", reason="recorded with torch 2.13.0")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_short_run_logs_the_recorded_losses(tmp_path: Path, text_file: Path, name: str) -> None:
    args = ["data=textfile", f"data.path={text_file}", "hidden=16", *TINY, "trainer.deterministic=true"]
    result = run_train([*args, *RUNS[name], "~callbacks.rich_progress_bar"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run,) = (tmp_path / "logs" / "runs").iterdir()
    assert logged(run) == GOLDEN[name]
