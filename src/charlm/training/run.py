"""One training run from a composed Hydra config: build, fit, test the best checkpoint, sum up."""

from __future__ import annotations

import logging
import math
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Checkpoint, LearningRateMonitor, ProgressBar
from pytorch_lightning.utilities import rank_zero_only

from charlm.config import check_open_groups, plain, typed
from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.errors import CharLMError, instantiate
from charlm.models.checkpoints import find_checkpoint, read_checkpoint
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig
from charlm.report.events import ERROR_FILE
from charlm.report.summary import RunSummary, job_name
from charlm.training import run_dirs
from charlm.training.ddp import ranks_of_one_job
from charlm.training.faults import check_limits, said_in_one_line
from charlm.training.resume import check_resumable
from charlm.training.saving import AtomicCheckpointIO, remove_abandoned_partials

log = logging.getLogger(__name__)


def quiet_library_warnings() -> None:
    """Warnings of the libraries charlm uses that say nothing a charlm user can act on."""
    # Batches are slices of one in-memory tensor: worker processes would only add copying.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    # Lightning's own use of torch's pytree API, not ours
    warnings.filterwarnings("ignore", ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # torchdata's StatefulDataLoader calling an API that newer torch deprecates
    warnings.filterwarnings("ignore", "'set_vital' is deprecated")
    # ThroughputMonitor asking for FLOPs: characters per second is the figure here
    warnings.filterwarnings("ignore", ".*`flops_per_batch` attribute.*")
    # DDP: charlm's scores are torchmetrics, already reduced over the ranks when they are logged
    warnings.filterwarnings("ignore", ".*when logging on epoch level in distributed setting.*")
    # model.weight_drop hands cuDNN masked copies of the recurrent weights, which it packs at each
    # call (as for AWD-LSTM): expected, and the fused kernel still runs
    warnings.filterwarnings("ignore", ".*not part of single contiguous chunk of memory.*")
    # Lightning's own all_gather call
    warnings.filterwarnings("ignore", ".*torch.distributed.nn.functional.all_gather is deprecated.*")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_no_litlogger)  # once: same filter


def _no_litlogger(record: logging.LogRecord) -> bool:
    """Lightning's advertisement for a cloud logger, at every Trainer's start."""
    return "litlogger" not in record.getMessage()


def _callbacks(cfg: DictConfig, loggers: list[Any]) -> list[pl.Callback]:
    """conf/callbacks/, but those that the Trainer's own switches turn off (Lightning refuses them
    then): each left out is named in the log."""
    callbacks = {name: instantiate(node) for name, node in (cfg.get("callbacks") or {}).items() if node}
    switched_off = {
        LearningRateMonitor: ("no logger", not loggers),
        ProgressBar: ("trainer.enable_progress_bar=false", cfg.trainer.get("enable_progress_bar") is False),
        Checkpoint: ("trainer.enable_checkpointing=false", cfg.trainer.get("enable_checkpointing") is False),
    }
    kept = []
    for name, callback in callbacks.items():
        off = [why for kind, (why, is_off) in switched_off.items() if is_off and isinstance(callback, kind)]
        if off:
            log.info("callbacks.%s left out: %s", name, off[0])
        else:
            kept.append(callback)
    return kept


def build(cfg: DictConfig) -> tuple[CharDataModule, CharLM, pl.Trainer]:
    """Seed, then make the data (vocabulary saved in the run directory), model and trainer."""
    quiet_library_warnings()  # here: every way into a run (train.py, a DDP rank, a notebook) builds it
    # every DDP rank alike, for the same initial weights (callbacks.random_state then sets the
    # ranks' dropout apart); seed 0 is a seed too
    if cfg.get("seed") is not None:
        pl.seed_everything(cfg.seed, workers=True)

    datamodule = CharDataModule(typed(cfg.data, DataConfig))
    datamodule.prepare_data()  # DDP's other ranks start later, from trainer.fit: the download is done
    datamodule.setup()
    if rank_zero_only.rank == 0:  # DDP: the other ranks write nothing
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        datamodule.vocab.save(Path(cfg.paths.output_dir) / "vocab.json")

    model = CharLM(
        datamodule.vocab.chars,
        network=typed(cfg.model, NetworkConfig),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")),
        stateful=datamodule.config.stateful,
    )
    # `~logger` and `callbacks.<name>=null` on the command line switch them off
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: pl.Trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=_callbacks(cfg, loggers),
        plugins=[AtomicCheckpointIO()],
    )
    return datamodule, model, trainer


def train_job(cfg: DictConfig) -> float | None:
    """`train`, except that in a multirun a failing job is logged (one line, and `error.txt` in its
    directory for the sweep report) and the sweep goes on with the next job; and that a single run
    refused before its first step leaves no run directory behind."""
    try:
        with ranks_of_one_job():  # DDP: a failing rank 1.. exits there, and rank 0 names it
            return train(cfg)
    except Exception as err:  # one job's failure must not cost the sweep its other jobs
        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            if isinstance(err, CharLMError) and not getattr(err, "trained", True):
                remove_run_dir(Path(cfg.paths.output_dir))
            raise
        if isinstance(err, CharLMError):
            log.error("job failed: %s", err)
        else:  # a bug, not bad input: keep its traceback
            log.exception("job failed: %s: %s", type(err).__name__, err)
        output_dir = Path(cfg.paths.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / ERROR_FILE).write_text(f"{type(err).__name__}: {err}\n", encoding="utf-8")
        return math.inf  # for a sweeper minimising the val loss: the worst


