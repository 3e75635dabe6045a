"""One training run from a composed Hydra config: fit, test the best checkpoint, report."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
from pytorch_lightning.utilities import rank_zero_only

from charlm.callbacks import (
    LogHyperparameters,
    RandomState,
    SaveOnInterrupt,
    StopWhenDiverged,
    ValidateAtLastStep,
)
from charlm.checkpoints import AtomicCheckpointIO, check_resumable, find_checkpoint, read_checkpoint
from charlm.datamodule import CharDataModule
from charlm.ddp import RANK_OF_SWEEP_JOB, ranks_of_one_job
from charlm.errors import CharLMError
from charlm.model import CharLM
from charlm.report import ERROR_FILE, RunSummary, job_name, read_run
from charlm.schema import check_types

log = logging.getLogger(__name__)

# Batches are slices of one in-memory tensor: worker processes would only add copying.
warnings.filterwarnings("ignore", ".*does not have many workers.*")
# Lightning's own use of torch's pytree API, not ours; and its advertisement for a cloud logger.
warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
# torchdata's StatefulDataLoader calling an API that newer torch deprecates
warnings.filterwarnings("ignore", "'set_vital' is deprecated")
# ThroughputMonitor asking for FLOPs: characters per second is the figure here
warnings.filterwarnings("ignore", ".*`flops_per_batch` attribute.*")
# DDP: charlm's scores are torchmetrics, already reduced over the ranks when they are logged
warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
# Lightning's own all_gather call
warnings.filterwarnings("ignore", ".*torch.distributed.nn.functional.all_gather is deprecated.*")
logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(
    lambda record: "litlogger" not in record.getMessage()
)

_TRAINER_HPARAMS = ("max_epochs", "max_steps", "gradient_clip_val", "precision", "accumulate_grad_batches")


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, letting our own clear errors through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, CharLMError):
            raise cause from None
        raise


def _plain(node: DictConfig | None) -> Any:
    return None if node is None else OmegaConf.to_container(node, resolve=True)


def run_hparams(cfg: DictConfig, model: CharLM) -> dict[str, Any]:
    """What tells the runs of a sweep apart, for TensorBoard's HPARAMS tab."""
    drop = {"_target_", "_partial_", "corpus", "data_dir"}
    params: dict[str, Any] = {
        group: {k: v for k, v in (_plain(cfg.get(group)) or {}).items() if k not in drop}
        for group in ("data", "model", "optimizer", "scheduler")
    }
    params["trainer"] = {k: cfg.trainer.get(k) for k in _TRAINER_HPARAMS}
    params["seed"] = cfg.seed
    params["model"]["parameters"] = sum(p.numel() for p in model.parameters())
    if HydraConfig.initialized():
        choices = HydraConfig.get().runtime.choices
        params["config"] = {
            g: choices.get(g) for g in ("experiment", "data", "model", "optimizer", "scheduler", "trainer")
        }
    return params


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, pl.Trainer]:
    """Seed, then make the data (vocabulary saved in the run directory), model and trainer."""
    if cfg.get("seed") is not None:  # seed 0 is a seed too
        pl.seed_everything(cfg.seed, workers=True)

    datamodule: CharDataModule = instantiate(cfg.data, _convert_="all")  # plain lists in checkpoints
    datamodule.prepare_data()  # DDP's other ranks start later, from trainer.fit: the download is done
    datamodule.setup()
    if rank_zero_only.rank == 0:  # DDP: the other ranks write nothing
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        datamodule.vocab.save(Path(cfg.paths.output_dir) / "vocab.json")

    model: CharLM = instantiate(
        cfg.model,
        vocab=list(datamodule.vocab.chars),
        optimizer=_plain(cfg.optimizer),
        scheduler=_plain(cfg.get("scheduler")),
        _recursive_=False,
        _convert_="all",
    )
    # `~logger` and `callbacks.<name>=null` on the command line switch them off
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    # The Trainer's own switches win: Lightning refuses these callbacks when they are off.
    switched_off = {
        LearningRateMonitor: not loggers,
        ProgressBar: cfg.trainer.get("enable_progress_bar") is False,
        Checkpoint: cfg.trainer.get("enable_checkpointing") is False,
    }
    callbacks = [c for c in callbacks if not any(isinstance(c, k) and off for k, off in switched_off.items())]
    callbacks += [
        LogHyperparameters(run_hparams(cfg, model)),
        ValidateAtLastStep(),
        StopWhenDiverged(),
        SaveOnInterrupt(),
        RandomState(),
    ]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )
    return datamodule, model, trainer


