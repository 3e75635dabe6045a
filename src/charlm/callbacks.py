"""Lightning callbacks that charlm adds to every run."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from torch.utils.tensorboard.summary import hparams

# Columns of TensorBoard's HPARAMS table: hp_metric is the best val perplexity (see CharLM).
HPARAMS_METRICS = ("hp_metric", "val/loss", "val/ppl", "val/bpc", "test/ppl", "test/bpc")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"hidden": 32}} -> {"model/hidden": 32}, values as TensorBoard accepts them."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}/"))
        else:
            ok = isinstance(value, bool | int | float | str)
            flat[f"{prefix}{key}"] = value if ok else str(value)
    return flat


class LogHyperparameters(pl.Callback):
    """Put the run's hyperparameters in TensorBoard's HPARAMS tab, where a sweep is compared.

    Only the session's hparams are written here. The metric columns are the scalars the run logs,
    so `hp_metric` shows the real best val perplexity, not Lightning's -1 placeholder. No
    experiment summary is written: TensorBoard would take one run's for all (its hparams plugin
    picks the first it finds), hiding settings that only other runs of a sweep have.
    """

    def __init__(self, params: Mapping[str, Any]):
        self.params = flatten(params)

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                _, session_start, session_end = hparams(self.params, {})
                logger.experiment.file_writer.add_summary(session_start)
                logger.experiment.file_writer.add_summary(session_end)
            else:
                logger.log_hyperparams(self.params)
