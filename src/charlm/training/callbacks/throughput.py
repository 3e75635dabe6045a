"""Training speed in characters per second, timed without making the GPU wait on every step."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch

from charlm.models.lightning_module import writes_logs


class TrainingThroughput(pl.Callback):
    """Logs, on the steps that log (`writes_logs`), `train/lengths` (characters this process has
    trained on), `train/time` (seconds of training, validations left out) and `train/chars_per_sec`
    (every rank's characters per second since the previous write). The sweep report divides the
    first two.

    The clock is read after waiting for the device, so the figures are the GPU's, but only on those
    steps and around validations: Lightning's ThroughputMonitor waits on every step, which takes
    away the lead a host keeps over a GPU running a small model (its kernels queued ahead).
    """

    def __init__(self) -> None:
        self._chars = 0
        self._started = self._paused_at = 0.0
        self._paused = 0.0  # seconds of validation since the start
        self._last: tuple[int, float] = (0, 0.0)  # characters and seconds at the previous write

    def _now(self, trainer: pl.Trainer) -> float:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        return time.perf_counter()

    def _seconds(self, trainer: pl.Trainer) -> float:
        return self._now(trainer) - self._started - self._paused

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._chars, self._paused, self._last = 0, 0.0, (0, 0.0)
        self._started = self._now(trainer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any
    ) -> None:
        self._chars += batch[0].numel()  # a shape: known on the host
        if not writes_logs(trainer):
            return
        seconds = self._seconds(trainer)
        chars_then, seconds_then = self._last
        self._last = (self._chars, seconds)
        metrics = {"train/lengths": float(self._chars), "train/time": seconds}
        if seconds > seconds_then:
            rate = (self._chars - chars_then) / (seconds - seconds_then)
            metrics["train/chars_per_sec"] = rate * trainer.world_size
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # a validation within training
            self._paused_at = self._now(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._paused_at:
            self._paused += self._now(trainer) - self._paused_at
            self._paused_at = 0.0
