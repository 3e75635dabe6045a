"""The training bar, which reads the scores only when they are new."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar

from charlm.models.lightning_module import writes_logs


class ProgressBar(RichProgressBar):
    """Lightning's rich bar, its counts moving every step, but the scores it shows read (from the
    device, a wait for a GPU) only on the steps that write them (`writes_logs`): in between they
    have not changed.

    Lightning reads every score logged with `prog_bar=True` after every step, bar or no bar, so
    charlm logs none that way: the bar picks `SHOWN` from the logged scores itself.
    """

    SHOWN = ("train/loss", "train/ppl", "val/loss", "val/ppl")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._read_now = True
        self._shown: dict[str, Any] | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        super().on_train_batch_start(trainer, pl_module, *args)
        self._read_now = writes_logs(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_batch_end(trainer, *args)
        self._read_now = True  # validation, the epoch's end, testing: read

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        if self._read_now or self._shown is None:
            scores = trainer.callback_metrics
            shown = {name: float(scores[name]) for name in self.SHOWN if name in scores}
            self._shown = {**super().get_metrics(trainer, pl_module), **shown}
        return self._shown
