"""Test-only callbacks for runs of `train.py` in a subprocess, added with
`+callbacks.<name>._target_=probes.<Name>` (conftest's SUBPROCESS_ENV puts tests/ on the path): a
failure on one DDP rank, a record of what each rank drew, and jobs of a sweep that wait for each other."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch


class FailAt(pl.Callback):
    """Raise on rank `rank` (-1: none) at training step `step`, as a bug or a lost device would.

    `others_wait`: the other ranks then wait at that step forever, as ranks blocked in an NCCL
    collective do (gloo's fail by themselves once the failed rank's connections close).
    """

    def __init__(self, rank: int, step: int, others_wait: bool = False) -> None:
        self.rank, self.step, self.others_wait = rank, step, others_wait

    def on_train_batch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        if trainer.global_step != self.step or self.rank < 0:
            return
        if trainer.global_rank == self.rank:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")
        if self.others_wait:
            threading.Event().wait()


class Draws(pl.Callback):
    """What each rank drew in training: a digest of every dropout mask (of `net.drop`, applied to
    the inputs and before the head) and its share of the training windows, in `<path>/rank<r>.json`."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.masks: list[str] = []
        self.dropped: list[float] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.net.drop.register_forward_hook(self._keep)

    def _keep(self, module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
        if module.training:
            mask = (out == 0).numpy()
            self.masks.append(hashlib.sha1(mask.tobytes()).hexdigest())
            self.dropped.append(float(mask.mean()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = trainer.train_dataloader
        record = {
            "masks": self.masks,
            "dropped": self.dropped,
            "windows": len(loader.dataset),
            "share": [int(i) for i in loader.sampler],
        }
        (self.path / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


class MeetAtStart(pl.Callback):
    """Each job of a sweep waits at its training's start until `count` jobs have started, so that a
    launcher that runs them one after the other times out here instead of passing by chance."""

    def __init__(self, path: str, count: int, timeout: float = 120) -> None:
        self.path, self.count, self.timeout = Path(path), count, timeout

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / f"{os.getpid()}.started").touch()
        deadline = time.monotonic() + self.timeout
        while len(list(self.path.glob("*.started"))) < self.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the other jobs did not start within {self.timeout:g} s: run one by one")
            time.sleep(0.05)
