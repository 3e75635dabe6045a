"""How a run stops: at its last step (validated), at a diverged loss (with a clear line), or
on Ctrl+C and SIGTERM (saved, to resume exactly)."""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning import callbacks

from charlm.errors import CharLMError
from charlm.models.lightning_module import writes_logs

log = logging.getLogger(__name__)


class ValidateAtLastStep(pl.Callback):
    """Validate after the last step when `max_steps` ends training mid-epoch.

    Lightning validates at epoch ends and `val_check_interval`s only, so a short run
    (`++trainer.max_steps=50`) would end with no val scores, no hp_metric and no best checkpoint.
    Asking the trainer to stop makes it validate first, as it does for early stopping.
    """

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


class StopWhenDiverged(pl.Callback):
    """Stop training at a nan or inf loss, saying at which step and what to try.

    Each step only folds its loss into a flag on the device; the flag is read (a wait for a GPU) on
    the steps that log (`writes_logs`), before a validation and before any checkpoint is written.
    So a loss gone bad between two logging steps is found a few steps late, named with its own
    step, and never reaches a checkpoint (the model refuses non-finite weights besides:
    CharLM.on_save_checkpoint). Under DDP the ranks decide together, at the same points.
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # the step of the first non-finite loss; -1: none
        self._bad_loss: torch.Tensor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_bad = torch.tensor(-1, device=pl_module.device)
        self._bad_loss = torch.tensor(0.0, device=pl_module.device)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *_: Any
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is not None and self._first_bad is not None:
            loss = loss.detach().float()
            first = (self._first_bad < 0) & ~torch.isfinite(loss)
            self._first_bad = torch.where(first, trainer.global_step, self._first_bad)
            self._bad_loss = torch.where(first, loss, self._bad_loss)
        if writes_logs(trainer):
            self._stop_if_diverged(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_diverged(trainer)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Any) -> None:
        self._stop_if_diverged(trainer)  # raised before anything is written

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_bad = self._bad_loss = None  # a later fit of this trainer starts clean

    def _stop_if_diverged(self, trainer: pl.Trainer) -> None:
        if self._first_bad is None:  # not training
            return
        diverged_here = bool(self._first_bad >= 0)
        # any rank's (a single-device strategy returns the decision as it is)
        if not trainer.strategy.reduce_boolean_decision(diverged_here, all=False):
            return
        step = int(self._first_bad) if diverged_here else f"{trainer.global_step} (on another rank)"
        loss = float(self._bad_loss) if diverged_here else math.nan
        self._first_bad = None  # raised once
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        last_good = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        raise CharLMError(
            f"training diverged at step {step}: the loss is {loss}. "
            + (f"The last good checkpoint is {last_good}. " if last_good else "No checkpoint was saved. ")
            + f"Lower optimizer.lr{f' (now {lr:g})' if lr is not None else ''}, "
            "or keep trainer.gradient_clip_val on (default 1.0)"
        )


class EarlyStopping(callbacks.EarlyStopping):
    """Lightning's EarlyStopping on val/loss: stop when `patience` validations in a row bring no new
    best (lower by more than `min_delta`); 0, the default, is off. Checked after every validation,
    mid-epoch ones too. The best checkpoint stays the one that is tested, reported and written from
    (`generate.py`). Divergence is StopWhenDiverged's."""

    def __init__(self, patience: int = 0, min_delta: float = 0.0):
        if patience < 0:
            raise CharLMError(
                f"callbacks.early_stopping.patience counts validations: 0 (off) or more, got {patience}"
            )
        if min_delta < 0:
            raise CharLMError(f"callbacks.early_stopping.min_delta must be 0 or more, got {min_delta}")
        super().__init__(
            monitor="val/loss",
            mode="min",
            patience=patience,
            min_delta=min_delta,
            check_finite=False,
            check_on_train_epoch_end=False,  # at every validation's end, not the epoch's
        )

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.patience:
            return
        super().on_validation_end(trainer, pl_module)
        if trainer.should_stop and self.wait_count >= self.patience:
            log.info(
                "early stopping at step %d: val/loss has not improved for %d validations (best %.4f)",
                trainer.global_step,
                self.wait_count,
                float(self.best_score),
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the checkpoint's record (best, validations since), but the patience this run was given
        super().load_state_dict({**state_dict, "patience": self.patience})


def _no_sigterm_broadcast() -> None:
    """Lightning's per-step broadcast of its SIGTERM flag, with SaveOnInterrupt's handler in place of
    the one that sets it: nothing to send (see SaveOnInterrupt)."""


# Ctrl+C, and what `kill`, `timeout` and cluster schedulers send before they kill
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SaveOnInterrupt(pl.Callback):
    """Ctrl+C (SIGINT) or SIGTERM in training: finish the step, save last.ckpt, and stop; a second
    one stops at once, without saving (Lightning's own handling).

    The checkpoint is taken between steps, where the step checkpoints are, so `ckpt_path=<run dir>`
    resumes exactly, with no step lost; during a validation, at its end. Lightning's default would
    stop mid-step and save nothing.

    Under DDP the ranks agree on stopping at the steps that log only (a collective, which waits for
    the devices), so they stop up to `trainer.log_every_n_steps` steps after the signal. Lightning
    broadcasts its own SIGTERM flag from rank 0 and reads it back at every step, a wait for the
    GPU each time; with this callback's handler in its place that flag is never set, so the
    broadcast is left out while training.
    """

    def __init__(self) -> None:
        self._asked = False
        self._previous: dict[int, Any] = {}
        self._loop: Any = None  # the training loop whose SIGTERM broadcast is left out

    def _ask(self, signum: int, frame: Any) -> None:
        self._asked = True
        # The next one goes through at once. Lightning's broadcast stays left out until the fit
        # ends: the ranks take their signals at different steps, and a collective that one rank
        # starts again before another would pair with the wrong one, and hang.
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._ask:
                signal.signal(signum, handler)
        self._previous = {}

    def _restore(self) -> None:
        self._restore_handlers()
        if self._loop is not None:  # Lightning's own broadcast again, for its own handler
            vars(self._loop).pop("_broadcast_sigterm_tensor", None)
            self._loop = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, not at fit start: Lightning takes a note of the handlers before training and puts
        # them back at its teardown, which would bring ours back after a failed run
        self._asked = False
        if threading.current_thread() is threading.main_thread():  # where Python delivers signals
            self._previous = {signum: signal.signal(signum, self._ask) for signum in STOP_SIGNALS}
            if trainer.world_size > 1:
                self._loop = trainer.fit_loop.epoch_loop
                self._loop._broadcast_sigterm_tensor = _no_sigterm_broadcast

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()  # a failed job must not leave the next job of a sweep its handler

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
        # One process reads its own flag. Ranks must agree, in a collective that waits for the
        # devices: at the steps that log only, so DDP stops up to trainer.log_every_n_steps later.
        if trainer.world_size == 1 or writes_logs(trainer):
            self._stop_if_asked(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._stop_if_asked(trainer)  # asked during the last validation: no step follows it

    def _stop_if_asked(self, trainer: pl.Trainer) -> None:
        # every rank stops at the same step, or the save would hang
        if not trainer.strategy.reduce_boolean_decision(self._asked, all=False):
            return
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and checkpoint.dirpath:
            path = Path(checkpoint.dirpath) / "last.ckpt"
            trainer.save_checkpoint(path, weights_only=False)
            log.warning(
                "interrupted at step %d: saved %s; resume with ckpt_path=%s",
                trainer.global_step,
                path,
                Path(checkpoint.dirpath).parent,
            )
        else:
            log.warning("interrupted at step %d (no checkpoint: checkpointing is off)", trainer.global_step)
        raise KeyboardInterrupt
