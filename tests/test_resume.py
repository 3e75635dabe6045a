"""Long runs survive interruption: kill, resume, and end as if nothing had happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY, compose_train

from charlm.errors import CharLMError
from charlm.training.callbacks.checkpointing import ModelCheckpoint
from charlm.training.run import build
from charlm.training.saving import AtomicCheckpointIO

# Three epochs of about 100 steps on a 60 kB corpus, dropout on, last.ckpt every 10 steps.
RUN = [
    "data=textfile",
    "hidden=32",
    "model.embedding_dim=8",
    "model.dropout=0.2",
    "data.seq_len=32",
    "data.batch_size=16",
    "trainer.max_epochs=3",
    "++trainer.limit_val_batches=5",
    "++trainer.enable_progress_bar=false",
    "trainer.accelerator=cpu",
    "callbacks.step_checkpoint.every_n_train_steps=10",
]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), *RUN, *args]
    # one stream: Hydra logs to stdout, Lightning and Python's errors go to stderr
    return subprocess.Popen(
        command, cwd=cwd, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def saved_step(checkpoint: Path) -> int:
    try:
        return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-3000:]


@pytest.mark.parametrize(
    "stop", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"]
)
def test_a_killed_run_resumes_to_the_same_end(tmp_path: Path, stop: signal.Signals) -> None:
    """SIGKILL loses the steps since the last checkpoint; SIGINT (Ctrl+C) and SIGTERM (`kill`, a
    scheduler's notice) save at the next step."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("En un lugar de la Mancha, de cuyo nombre no quiero acordarme. " * 1000)[:60_000])
    data = [f"data.path={corpus}"]
    finish(start([*data, "hydra.run.dir=unbroken"], tmp_path))
    unbroken = torch.load(tmp_path / "unbroken" / "checkpoints" / "last.ckpt", weights_only=True)
    epoch_steps = unbroken["global_step"] // 3

    killed = start([*data, "hydra.run.dir=killed"], tmp_path)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    while saved_step(last) < epoch_steps + 10 and killed.poll() is None:
        time.sleep(0.05)
    at_signal = saved_step(last)
    killed.send_signal(stop)
    output, _ = killed.communicate(timeout=120)
    step = saved_step(last)
    assert epoch_steps < step < unbroken["global_step"] and step % epoch_steps  # mid-epoch, after the first
    if stop == signal.SIGKILL:
        assert killed.returncode == -signal.SIGKILL
    else:  # saved between steps, said so in one line, and left no traceback
        assert killed.returncode == 1 and step > at_signal  # a save of its own, after the last one
        assert f"interrupted at step {step}: saved {last}; resume with ckpt_path={last.parents[1]}" in output
        assert "Traceback" not in output

    finish(start([*data, "hydra.run.dir=resumed", f"ckpt_path={tmp_path / 'killed'}"], tmp_path))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == unbroken["global_step"]
    # the same batches in the same order, dropout masks and optimizer state: the same weights
    weights = resumed["state_dict"], unbroken["state_dict"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


def test_a_save_cut_short_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 10}, path)

    def killed_mid_write(obj: object, file: BinaryIO) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", killed_mid_write)
    full = r"could not save checkpoint .*last.ckpt: No space left on device\. The previous one is intact"
    with pytest.raises(CharLMError, match=full):
        io.save_checkpoint({"global_step": 20}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_checkpoints_are_renamed_into_place_from_their_own_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rename within one directory is atomic; Lightning's own move from $TMPDIR is a copy when
    $TMPDIR is another filesystem, and a kill mid-copy leaves a truncated checkpoint."""
    renames = []
    replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renames.append((src, dst)), replace(src, dst)))
    AtomicCheckpointIO().save_checkpoint({"global_step": 10}, tmp_path / "last.ckpt")
    ((source, target),) = renames
    assert Path(source).parent == Path(target).parent == tmp_path
    assert torch.load(target, weights_only=True)["global_step"] == 10


def test_a_run_resumed_elsewhere_keeps_its_record_of_the_best(tmp_path: Path) -> None:
    before = ModelCheckpoint(dirpath=tmp_path / "first", monitor="val/loss")
    before.best_model_path = str(tmp_path / "first" / "best.ckpt")
    before.best_model_score = torch.tensor(1.25)
    before.best_k_models = {before.best_model_path: torch.tensor(1.25)}
    after = ModelCheckpoint(dirpath=tmp_path / "resumed", monitor="val/loss")
    after.load_state_dict(before.state_dict())
    # so the first validation after the resume is saved as best only if it beats 1.25
    assert after.best_model_score == 1.25 and after.best_k_models == before.best_k_models
    assert after.dirpath == str(tmp_path / "resumed")


class SaveAt(pl.Callback):
    def __init__(self, step: int, path: Path):
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)


def test_a_stateful_run_resumes_mid_epoch_with_its_streams_state(tmp_path: Path, text_file: Path) -> None:
    def fit(name: str, resume: Path | None = None) -> dict[str, torch.Tensor]:
        cfg = compose_train(
            ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path / name}", "hidden=16"]
            + [*TINY, "data.stateful=true", "++trainer.max_steps=40", "model.dropout=0.1", "~logger"]
        )
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.append(SaveAt(15, tmp_path / "step15.ckpt"))
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
        return model.state_dict()

    unbroken = fit("unbroken")
    resumed = fit("resumed", tmp_path / "step15.ckpt")  # 15 of the epoch's 58 batches done
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)


class PoisonWeights(pl.Callback):
    """Set one weight to nan after step `at`, as an exploding update would."""

    def __init__(self, at: int):
        self.at = at

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if trainer.global_step == self.at:
            with torch.no_grad():
                pl_module.net.head.weight[0, 0] = float("nan")


DIVERGED_AT_9 = "training diverged at step 9: the loss is nan. The last good checkpoint is .*last.ckpt"


@pytest.mark.parametrize(
    "poison_at, log_every, error",
    [
        (8, 2, DIVERGED_AT_9),
        # read at the next step that logs, 10, which is also a checkpoint's: named as step 9, not saved
        (8, 5, DIVERGED_AT_9),
        # the loss of step 10 was finite, but its update was not, and step 10 saves last.ckpt
        (10, 2, "not saving a checkpoint at step 10: the weights are nan or inf"),
    ],
)
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, text_file: Path, poison_at: int, log_every: int, error: str
) -> None:
    run = tmp_path / "run"
    cfg = compose_train(
        ["data=textfile", f"data.path={text_file}", f"paths.output_dir={run}", "hidden=16", *TINY]
        + ["++trainer.max_steps=30", "callbacks.step_checkpoint.every_n_train_steps=5"]
        + [f"++trainer.log_every_n_steps={log_every}"]
    )
    datamodule, model, trainer = build(cfg)
    trainer.callbacks.insert(0, PoisonWeights(at=poison_at))  # before the checkpoints, as an update is
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    with pytest.raises(CharLMError, match=error):
        trainer.fit(model, datamodule=datamodule)
    # the Ctrl+C handler is gone with the failed run: the next job of a sweep starts clean
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6  # the validation at step 6 (after the step-5 save): good
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert not [p for p in (run / "checkpoints").iterdir() if "partial" in p.name]
