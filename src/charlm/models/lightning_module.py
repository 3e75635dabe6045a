"""The LightningModule: a CharRNN trained with next-character cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_info
from torchmetrics import MinMetric

from charlm.data.vocab import Vocabulary
from charlm.errors import CharLMError, instantiate
from charlm.models.carried_state import CarriedState
from charlm.models.metrics import CharScores
from charlm.models.network import CharRNN, NetworkConfig, State
from charlm.models.optimization import OptimizerConfig, check_optimizer


def writes_logs(trainer: pl.Trainer) -> bool:
    """Whether this training step's scores are written: where Lightning writes step logs (its own
    test, with the public step count: every `log_every_n_steps` optimizer steps, and when the run
    is stopping), which includes the last step of a run that `max_steps` ends. Never on a batch that
    only accumulates gradients: Lightning writes nothing there.

    These are the only training steps that may wait for the device (read a loss, a clock after a
    sync): the progress bar, the throughput and the divergence check read them there. The answer
    holds from the batch's start to its end: the count is of the batches that stepped before this
    one (Lightning's own, moved after the batch's hooks), not the optimizer's step count.
    """
    if trainer.fit_loop._should_accumulate():  # Lightning's own test, in its logger connector
        return False
    step, every = trainer.fit_loop.epoch_loop._batches_that_stepped + 1, trainer.log_every_n_steps
    on_schedule = bool(every) and (step % every == 0 or trainer.should_stop)
    return on_schedule or 0 < trainer.max_steps <= step


def _keep_epoch_unfinished(trainer: pl.Trainer, checkpoint: dict[str, Any]) -> None:
    """Save an epoch that `max_steps` (or a stop) ended before its last batch as the epoch in progress
    that it is. Lightning counts it as done (it ends every epoch the same way), and a resume would
    then start the next epoch, skip as many of its batches as this one had seen (the loader's saved
    position), and never see the rest of this one. Saved unfinished, the resume continues it with
    its unseen batches, as it does for an interrupted run, and the epochs are counted right."""
    loop = trainer.fit_loop
    epochs, seen = loop.epoch_progress.current, loop.epoch_loop.batch_progress.current.ready
    if epochs.processed == epochs.started and 0 < seen < trainer.num_training_batches:
        progress = checkpoint["loops"]["fit_loop"]["epoch_progress"]
        for counts in (progress["total"], progress["current"]):
            counts["processed"] = counts["completed"] = counts["started"] - 1
        checkpoint["epoch"] = epochs.started - 1  # Lightning's current_epoch, 0-based


class CharLM(pl.LightningModule):
    """Character-level language model with its vocabulary, so a checkpoint is all you need.

    `network` is the CharRNN's NetworkConfig (or a dict of it); `optimizer` and `scheduler` are
    Hydra-style dicts (`_target_` plus arguments; `conf/optimizer`, `conf/scheduler`), Adam at 2e-3
    and a constant rate by default. All are kept in checkpoints as plain data, so that they load
    with `torch.load(weights_only=True)` and without the training config.

    `stateful=True` (the data module's `stateful`, whose batches continue one another row by row)
    carries the hidden state from each batch into the next (`CarriedState`).

    `charlm.load_model(path)` loads one from a checkpoint or run directory for writing text;
    `CharLM.load_from_checkpoint(path)` works too, older checkpoints included.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        network: NetworkConfig | Mapping[str, Any] | None = None,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        stateful: bool = False,
        **flat: Any,
    ):
        super().__init__()
        if not isinstance(network, NetworkConfig):
            # flat: the network's settings as checkpoints written before NetworkConfig keep them
            network = NetworkConfig(**{**(network or {}), **flat})
        optimizer = dict(optimizer) if optimizer else asdict(OptimizerConfig())
        check_optimizer(optimizer)
        scheduler = dict(scheduler) if scheduler else None
        settings = {"vocab": list(vocab), "network": asdict(network), "optimizer": optimizer}
        # the run logs its whole config instead
        self.save_hyperparameters({**settings, "scheduler": scheduler, "stateful": stateful}, logger=False)
        self.vocab = Vocabulary(tuple(vocab))
        self.net = CharRNN(len(self.vocab), network)
        if network.compile:
            self._compile(network)
        self.train_scores, self.val_scores, self.test_scores = CharScores(), CharScores(), CharScores()
        self.best_val_loss = MinMetric()
        self.best_val_loss.persistent(True)  # kept in checkpoints, so a resumed run remembers it
        self.carried = CarriedState(enabled=stateful)

    def _compile(self, network: NetworkConfig) -> None:
        # In place, so the weights keep their names and checkpoints load without it.
        self.net.compile()
        if network.impl == "fused":
            rank_zero_info(
                f"model.compile: torch.compile covers the embedding, dropout and head; Dynamo does not "
                f"trace torch.nn's {network.cell.upper()}, which stays the fused kernel (cuDNN on GPU)"
            )
        else:
            rank_zero_info(
                "model.compile: torch.compile unrolls the scratch cells over each batch's characters and "
                "compiles again for each new batch shape (12-49 s each for 50 characters on 2 CPU cores)"
            )

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.net(ids, state)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, targets = batch
        logits, state = self.net(inputs, self.carried(stage))
        self.carried.keep(stage, state)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten().long())

    def on_train_epoch_start(self) -> None:
        self.carried.reset("train")

    def on_validation_epoch_start(self) -> None:
        self.carried.reset("val")

    def on_test_epoch_start(self) -> None:
        self.carried.reset("test")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "train")
        self.train_scores.update(loss.detach(), batch[1].numel())
        # the mean over the batches since the last write: self.log costs ~0.3 ms, a metric update little
        if writes_logs(self.trainer):
            self._log_scores("train", self.train_scores)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_scores.update(self._loss(batch, "val"), batch[1].numel())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.test_scores.update(self._loss(batch, "test"), batch[1].numel())

    def _log_scores(self, stage: str, metric: CharScores) -> dict[str, torch.Tensor]:
        scores = metric.compute()
        for name, value in scores.items():
            # not prog_bar=True, which Lightning reads after every step: the bar picks its own (ProgressBar)
            self.log(f"{stage}/{name}", value)
        metric.reset()
        return scores

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a couple of batches before training: not a score
            self.val_scores.reset()
            return
        self.best_val_loss.update(self._log_scores("val", self.val_scores)["loss"])
        # TensorBoard's HPARAMS tab ranks runs by hp_metric: the best val perplexity so far
        self.log("hp_metric", self.best_val_loss.compute().exp())

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_scores)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if not torch.stack([p.isfinite().all() for p in self.parameters()]).all():
            # raised before anything is written: the checkpoint already there stays
            raise CharLMError(
                f"not saving a checkpoint at step {self.global_step}: the weights are nan or inf "
                "(training diverged); the last good checkpoint stays. Lower optimizer.lr"
            )
        self.carried.save(self, checkpoint)
        if "loops" in checkpoint:
            _keep_epoch_unfinished(self.trainer, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # resuming, not loading to generate
            self.carried.load(checkpoint, self.trainer.global_rank)

    def on_train_start(self) -> None:
        self.carried.to(self.device)

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer, setting="optimizer", params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(
            self.hparams.scheduler, setting="scheduler", optimizer=optimizer, total_steps=total_steps
        )
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
