"""Long runs survive interruption: kill, resume, and end as if nothing had happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT

from charlm.checkpoints import AtomicCheckpointIO

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
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(ROOT / "train.py"), *RUN, *args]
    return subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def saved_step(checkpoint: Path) -> int:
    try:
        return torch.load(checkpoint, weights_only=True, map_location="cpu")["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]


def test_a_killed_run_resumes_to_the_same_end(tmp_path: Path) -> None:
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
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert epoch_steps < saved_step(last) < 2 * epoch_steps  # killed mid-way through the second epoch

    finish(start([*data, "hydra.run.dir=resumed", f"ckpt_path={tmp_path / 'killed'}"], tmp_path))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == unbroken["global_step"]
    # the same batches in the same order, dropout masks and optimizer state: the same weights
    weights = resumed["state_dict"], unbroken["state_dict"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


class Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("the disk filled up")


def test_an_interrupted_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 10, "weights": torch.ones(1000)}, path)
    with pytest.raises(RuntimeError, match="disk filled up"):
        # torch.save has written the weights when the failure comes
        io.save_checkpoint({"global_step": 20, "weights": torch.zeros(1000), "z": Unpicklable()}, path)
    assert torch.load(path, weights_only=True)["global_step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no partial file left behind
