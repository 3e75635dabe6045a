"""DDP for real: `trainer=ddp_sim` runs two CPU processes (gloo), the code path of `trainer=ddp` on GPUs."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY, run_train
from test_resume import finish, saved_step

from charlm.models.checkpoints import load_model
from charlm.report import read_run

# Two ranks of 4 windows each take the very gradient steps of one process with 8 (DistributedSampler
# deals one shuffled order out; no dropout). The whole val and test splits (51 windows each, an odd
# number) are scored: a sampler that padded the ranks' shares would count one window twice.
DDP_TINY = [
    *(
        arg
        for arg in TINY
        if not arg.startswith(("++trainer.limit_val_batches", "++trainer.limit_test_batches"))
    ),
    "hidden=16",
    "model.dropout=0.0",
    "++trainer.enable_progress_bar=false",
]


def _only_run(cwd: Path) -> Path:
    runs = sorted((cwd / "logs" / "runs").iterdir())
    assert len(runs) == 1, f"one run directory, not {[r.name for r in runs]}"
    return runs[0]


@pytest.mark.parametrize("layout", ["windows", "stateful"])
def test_two_ranks_train_and_score_as_one_process_with_twice_the_batch(
    tmp_path: Path, text_file: Path, layout: str
) -> None:
    """The same weights and the same val/test scores, and one run directory written by rank 0 alone."""
    common = [*DDP_TINY, "data=textfile", f"data.path={text_file}", f"data.stateful={layout == 'stateful'}"]
    scores = {}
    for name, args in {
        "one": ["trainer=cpu", "data.batch_size=8"],
        "two": ["trainer=ddp_sim", "data.batch_size=4"],
    }.items():
        cwd = tmp_path / name
        cwd.mkdir()
        result = run_train([*common, *args], cwd)
        assert result.returncode == 0, result.stderr[-3000:]
        run = _only_run(cwd)
        scores[name] = read_run(run)
        assert scores[name].status == "finished"
        if name == "two":
            assert "Traceback" not in result.stderr
            assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr + result.stdout
            # rank 0's output only: one config, one log, one samples file, nothing per rank
            assert sorted(p.name for p in run.glob("*.log")) == ["train.log"]
            assert sorted(p.name for p in run.glob("**/config.yaml")) == ["config.yaml"]
            assert (run / "samples.txt").read_text().count("=== tested:") == 1
            assert len(list((run / "checkpoints").glob("*.ckpt"))) == 2  # best and last
    one, two = scores["one"], scores["two"]
    assert two.val_loss == pytest.approx(one.val_loss, rel=1e-5)
    assert two.test_ppl == pytest.approx(one.test_ppl, rel=1e-5)
    assert math.isfinite(two.chars_per_sec) and two.chars_per_sec > 0


def test_a_ddp_sweep_runs_each_job_once_in_its_own_directory(tmp_path: Path, text_file: Path) -> None:
    """Lightning alone would start every rank on `-m ...`: a whole sweep per rank. A job that fails on
    every rank (divergence) is reported by rank 0, and the sweep goes on with the next jobs (which
    outlast the 5 s in which Lightning's process watcher would see a rank's error and kill rank 0)."""
    args = [
        *DDP_TINY,
        "data=textfile",
        f"data.path={text_file}",
        "trainer=ddp_sim",
        "-m",
        "optimizer.lr=1e37,2e-3,3e-3",
    ]
    result = run_train(args, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # a job failed
    assert not (tmp_path / "logs" / "runs").exists()
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_optimizer.lr=1e+37", "1_optimizer.lr=0.002", "2_optimizer.lr=0.003"]
    assert "training diverged at step" in (sweep / jobs[0] / "error.txt").read_text()
    assert all(read_run(sweep / job).status == "finished" for job in jobs[1:])
    for job in jobs:
        assert sorted(p.name for p in (sweep / job).glob("*.log")) == ["train.log"]
    report = (sweep / "report.md").read_text()
    assert "| optimizer.lr=0.002 |" in report and "## Failed jobs" in report


def test_a_stateful_ddp_checkpoint_resumes_on_as_many_devices_only(tmp_path: Path, text_file: Path) -> None:
    """Its carried state is one per rank's streams: another rank count would read other streams."""
    common = [*DDP_TINY, "data=textfile", f"data.path={text_file}", "data.stateful=true", "data.batch_size=4"]
    result = run_train([*common, "trainer=ddp_sim"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    run = _only_run(tmp_path)
    assert load_model(run).hparams.stateful  # its checkpoints load to write text, on any device count
    resumed = run_train([*common, "trainer=cpu", f"ckpt_path={run}", "++trainer.max_steps=20"], tmp_path)
    assert resumed.returncode == 1
    assert "carries the stream states of 2 DDP ranks; resume it on 2 devices (trainer.devices=2), not 1" in (
        resumed.stderr
    )
    assert "Traceback" not in resumed.stderr


@pytest.mark.parametrize("layout", ["windows", "stateful"])
def test_ctrl_c_under_ddp_saves_and_resumes_to_the_unbroken_runs_weights(tmp_path: Path, layout: str) -> None:
    """Ctrl+C reaches every rank (the terminal signals the process group): all stop at one step,
    rank 0 saves, and a resume on two ranks ends as the unbroken run did: same windows, same dropout
    masks (the ranks are seeded alike) and, stateful, each rank's own carried state."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(("En un lugar de la Mancha, de cuyo nombre no quiero acordarme. " * 1000)[:60_000])
    run = [
        "data=textfile",
        f"data.path={corpus}",
        f"data.stateful={layout == 'stateful'}",
        "trainer=ddp_sim",
        "hidden=32",
        "model.embedding_dim=8",
        "model.dropout=0.2",
        "data.seq_len=32",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "++trainer.limit_val_batches=5",
        "++trainer.enable_progress_bar=false",
        "callbacks.step_checkpoint.every_n_train_steps=5",
    ]

    def start(*args: str) -> subprocess.Popen:
        command = [sys.executable, str(ROOT / "train.py"), *run, *args]
        return subprocess.Popen(
            command,
            cwd=tmp_path,
            env=SUBPROCESS_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a process group of its own, as a terminal's job
        )

    finish(start("hydra.run.dir=unbroken"))
    unbroken = torch.load(tmp_path / "unbroken" / "checkpoints" / "last.ckpt", weights_only=True)

    interrupted = start("hydra.run.dir=interrupted")
    last = tmp_path / "interrupted" / "checkpoints" / "last.ckpt"
    while saved_step(last) < unbroken["global_step"] // 2 + 5 and interrupted.poll() is None:
        time.sleep(0.05)
    os.killpg(interrupted.pid, signal.SIGINT)
    output, _ = interrupted.communicate(timeout=120)
    step = saved_step(last)
    assert interrupted.returncode == 1 and 0 < step < unbroken["global_step"], output[-3000:]
    assert f"interrupted at step {step}: saved {last}" in output

    finish(start("hydra.run.dir=resumed", f"ckpt_path={tmp_path / 'interrupted'}"))
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == unbroken["global_step"]
    weights = resumed["state_dict"], unbroken["state_dict"]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[1])


@pytest.mark.parametrize(
    "setting, message",
    [
        # val and test: 26 characters, one window of 16 + 1: a rank with nothing to score would
        # leave the other waiting for it forever
        ("data.splits=[0.9968,0.0016,0.0016]", "the val split has 1 window, fewer than the 2 DDP ranks"),
        (
            "hydra.output_subdir=null",
            "DDP starts its ranks from this job's saved config: drop hydra.output_subdir=null",
        ),
    ],
)
def test_ddp_settings_that_cannot_work_are_one_line(
    tmp_path: Path, text_file: Path, setting: str, message: str
) -> None:
    args = [*DDP_TINY, "data=textfile", f"data.path={text_file}", "trainer=ddp_sim", setting]
    result = run_train([arg for arg in args if "val_check_interval" not in arg], tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
