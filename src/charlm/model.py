"""The LightningModule: a CharRNN trained with next-character cross-entropy."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MinMetric

from charlm.metrics import CharScores
from charlm.network import CharRNN, State
from charlm.vocab import Vocabulary

DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "lr": 2e-3}


class CharLM(pl.LightningModule):
    """Character-level language model with its vocabulary, so a checkpoint is all you need.

    `optimizer` and `scheduler` are Hydra-style dicts (`_target_` plus arguments; see
    `conf/optimizer`, `conf/scheduler`), kept as plain data so checkpoints load with
    `torch.load(weights_only=True)` and without the training config.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        cell: str = "lstm",
        hidden: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        embedding_dim: int | None = 64,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs its whole config instead
        self.vocab = Vocabulary(tuple(vocab))
        self.net = CharRNN(len(self.vocab), cell, hidden, num_layers, dropout, embedding_dim)
        self.scores = nn.ModuleDict({stage: CharScores() for stage in ("val", "test")})
        self.best_val_ppl = MinMetric()
        self.best_val_ppl.persistent(True)  # kept in checkpoints, so a resumed run remembers it

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.net(ids, state)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        inputs, targets = batch
        logits, _ = self.net(inputs)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten().long())

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        # Each self.log costs ~0.3 ms: log what follows from the loss only on the steps written out.
        if (self.global_step + 1) % self.trainer.log_every_n_steps == 0:
            self.log_dict({"train/ppl": loss.detach().exp(), "train/bpc": loss.detach() / math.log(2)})
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.scores["val"].update(self._loss(batch), batch[1].numel())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.scores["test"].update(self._loss(batch), batch[1].numel())

    def _log_scores(self, stage: str) -> dict[str, torch.Tensor]:
        scores = self.scores[stage].compute()
        self.log_dict({f"{stage}/{name}": value for name, value in scores.items()}, prog_bar=True)
        self.scores[stage].reset()
        return scores

    def on_train_start(self) -> None:
        if self.trainer.global_step == 0:
            self.best_val_ppl.reset()  # forget the sanity-check batches

    def on_validation_epoch_end(self) -> None:
        self.best_val_ppl.update(self._log_scores("val")["ppl"])
        # TensorBoard's HPARAMS tab ranks runs by hp_metric: the best val perplexity so far
        self.log("hp_metric", self.best_val_ppl.compute())

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer or DEFAULT_OPTIMIZER, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
