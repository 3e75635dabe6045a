"""Lightning callbacks that charlm adds to every run."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning import callbacks
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard.summary import hparams

from charlm.errors import CharLMError
from charlm.generation import generate

log = logging.getLogger(__name__)


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


def _session_end(status: int) -> Summary:
    """The hparams plugin's record of how a run ended (torch only writes STATUS_SUCCESS)."""
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
        version=metadata.PLUGIN_DATA_VERSION,
    )
    smd = metadata.create_summary_metadata(content)
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)])


def tensorboards(trainer: pl.Trainer) -> list[Any]:
    """The SummaryWriters of the run's TensorBoard loggers (the other loggers have no TEXT or HPARAMS)."""
    return [logger.experiment for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]


class LogHyperparameters(pl.Callback):
    """Put the run's hyperparameters in TensorBoard's HPARAMS tab, where a sweep is compared.

    Only the session (its hparams, then how it ended) is written here. The metric columns are the
    scalars the run logs, so `hp_metric` shows the real best val perplexity, not Lightning's -1
    placeholder. No experiment summary is written: TensorBoard would take one run's for all (its
    hparams plugin picks the first it finds), hiding settings that only other runs of a sweep have.
    """

    def __init__(self, params: Mapping[str, Any]):
        self.params = flatten(params)

    @staticmethod
    def _write(trainer: pl.Trainer, summary: Any) -> None:
        for experiment in tensorboards(trainer):
            if experiment.file_writer is not None:  # None once Lightning has closed the logger
                experiment.file_writer.add_summary(summary)

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # DDP: the report's chars/s counts every rank's characters
        self.params["trainer/world_size"] = trainer.world_size
        for logger in trainer.loggers:  # TensorBoard's, given no metrics, only fills hparams.yaml
            logger.log_hyperparams(self.params)
        _, session_start, _ = hparams(self.params, {})
        self._write(trainer, session_start)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, _session_end(api_pb2.STATUS_SUCCESS))

    @rank_zero_only
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._write(trainer, _session_end(api_pb2.STATUS_FAILURE))


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
    """Stop training at the first step whose loss is nan or inf, saying where and what to try.

    Runs before the checkpoint callbacks (Lightning puts those last), so no checkpoint of that step
    is written; the model refuses to save non-finite weights besides (CharLM.on_save_checkpoint).
    The check reads the loss every step: on a GPU that waits for the device, as the throughput
    monitor does anyway. Under DDP the ranks decide together, so none is left waiting.
    """

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *_: Any
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        # any rank's (a single-device strategy returns the decision as it is)
        if not trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        last_good = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        raise CharLMError(
            f"training diverged at step {trainer.global_step}: the loss is {float(loss)}. "
            + (f"The last good checkpoint is {last_good}. " if last_good else "No checkpoint was saved. ")
            + f"Lower optimizer.lr{f' (now {lr:g})' if lr is not None else ''}, "
            "or keep trainer.gradient_clip_val on (default 1.0)"
        )


# Ctrl+C, and what `kill`, `timeout` and cluster schedulers send before they kill
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class SaveOnInterrupt(pl.Callback):
    """Ctrl+C (SIGINT) or SIGTERM in training: finish the step, save last.ckpt, and stop; a second
    one stops at once, without saving (Lightning's own handling).

    The checkpoint is taken between steps, where the step checkpoints are, so `ckpt_path=<run dir>`
    resumes exactly, with no step lost; during a validation, at its end. Lightning's default would
    stop mid-step and save nothing.
    """

    def __init__(self) -> None:
        self._asked = False
        self._previous: dict[int, Any] = {}

    def _ask(self, signum: int, frame: Any) -> None:
        self._asked = True
        self._restore()  # the next one goes through at once

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            if signal.getsignal(signum) == self._ask:
                signal.signal(signum, handler)
        self._previous = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # here, not at fit start: Lightning takes a note of the handlers before training and puts
        # them back at its teardown, which would bring ours back after a failed run
        self._asked = False
        if threading.current_thread() is threading.main_thread():  # where Python delivers signals
            self._previous = {signum: signal.signal(signum, self._ask) for signum in STOP_SIGNALS}

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore()  # a failed job must not leave the next job of a sweep its handler

    def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
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


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, but a run resumed into a new directory keeps the record of the
    best checkpoints so far, so that "best" is the best of the whole run (it may stay in the old
    directory, from which nothing is ever deleted). Lightning forgets all but the best's path when
    the directory changes, and would then take the first validation after a resume for the best."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


class RandomState(pl.Callback):
    """Keep torch's random state in checkpoints, so a resumed run draws the same dropout masks as
    one that never stopped (Lightning keeps the data order, through StatefulDataLoader, but not
    this). Under DDP every rank is seeded alike and draws alike, so rank 0's state is every rank's.
    A callback, not a module hook: loading a model to use it must not reset anyone's RNG."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # the current device: this rank's
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"].cpu())
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"].cpu())


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


class SampleText(pl.Callback):
    """Write a sample of generated text to TensorBoard's TEXT tab every `every_n_epochs` epochs.

    The prompt and seed are fixed, so the samples of one run show what it learnt epoch by epoch;
    a seed of its own also leaves the training's random state alone (exact resumes).
    """

    def __init__(
        self,
        prompt: str = "",
        length: int = 300,
        temperature: float = 0.8,
        every_n_epochs: int = 1,
        seed: int = 0,
    ):
        if seed is None:
            raise CharLMError("callbacks.sample_text.seed must be a number: samples draw from their own seed")
        self.prompt, self.length, self.temperature = prompt, length, temperature
        self.every_n_epochs, self.seed = every_n_epochs, seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        generate(pl_module, self.prompt, length=0)  # a prompt the model cannot read fails now, not in an hour

    def _sample(self, pl_module: pl.LightningModule) -> str:
        try:
            return generate(pl_module, self.prompt, self.length, self.temperature, seed=self.seed)[0]
        except CharLMError as err:  # a diverged model: the run goes on, to be reported as such
            return f"(no sample: {err})"

    @staticmethod
    def _append(trainer: pl.Trainer, heading: str, text: str) -> None:
        """samples.txt in the run directory, beside the metrics: every sample, headed. (The
        directory is TensorBoard's: `trainer.log_dir` asks every DDP rank, and only rank 0 is here.)"""
        with open(Path(tensorboards(trainer)[0].get_logdir()) / "samples.txt", "a", encoding="utf-8") as file:
            file.write(f"=== {heading} ===\n{text}\n\n")

    @rank_zero_only
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs < 1 or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        writers = tensorboards(trainer)
        if not writers:
            return
        text = self._sample(pl_module)
        # indented four spaces: TensorBoard renders markdown, and a code block keeps the line breaks
        markdown = "\n".join("    " + line for line in text.split("\n"))
        for writer in writers:
            writer.add_text("samples", markdown, global_step=trainer.global_step)
        self._append(trainer, f"epoch {trainer.current_epoch}, step {trainer.global_step}", text)

    @rank_zero_only
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The tested model (after training: the best checkpoint) writes the file's last sample."""
        if tensorboards(trainer):
            checkpoint = Path(trainer.ckpt_path).name if trainer.ckpt_path else "the model as trained"
            self._append(trainer, f"tested: {checkpoint}", self._sample(pl_module))
