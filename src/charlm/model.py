"""The LightningModule: a CharRNN trained with next-character cross-entropy."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.utilities import rank_zero_info
from torchmetrics import MinMetric

from charlm.ddp import every_rank
from charlm.errors import CharLMError
from charlm.metrics import CharScores
from charlm.network import CharRNN, State
from charlm.vocab import Vocabulary

# conf/optimizer/adam.yaml, for use without Hydra (a test keeps the two equal)
DEFAULT_OPTIMIZER = {"_target_": "torch.optim.Adam", "lr": 2e-3, "weight_decay": 0.0}


def saved_streams(checkpoint: dict[str, Any]) -> list[State] | None:
    """The carried state of each DDP rank's streams in a stateful checkpoint (one process's alone
    in checkpoints saved before DDP), or None."""
    states = checkpoint.get("carried_state")
    return states if states is None or isinstance(states, list) else [states]


def detach(state: State) -> State:
    """The state without its history: gradients stop at the batch boundary (truncated BPTT)."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


class CharLM(pl.LightningModule):
    """Character-level language model with its vocabulary, so a checkpoint is all you need.

    `optimizer` and `scheduler` are Hydra-style dicts (`_target_` plus arguments; see
    `conf/optimizer`, `conf/scheduler`), kept as plain data so checkpoints load with
    `torch.load(weights_only=True)` and without the training config.

    `compile=True` runs the network through torch.compile (see `__init__` for what that covers).

    `stateful=True` (set with `data.stateful=true`, whose batches continue one another row by row)
    carries the hidden state from each batch into the next, detached so that gradients stop at the
    batch boundary (truncated BPTT); each stage starts its epoch from a zero state.
    """

    def __init__(
        self,
        vocab: Sequence[str],
        cell: str = "lstm",
        hidden: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        embedding_dim: int | None = 64,
        locked_dropout: bool = False,
        optimizer: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        stateful: bool = False,
        compile: bool = False,
        impl: str = "fused",
        init: str = "torch",
        unit_forget_bias: bool = False,
        tie_weights: bool = False,
        bidirectional: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the run logs its whole config instead
        self.vocab = Vocabulary(tuple(vocab))
        self.net = CharRNN(
            len(self.vocab),
            cell=cell,
            hidden=hidden,
            num_layers=num_layers,
            dropout=dropout,
            embedding_dim=embedding_dim,
            locked_dropout=locked_dropout,
            impl=impl,
            init=init,
            unit_forget_bias=unit_forget_bias,
            tie_weights=tie_weights,
            bidirectional=bidirectional,
        )
        if compile:
            # In place, so the weights keep their names and checkpoints load without it.
            self.net.compile()
            if impl == "fused":
                rank_zero_info(
                    f"model.compile: torch.compile covers the embedding, dropout and head; Dynamo does not "
                    f"trace torch.nn's {cell.upper()}, which stays the fused kernel (cuDNN on GPU)"
                )
            else:
                rank_zero_info(
                    "model.compile: torch.compile unrolls the scratch cells over each batch's characters and "
                    "compiles again for each new batch shape (12-49 s each for 50 characters on 2 CPU cores)"
                )
        self.train_scores, self.val_scores, self.test_scores = CharScores(), CharScores(), CharScores()
        self.best_val_loss = MinMetric()
        self.best_val_loss.persistent(True)  # kept in checkpoints, so a resumed run remembers it
        self._carried: dict[str, State] = {}  # per stage: validation mid-epoch leaves training's alone

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        return self.net(ids, state)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        inputs, targets = batch
        logits, state = self.net(inputs, self._carried.get(stage))
        if self.hparams.stateful:
            self._carried[stage] = detach(state)
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten().long())

    def on_train_epoch_start(self) -> None:
        self._carried.pop("train", None)

    def on_validation_epoch_start(self) -> None:
        self._carried.pop("val", None)

    def on_test_epoch_start(self) -> None:
        self._carried.pop("test", None)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch, "train")
        self.train_scores.update(loss.detach(), batch[1].numel())
        # Write the mean over the batches since the last write, on the steps Lightning writes logs
        # (the test its own LearningRateMonitor uses): self.log costs ~0.3 ms, a metric update little.
        # The last batch of an epoch or of the run writes too, or its batches' mean would be lost.
        trainer = self.trainer
        last_step = 0 < trainer.max_steps <= trainer.global_step + 1
        if trainer._logger_connector.should_update_logs or trainer.is_last_batch or last_step:
            self._log_scores("train", self.train_scores)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.val_scores.update(self._loss(batch, "val"), batch[1].numel())

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.test_scores.update(self._loss(batch, "test"), batch[1].numel())

    def _log_scores(self, stage: str, metric: CharScores) -> dict[str, torch.Tensor]:
        scores = metric.compute()
        for name, value in scores.items():
            self.log(f"{stage}/{name}", value, prog_bar=name != "bpc")
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
        if "train" in self._carried:  # stateful, mid-epoch: the streams' state, for an exact resume
            checkpoint["carried_state"] = every_rank(self, self._carried["train"])

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = saved_streams(checkpoint)
        if states is not None and self._trainer is not None:  # resuming, not loading to generate
            self._carried["train"] = states[self.trainer.global_rank]  # check_resumable checked the count

    def on_train_start(self) -> None:
        # a resumed state was loaded before the model moved to its device
        if "train" in self._carried:
            self._carried["train"] = apply_to_collection(
                self._carried["train"], torch.Tensor, lambda t: t.to(self.device)
            )

    def configure_optimizers(self) -> Any:
        optimizer = instantiate(self.hparams.optimizer or DEFAULT_OPTIMIZER, params=self.parameters())
        if not self.hparams.scheduler:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        scheduler = instantiate(self.hparams.scheduler, optimizer=optimizer, total_steps=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
