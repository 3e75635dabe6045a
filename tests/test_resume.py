"""Long runs survive interruption: kill, resume, and end as if nothing had happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY, compose_train, run_train

from charlm.data.windows import split_bounds
from charlm.errors import CharLMError
from charlm.models.lightning_module import CharLM
from charlm.training.callbacks.checkpointing import ModelCheckpoint
from charlm.training.run import build, train
from charlm.training.saving import AtomicCheckpointIO, remove_abandoned_partials

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
@pytest.mark.slow
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


# a full disk as the file's write sees it, and as torch's zip writer reports it (no OSError)
FULL_DISK = {
    "os": (OSError(28, "No space left on device"), "No space left on device"),
    "zip writer": (
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0"),
        "the write",
    ),
}


@pytest.mark.parametrize("failure", FULL_DISK)
def test_a_save_cut_short_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 10}, path)
    error, reason = FULL_DISK[failure]

    def killed_mid_write(obj: object, file: BinaryIO) -> None:
        file.write(b"PK\x03\x04 half a checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", killed_mid_write)
    full = rf"could not save checkpoint .*last.ckpt: {reason}.* MB free on its disk\)\. The previous one"
    with pytest.raises(CharLMError, match=full):
        io.save_checkpoint({"global_step": 20}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind


def test_partial_files_of_saves_cut_short_are_removed_but_not_one_being_written(tmp_path: Path) -> None:
    """A SIGKILL mid-save leaves `.last.ckpt.partial` (as large as a checkpoint) for good; a resume
    from the run removes it, but not a partial file that a running save is still writing."""
    abandoned, live = tmp_path / ".last.ckpt.partial", tmp_path / ".epoch000.ckpt.partial"
    for partial in (abandoned, live):
        partial.write_bytes(b"PK\x03\x04 half a checkpoint")
    os.utime(abandoned, (time.time() - 3600, time.time() - 3600))
    remove_abandoned_partials(tmp_path)
    assert not abandoned.exists() and live.exists()


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


# Resuming a finished tiny run (12 steps of a 58-step epoch) with a setting, file or corpus changed.
LINE = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme; ¡qué señor hidalgo!\n"


def tiny(corpus: Path, output_dir: Path, *overrides: str) -> list[str]:
    data = ["data=textfile", f"data.path={corpus}"]
    return [*data, f"paths.output_dir={output_dir}", "hidden=16", *TINY, "~logger", *overrides]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Its corpus (200 lines), and its last.ckpt."""
    folder = tmp_path_factory.mktemp("finished")
    corpus = folder / "corpus.txt"
    corpus.write_text(LINE * 200, encoding="utf-8")
    datamodule, model, trainer = build(compose_train(tiny(corpus, folder / "run")))
    trainer.fit(model, datamodule=datamodule)
    return corpus, folder / "run" / "checkpoints" / "last.ckpt"


def sizes(lines: int) -> str:
    """Of the train, val and test splits of a corpus of `lines` LINEs."""
    return " / ".join(f"{end - start:,}" for start, end in split_bounds(len(LINE) * lines, [0.9, 0.05, 0.05]))