def train_job(cfg: DictConfig) -> float | None:
    """`train`, except that in a multirun a failing job is logged (one line, and `error.txt` in its
    directory for the sweep report) and the sweep goes on with the next job."""
    try:
        with ranks_of_one_job():
            return train(cfg)
    except Exception as err:  # one job's failure must not cost the sweep its other jobs
        if os.environ.get(RANK_OF_SWEEP_JOB) and rank_zero_only.rank != 0:
            # DDP rank 1.. of a sweep's job: rank 0 reports the failure. Exiting with an error would
            # make Lightning's process watcher on rank 0 kill it, and with it the sweep.
            log.error("rank %d: job failed: %s: %s", rank_zero_only.rank, type(err).__name__, err)
            return None
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        if isinstance(err, CharLMError):
            log.error("job failed: %s", err)
        else:  # a bug, not bad input: keep its traceback
            log.exception("job failed: %s: %s", type(err).__name__, err)
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ERROR_FILE).write_text(f"{type(err).__name__}: {err}\n", encoding="utf-8")
        return math.inf  # for a sweeper minimising the val loss: the worst


def train(cfg: DictConfig) -> float | None:
    """Train, test with the best checkpoint, and return the best val loss (for Hydra sweepers)."""
    check_types(cfg)  # before the corpus is read: a typo costs a second, not a minute
    if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
        raise CharLMError(
            "trainer.accelerator=gpu, but torch sees no CUDA GPU here: use trainer=cpu, "
            "or trainer=ddp_sim to try DDP on two CPU processes"
        )
    resume = find_checkpoint(cfg.ckpt_path, which="last") if cfg.get("ckpt_path") else None
    datamodule, model, trainer = build(cfg)
    if resume:
        saved = read_checkpoint(resume)  # once: it checks every byte of the file
        check_resumable(resume, saved, model, datamodule, trainer.world_size)
        step = saved["global_step"]
        del saved  # memory-mapped: not held open through training
        log.info("resuming from %s", resume)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    if resume and trainer.global_step == step:
        raise CharLMError(
            f"nothing to resume: {resume} had finished its training (step {step}); "
            "raise trainer.max_epochs or ++trainer.max_steps to train it further"
        )
    best = float(model.best_val_loss.compute()) if model.best_val_loss.update_called else None
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    if datamodule.has_test_split:
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
    else:
        log.info("no test split (data.splits ends in 0): not tested")

    test = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    if trainer.is_global_zero:
        log.info("done: %s", summarize(cfg, model, best, test.get("test/ppl")))
        log.info("output in %s", cfg.paths.output_dir)
    return best


def summarize(cfg: DictConfig, model: CharLM, best_val_loss: float | None, test_ppl: float | None) -> str:
    """The run's row of a sweep report, read back from its events as the report reads it; the
    scores it holds in memory fill in what the events lack (`~logger`). A failure to read them
    never fails a run that has finished: the line then says so."""
    output_dir = Path(cfg.paths.output_dir)
    try:
        summary = read_run(output_dir, name=job_name(output_dir))
    except Exception as err:  # the report is a convenience; the run's results are on disk
        log.warning("could not read this run's events back (%s)", err)
        summary = RunSummary(name=job_name(output_dir), path=output_dir)
    summary.status = "finished"
    if summary.parameters is None:
        summary.parameters = sum(p.numel() for p in model.parameters())
    if summary.val_loss is None:
        summary.val_loss = best_val_loss
    if summary.test_ppl is None:
        summary.test_ppl = test_ppl
    return summary.line()
