"""What a run shows in TensorBoard beyond its scalars: its hyperparameters (HPARAMS tab) and
samples of the text it writes as it learns (TEXT tab, and samples.txt)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from torch.utils.tensorboard.summary import hparams

from charlm.errors import CharLMError
from charlm.generation import generate

log = logging.getLogger(__name__)

_CONFIG_GROUPS = ("experiment", "data", "model", "optimizer", "scheduler", "trainer")


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

    They are read, at fit start, from what the run is made of: the data module's and the model's
    settings and the model's parameter count; the Trainer's limits and the seed come from the
    config (conf/callbacks/default.yaml), with which option of each config group was chosen.
    Only the session (its hparams, then how it ended) is written here. The metric columns are the
    scalars the run logs, so `hp_metric` shows the real best val perplexity, not Lightning's -1
    placeholder. No experiment summary is written: TensorBoard would take one run's for all (its
    hparams plugin picks the first it finds), hiding settings that only other runs of a sweep have.
    """

    def __init__(self, seed: int | None = None, trainer: Mapping[str, Any] | None = None):
        self.seed, self.trainer = seed, dict(trainer or {})

    @staticmethod
    def _write(trainer: pl.Trainer, summary: Any) -> None:
        for experiment in tensorboards(trainer):
            if experiment.file_writer is not None:  # None once Lightning has closed the logger
                experiment.file_writer.add_summary(summary)

    def run_hparams(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """What tells the runs of a sweep apart, grouped as the config is."""
        settings = pl_module.hparams
        params: dict[str, Any] = {
            "model": {**settings["network"], "parameters": sum(p.numel() for p in pl_module.parameters())},
            "optimizer": _arguments(settings["optimizer"]),
            "scheduler": _arguments(settings["scheduler"]),
            "trainer": dict(self.trainer),
            "seed": self.seed,
        }
        # the corpus and vocabulary too: the report ranks only runs whose perplexities compare
        params["data"] = {"vocab_size": len(settings["vocab"])}
        if trainer.datamodule is not None:
            params["data"].update({k: v for k, v in trainer.datamodule.hparams.items() if k != "data_dir"})
            params["data"]["corpus"] = trainer.datamodule.corpus.name
        if HydraConfig.initialized():
            choices = HydraConfig.get().runtime.choices
            params["config"] = {g: choices.get(g) for g in _CONFIG_GROUPS}
        # DDP: the report's chars/s counts every rank's characters
        params["trainer"]["world_size"] = trainer.world_size
        return flatten(params)

    @rank_zero_only
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        params = self.run_hparams(trainer, pl_module)
        for logger in trainer.loggers:  # TensorBoard's, given no metrics, only fills hparams.yaml
            logger.log_hyperparams(params)
        _, session_start, _ = hparams(params, {})
        self._write(trainer, session_start)

    @rank_zero_only
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, _session_end(api_pb2.STATUS_SUCCESS))

    @rank_zero_only
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._write(trainer, _session_end(api_pb2.STATUS_FAILURE))


def _arguments(node: Mapping[str, Any] | None) -> dict[str, Any]:
    """An optimizer's or schedule's arguments (which one it is shows under config/)."""
    return {k: v for k, v in (node or {}).items() if k not in ("_target_", "_partial_")}


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
        for name, value in (("length", length), ("every_n_epochs", every_n_epochs)):
            if value < 0:
                raise CharLMError(f"callbacks.sample_text.{name} must be 0 (none) or more, got {value}")
        self.prompt, self.length, self.temperature = prompt, length, temperature
        self.every_n_epochs, self.seed = every_n_epochs, seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:  # a prompt the model cannot read fails now, not in an hour
            generate(pl_module, self.prompt, length=0, temperature=self.temperature)
        except CharLMError as err:  # the prompt, or the temperature
            raise CharLMError(f"callbacks.sample_text (prompt={self.prompt!r}): {err}") from None

    def _sample(self, pl_module: pl.LightningModule) -> str:
        try:
            return generate(pl_module, self.prompt, self.length, self.temperature, seed=self.seed)[0]
        except CharLMError as err:  # a diverged model: the run goes on, to be reported as such
            return f"(no sample: {err})"

    @staticmethod
    def _append(trainer: pl.Trainer, heading: str, text: str) -> None:
        """samples.txt in the run directory, beside the metrics: every sample, headed. (The
        directory is TensorBoard's: `trainer.log_dir` asks every DDP rank, and only rank 0 is here.)"""
        path = Path(tensorboards(trainer)[0].get_logdir()) / "samples.txt"
        try:
            with open(path, "a", encoding="utf-8") as file:
                file.write(f"=== {heading} ===\n{text}\n\n")
        except OSError as err:  # a full disk: the run goes on (its checkpoint save will say so)
            log.warning(
                "could not write %s: %s; the samples stay in TensorBoard's TEXT tab", path, err.strerror
            )

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