def edited(checkpoint: Path, folder: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of `checkpoint` changed by `edit`, as an older charlm or another setting would save it."""
    saved = torch.load(checkpoint, weights_only=True)
    edit(saved)
    torch.save(saved, folder / "edited.ckpt")
    return folder / "edited.ckpt"


def resume(corpus: Path, checkpoint: Path, output_dir: Path, *overrides: str) -> float | None:
    return train(compose_train(tiny(corpus, output_dir, f"ckpt_path={checkpoint}", *overrides)))


@pytest.mark.parametrize("lines", [100, 300], ids=["smaller", "bigger"])
def test_a_resume_on_a_corpus_of_another_size_is_refused(
    tmp_path: Path, finished: tuple[Path, Path], lines: int
) -> None:
    """The same characters, so the vocabulary matches; but the saved position in the data does not:
    Lightning failed restoring it on a smaller corpus, and read other batches on a bigger one."""
    _, checkpoint = finished
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LINE * lines, encoding="utf-8")
    refused = f"a corpus of {sizes(200)} characters \\(train / val / test\\), this run's has {sizes(lines)};"
    with pytest.raises(CharLMError, match=refused):
        resume(corpus, checkpoint, tmp_path / "resumed", "++trainer.max_steps=24")


@pytest.mark.slow
def test_a_resume_on_a_smaller_corpus_is_one_line(tmp_path: Path, finished: tuple[Path, Path]) -> None:
    _, checkpoint = finished
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(LINE * 100, encoding="utf-8")
    done = run_train(
        [*tiny(corpus, tmp_path / "resumed", "++trainer.max_steps=24"), f"ckpt_path={checkpoint}"], tmp_path
    )
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "Traceback" not in output and "StopIteration" not in output
    assert f"cannot resume from {checkpoint}: it was trained on a corpus of {sizes(200)} characters" in output


def test_a_checkpoint_without_the_record_of_its_corpus_still_resumes(
    tmp_path: Path, finished: tuple[Path, Path]
) -> None:
    """Checkpoints written before the data module kept the size of its splits."""
    corpus, checkpoint = finished
    older = edited(checkpoint, tmp_path, lambda saved: saved.pop("CharDataModule"))
    resume(corpus, older, tmp_path / "resumed", "++trainer.max_steps=24")
    assert saved_step(tmp_path / "resumed" / "checkpoints" / "last.ckpt") == 24


def with_byte_order_mark(saved: dict) -> None:
    saved["hyper_parameters"]["vocab"].append("\ufeff")
    del saved["datamodule_hyper_parameters"]["normalize"]


def without_setting(saved: dict) -> None:
    del saved["hyper_parameters"]["network"]["locked_dropout"]


def with_extra_weight(saved: dict) -> None:
    saved["state_dict"]["net.rnn.weight_hr_l0"] = torch.zeros(4, 16)


def without_training_state(saved: dict) -> None:
    for key in ("loops", "optimizer_states", "lr_schedulers", "callbacks"):
        del saved[key]


@pytest.mark.parametrize(
    "edit, overrides, refused",
    [
        # saved before model.locked_dropout existed: trained with its default
        (
            without_setting,
            ["model.locked_dropout=true"],
            "it was trained with locked_dropout=False \\(it predates model.locked_dropout: an older charlm, "
            "trained with the default\\), this run has locked_dropout=True",
        ),
        (
            lambda saved: saved["state_dict"].pop("net.head.bias"),
            [],
            "its weights do not fit this model \\(it lacks net.head.bias\\): it was saved by another charlm",
        ),
        (
            lambda saved: (without_setting(saved), with_extra_weight(saved)),
            [],
            "its weights do not fit this model \\(it has net.rnn.weight_hr_l0, which this model lacks\\): "
            "it predates model.locked_dropout, so it was saved by an older charlm",
        ),
        (without_training_state, [], "it holds the weights only"),
        # torch's KeyError 'momentum' in the fit
        (
            None,
            ["optimizer=sgd"],
            "it was trained with optimizer=torch.optim.Adam, this run has optimizer=torch.optim.SGD",
        ),
        # restored from the checkpoint: the new learning rate was silently ignored
        (
            None,
            ["optimizer.lr=0.01"],
            "it was trained with optimizer.lr=0.002, this run has optimizer.lr=0.01",
        ),
        # a schedule from its first step, at step 12
        (
            None,
            ["scheduler=cosine"],
            "it was trained with scheduler=none, this run has scheduler=charlm.models",
        ),
        # the loader's saved position in another format: an assertion in torchdata's loader
        (
            None,
            ["data.num_workers=1"],
            "it was trained with data.num_workers=0, this run has data.num_workers=1",
        ),
        # quijote.txt opens with U+FEFF, which a charlm before data.normalize kept as a character
        (
            with_byte_order_mark,
            [],
            "it was saved by an older charlm, whose vocabulary kept the file's byte-order mark "
            "\\(U\\+FEFF\\), which is now dropped: start a new run",
        ),
    ],
    ids=[
        "setting-added",
        "weight-missing",
        "weight-extra",
        "weights-only",
        "sgd",
        "lr",
        "cosine",
        "workers",
        "bom",
    ],
)
def test_a_resume_that_cannot_continue_is_one_line(
    tmp_path: Path,
    finished: tuple[Path, Path],
    edit: Callable[[dict], object] | None,
    overrides: list[str],
    refused: str,
) -> None:
    corpus, checkpoint = finished
    if edit:
        checkpoint = edited(checkpoint, tmp_path, edit)
    with pytest.raises(CharLMError, match=f"cannot resume from {checkpoint}: {refused}"):
        resume(corpus, checkpoint, tmp_path / "resumed", "++trainer.max_steps=24", *overrides)


class FirstBatch(pl.Callback):
    """The epoch and batch index that training starts at."""

    def __init__(self) -> None:
        self.at: tuple[int, int] | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object, index: int
    ) -> None:
        self.at = self.at or (trainer.current_epoch, index)


def test_a_run_ended_by_max_steps_mid_epoch_resumes_that_epoch(tmp_path: Path, text_file: Path) -> None:
    """Lightning ends an epoch that max_steps stops like any other, counted done: resumed with a
    larger max_steps, it started the next epoch at the position of the batches seen of this one."""

    def fit(name: str, max_steps: int, resume: Path | None = None) -> tuple[pl.Trainer, CharLM, FirstBatch]:
        # validated at each epoch's end (and at max_steps), where the checkpoints are then saved
        every_epoch = ["++trainer.val_check_interval=1.0", "model.dropout=0.1"]
        cfg = compose_train(
            tiny(text_file, tmp_path / name, f"++trainer.max_steps={max_steps}", *every_epoch)
        )
        datamodule, model, trainer = build(cfg)
        first = FirstBatch()
        trainer.callbacks.append(first)
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
        return trainer, model, first

    unbroken, unbroken_model, _ = fit("unbroken", 80)  # 58 batches an epoch: into the second
    fit("stopped", 20)
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the epoch it stopped in is not done
    resumed, resumed_model, first = fit("resumed", 80, last)
    assert first.at == (0, 20)  # epoch 0's batch 20, not epoch 1's
    # the run's summary counts the epochs started: 80 steps of 58-step epochs are 2
    assert [t.fit_loop.epoch_progress.current.started for t in (resumed, unbroken)] == [2, 2]
    weights = resumed_model.state_dict(), unbroken_model.state_dict()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])