def remove_run_dir(output_dir: Path) -> None:
    """Delete the directory made for a run that was refused before it trained a step (its config
    and an empty log), so that `logs/` and the report list only runs that ran. Only a directory
    this process made new (`run_dirs.claimed`: never a `hydra.run.dir` given by hand), only on rank
    0, and never one holding a checkpoint."""
    if rank_zero_only.rank != 0 or output_dir.resolve() not in run_dirs.claimed:
        return
    if output_dir.is_dir() and not any(output_dir.rglob("*.ckpt")):
        shutil.rmtree(output_dir, ignore_errors=True)


def train(cfg: DictConfig) -> float | None:
    """Train, test with the best checkpoint, and return the best val loss (for Hydra sweepers).

    A CharLMError says, in its `trained` attribute, whether the run had trained a step by then."""
    trainer: pl.Trainer | None = None
    first_step = 0
    try:
        with said_in_one_line(cfg):
            check_open_groups(cfg)  # before the corpus is read: a typo costs a second, not a minute
            check_limits(cfg)
            if cfg.trainer.get("accelerator") == "gpu" and not torch.cuda.is_available():
                raise CharLMError(
                    "trainer.accelerator=gpu, but torch sees no CUDA GPU here: use trainer=cpu, "
                    "or trainer=ddp_sim to try DDP on two CPU processes"
                )
            if rank_zero_only.rank == 0 and cfg.get("paths"):  # runs/<run>/, multiruns/<date>/<job>/
                for folder in ("*/*/checkpoints", "*/*/*/checkpoints"):
                    for checkpoints in Path(cfg.paths.log_dir).expanduser().glob(folder):
                        remove_abandoned_partials(checkpoints)
            resume = find_checkpoint(cfg.ckpt_path, which="last") if cfg.get("ckpt_path") else None
            datamodule, model, trainer = build(cfg)
            if resume:
                saved = read_checkpoint(resume)  # once: it checks every byte of the file
                check_resumable(resume, saved, model, datamodule, trainer.world_size)
                first_step = saved["global_step"]
                del saved  # memory-mapped: not held open through training
                log.info("resuming from %s", resume)
                remove_abandoned_partials(resume.parent)  # a run elsewhere than log_dir
            return _fit_and_test(cfg, datamodule, model, trainer, resume, first_step)
    except CharLMError as err:
        err.trained = trainer is not None and trainer.global_step > first_step
        raise


def _fit_and_test(
    cfg: DictConfig,
    datamodule: CharDataModule,
    model: CharLM,
    trainer: pl.Trainer,
    resume: Path | None,
    first_step: int,
) -> float | None:
    started = time.monotonic()
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    if resume and trainer.global_step == first_step:
        raise CharLMError(
            f"nothing to resume: {resume} had finished its training (step {first_step}); "
            "raise trainer.max_epochs or ++trainer.max_steps to train it further"
        )
    best = float(model.best_val_loss.compute()) if model.best_val_loss.update_called else None
    fit_metrics = dict(trainer.logged_metrics)  # the test starts with none
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    if datamodule.has_test_split:
        trainer.test(model, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
    else:
        log.info("no test split (data.splits ends in 0): not tested")
    if trainer.is_global_zero:
        output_dir = Path(cfg.paths.output_dir)
        seconds = time.monotonic() - started
        summary = summarize(trainer, fit_metrics, model, best, seconds, output_dir)
        log.info("done: %s", summary.line())
        log.info("output in %s", output_dir)
    return best


def summarize(
    trainer: pl.Trainer,
    fit_metrics: dict[str, Any],
    model: CharLM,
    best_val_loss: float | None,
    seconds: float,
    output_dir: Path,
) -> RunSummary:
    """The run's row of a sweep report, from what the trainer and the model hold: the same figures
    that the report reads back from the run's events."""
    chars, train_time = fit_metrics.get("train/lengths"), fit_metrics.get("train/time")
    chars_per_sec = None
    if chars is not None and train_time is not None and float(train_time) > 0:
        chars_per_sec = float(chars) / float(train_time) * trainer.world_size
    test_ppl = trainer.logged_metrics.get("test/ppl")
    return RunSummary(
        name=job_name(output_dir),
        path=output_dir,
        status="finished",
        parameters=sum(p.numel() for p in model.parameters()),
        val_loss=best_val_loss,
        test_ppl=None if test_ppl is None else float(test_ppl),
        chars_per_sec=chars_per_sec,
        wall_time=seconds,
        epochs=trainer.fit_loop.epoch_progress.current.started or None,
    )
