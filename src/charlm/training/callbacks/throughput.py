"""Training speed in characters per second."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning import callbacks
from pytorch_lightning.utilities import rank_zero_only


class TrainingThroughput(callbacks.ThroughputMonitor):
    """Lightning's ThroughputMonitor counting characters, for training only.

    Logs `train/lengths` (characters so far), `train/time` (seconds of training, validation left
    out) and `train/device/items_per_sec` (chars/s over the last `window_size` batches); the sweep
    report divides the first two. Validation is still timed, to take it out of `train/time`, but
    not logged: Lightning logs evaluation figures against the evaluation's batch index, which
    TensorBoard would draw on the training-step axis. On a GPU it waits for the device at every
    step, to time it right.
    """

    def __init__(self, window_size: int = 50):
        super().__init__(
            batch_size_fn=lambda batch: batch[0].size(0),
            length_fn=lambda batch: batch[0].numel(),
            window_size=window_size,
        )

    @rank_zero_only
    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *_: Any, **__: Any
    ) -> None:
        if not trainer.sanity_checking:
            self._update(trainer, pl_module, batch, iter_num=0)

    def on_test_start(self, *_: Any) -> None:
        pass

    def on_test_batch_end(self, *_: Any, **__: Any) -> None:
        pass
