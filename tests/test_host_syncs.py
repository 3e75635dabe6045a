"""A training step that does not log never waits for the device.

A small recurrent model on a fast GPU is latency-bound: the host queues kernels ahead while Python
runs, and every host-device synchronisation takes that lead away (measured on an H200: the default
callbacks' per-step syncs cost the pipeline a fifth of a plain loop's throughput). A CPU cannot
show a sync, so this counts the calls that would make one on a GPU, during a real `train.py`-built
run with the default callbacks, the progress bar and the TensorBoard logger on.
"""

from __future__ import annotations

import signal
import traceback
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY, compose_train
from omegaconf import DictConfig
from pytorch_lightning.loops.training_epoch_loop import _TrainingEpochLoop

from charlm.training.callbacks.stopping import SaveOnInterrupt
from charlm.training.run import build

# what waits for the device when the tensor (or the stream) is a GPU's
SYNCING_TENSOR_METHODS = (
    "item",
    "tolist",
    "cpu",
    "numpy",
    "nonzero",
    "__bool__",
    "__float__",
    "__int__",
    "__index__",
    "__format__",
)
SYNCING_FUNCTIONS = (
    (torch, "nonzero"),
    (torch, "equal"),
    (torch, "allclose"),
    (torch, "is_nonzero"),
    (torch.cuda, "synchronize"),
    (torch.cuda.Stream, "synchronize"),
    (torch.cuda.Event, "synchronize"),
)
# Host tensors by design, on a GPU run too: torch's Adam and AdamW keep their step count on the CPU
# (unless capturable or fused), and read it with .item().
HOST_BY_DESIGN = ("torch/optim/",)


class SyncCounter(pl.Callback):
    """Every sync-like call while training, by training batch (1-based; 0 before the first)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: dict[int, list[str]] = defaultdict(list)
        self.trainer: pl.Trainer | None = None
        for name in SYNCING_TENSOR_METHODS:
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, getattr(torch.Tensor, name)))
        for owner, name in SYNCING_FUNCTIONS:
            monkeypatch.setattr(owner, name, self._counted(name, getattr(owner, name)))

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer = trainer

    def _counted(self, name: str, original: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            trainer = self.trainer
            if trainer is not None and trainer.training:
                where = "".join(traceback.format_stack(limit=8)[:-1])
                if not any(part in where.splitlines()[-2] for part in HOST_BY_DESIGN):
                    batch = trainer.fit_loop.epoch_loop.batch_progress.total.ready
                    self.calls[batch].append(f"{name} from\n{where}")
            return original(*args, **kwargs)

        return call


def sync_run(tmp_path: Path, text_file: Path, *overrides: str) -> DictConfig:
    """23 steps with dropout, logging every 5, validating after 10 and 20, a step checkpoint every 7."""
    return compose_train(
        [
            "data=textfile",
            f"data.path={text_file}",
            f"paths.output_dir={tmp_path}",
            "hidden=16",
            *TINY,
            "++trainer.max_steps=23",
            "++trainer.log_every_n_steps=5",
            "++trainer.val_check_interval=10",
            "callbacks.step_checkpoint.every_n_train_steps=7",
            "model.dropout=0.1",
            *overrides,
        ]
    )


# sync_run's batches that log, and those after which a checkpoint is written
MAY_SYNC = {5, 10, 15, 20, 23} | {7, 14, 21}


def test_steps_that_do_not_log_make_no_host_sync(tmp_path: Path, text_file: Path, monkeypatch) -> None:
    datamodule, model, trainer = build(sync_run(tmp_path, text_file))
    assert trainer.progress_bar_callback is not None and trainer.loggers
    counter = SyncCounter(monkeypatch)
    trainer.callbacks.append(counter)
    trainer.fit(model, datamodule=datamodule)
    monkeypatch.undo()
    assert trainer.global_step == 23
    found = {batch: calls for batch, calls in counter.calls.items() if batch and batch not in MAY_SYNC}
    assert counter.calls[5], "the counter saw nothing: the bar reads the loss at a step that logs"
    sources = {call for calls in found.values() for call in calls}
    assert not found, f"syncs on batches {sorted(found)}:\n\n" + "\n\n".join(sorted(sources))


@pytest.mark.parametrize("world_size", [1, 2])
def test_ddp_leaves_out_lightnings_per_step_sigterm_broadcast(world_size: int) -> None:
    """Lightning broadcasts rank 0's SIGTERM flag and reads it back at every DDP step (a wait for the
    GPU). While SaveOnInterrupt's handler stands in for Lightning's, that flag is never set."""
    assert hasattr(_TrainingEpochLoop, "_broadcast_sigterm_tensor")  # if Lightning renames it: look again
    loop = SimpleNamespace()
    trainer = SimpleNamespace(world_size=world_size, fit_loop=SimpleNamespace(epoch_loop=loop))
    callback = SaveOnInterrupt()
    callback.on_train_start(trainer, None)
    try:
        assert signal.getsignal(signal.SIGTERM) == callback._ask
        assert hasattr(loop, "_broadcast_sigterm_tensor") == (world_size > 1)
        callback._ask(signal.SIGTERM, None)  # a signal: the next one goes to the handler before
        assert signal.getsignal(signal.SIGTERM) != callback._ask
        # but the broadcast stays out until the fit ends: the ranks take their signals at different
        # steps, and one rank broadcasting again before another would pair the wrong collectives
        assert hasattr(loop, "_broadcast_sigterm_tensor") == (world_size > 1)
    finally:
        callback.on_fit_end(trainer, None)
    assert not hasattr(loop, "_broadcast_sigterm_tensor")  # Lightning's own again, with its handler
