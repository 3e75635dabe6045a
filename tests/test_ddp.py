"""DDP for real: `trainer=ddp_sim` runs two CPU processes (gloo), the code path of `trainer=ddp` on GPUs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY, run_train
from test_resume import finish, saved_step
from torch.utils.data import DistributedSampler

from charlm.models.checkpoints import load_model
from charlm.report import read_run
from charlm.training.callbacks.checkpointing import RandomState
from charlm.training.ddp import LAUNCHER_PID

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


def _alive(pid: int) -> bool:
    """Running: not gone, nor a zombie left for its parent to reap."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _processes_of(path: Path) -> list[int]:
    """The live processes whose command line names `path` (a DDP rank's names its run directory)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path) in (proc / "cmdline").read_text() and _alive(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _only_run(cwd: Path) -> Path:
    runs = sorted((cwd / "logs" / "runs").iterdir())
    assert len(runs) == 1, f"one run directory, not {[r.name for r in runs]}"
    return runs[0]


@pytest.mark.parametrize("layout", ["windows", "stateful"])
@pytest.mark.slow
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


@pytest.mark.slow
def test_a_ddp_sweep_runs_each_job_once_in_its_own_directory(tmp_path: Path, text_file: Path) -> None:
    """Lightning alone would start every rank on `-m ...`: a whole sweep per rank. A job that fails on
    every rank (divergence) is reported by rank 0, in its own words, and the sweep goes on with the
    next jobs (which outlast the grace that rank 0's watch gives a job after a rank's failure)."""
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


@pytest.mark.slow
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
@pytest.mark.slow
def test_ctrl_c_under_ddp_saves_and_resumes_to_the_unbroken_runs_weights(tmp_path: Path, layout: str) -> None:
    """Ctrl+C reaches every rank (the terminal signals the process group): all stop at one step,
    rank 0 saves, and a resume on two ranks ends as the unbroken run did: same windows, same dropout
    masks (each rank's own random state, kept in the checkpoint) and, stateful, each rank's own
    carried state."""
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

    saved = torch.load(last, weights_only=True)["callbacks"]["RandomState"]["ranks"]
    assert len(saved) == 2 and not torch.equal(saved[0]["torch"], saved[1]["torch"])

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
@pytest.mark.slow
def test_ddp_settings_that_cannot_work_are_one_line(
    tmp_path: Path, text_file: Path, setting: str, message: str
) -> None:
    args = [*DDP_TINY, "data=textfile", f"data.path={text_file}", "trainer=ddp_sim", setting]
    result = run_train([arg for arg in args if "val_check_interval" not in arg], tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_each_rank_draws_its_own_dropout_masks_from_one_data_order(tmp_path: Path, text_file: Path) -> None:
    """Seeded alike (the same initial weights), the ranks would drop the same units at every step;
    the windows each rank reads are still its share of one shuffle, seeded by the run's seed."""
    args = [
        *(arg for arg in DDP_TINY if arg != "model.dropout=0.0"),
        "data=textfile",
        f"data.path={text_file}",
        "data.batch_size=4",
        "trainer=ddp_sim",
        "model.dropout=0.5",
        "++trainer.max_steps=4",
        "+callbacks.draws._target_=probes.Draws",
        f"+callbacks.draws.path={tmp_path}",
    ]
    result = run_train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    draws = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # 4 steps of two masks (inputs, head), and a validation's worth of none (eval mode)
    assert len(draws[0]["masks"]) == len(draws[1]["masks"]) == 8
    assert all(0.35 < dropped < 0.65 for draw in draws for dropped in draw["dropped"])
    assert not set(draws[0]["masks"]) & set(draws[1]["masks"])
    for rank, draw in enumerate(draws):
        share = DistributedSampler(range(draw["windows"]), num_replicas=2, rank=rank, shuffle=True, seed=1234)
        assert draw["share"] == list(share)


def test_a_checkpoint_of_fewer_ranks_gives_its_state_to_rank_0_alone() -> None:
    """A checkpoint of one random state (one process, or DDP before each rank kept its own) resumes
    on rank 0 exactly; rank 1 keeps the stream of its own that fit start seeded it with."""
    torch.manual_seed(7)
    old = {"torch": torch.get_rng_state()}
    expected = torch.rand(3)
    for rank in (0, 1):
        state = RandomState()
        trainer = SimpleNamespace(world_size=2, global_rank=rank)
        torch.manual_seed(1234)
        state.setup(trainer, SimpleNamespace(global_rank=rank), stage="fit")
        state.load_state_dict(old)
        drawn = torch.rand(3)
        torch.manual_seed(1234 + rank)
        assert torch.equal(drawn, expected if rank == 0 else torch.rand(3))


def failing_at_step_2(text_file: Path) -> list[str]:
    """A tiny ddp_sim run whose probe fails at step 2 on the rank `+callbacks.fail.rank` names."""
    return [
        *DDP_TINY,
        "data=textfile",
        f"data.path={text_file}",
        "data.batch_size=4",
        "trainer=ddp_sim",
        "+callbacks.fail._target_=probes.FailAt",
        "+callbacks.fail.step=2",
    ]


@pytest.mark.parametrize("rank", [1, 0])
@pytest.mark.slow
def test_a_failure_on_one_rank_ends_every_rank_within_seconds(
    tmp_path: Path, text_file: Path, rank: int
) -> None:
    """The other rank waits at the failing step forever, as a rank blocked in an NCCL collective does
    (gloo's fail by themselves): rank 0 kills it when rank 0 fails, and rank 0's watch ends rank 0
    when rank 1 fails. The error is printed once, by the rank that had it."""
    args = [*failing_at_step_2(text_file), f"+callbacks.fail.rank={rank}", "+callbacks.fail.others_wait=true"]
    started = time.monotonic()
    result = run_train(args, tmp_path)
    seconds = time.monotonic() - started
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]
    assert seconds < 60
    assert output.count(f"injected failure on rank {rank} at step 2") == 1, output[-3000:]
    if rank == 1:
        assert "DDP rank 1 failed (exit code 1), and rank 0 still waits for it 5 s later" in output
    assert not _processes_of(tmp_path)  # no rank left behind


@pytest.mark.slow
def test_a_sweep_goes_on_after_a_job_that_failed_on_one_rank(tmp_path: Path, text_file: Path) -> None:
    """Rank 1 fails alone: rank 0's next collective fails (gloo), and rank 0 names rank 1 as the
    cause rather than its own broken connection; then the next job runs, with ranks of its own."""
    args = [*failing_at_step_2(text_file), "-m", "+callbacks.fail.rank=1,-1"]
    result = run_train(args, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output[-3000:]  # a job failed
    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    failed, finished = sorted(p for p in sweep.iterdir() if p.is_dir())
    error = (failed / "error.txt").read_text()
    assert error == "CharLMError: DDP rank 1 failed (exit code 1): its error is printed above\n"
    assert read_run(finished).status == "finished"
    assert output.count("injected failure on rank 1 at step 2") == 1
    assert "Connection closed by peer" not in output


# a stand-in for rank 0: starts a rank (its environment, as Lightning's launcher gives it) and idles
LAUNCHER = """
import os, subprocess, sys, time
errors, pid_key = sys.argv[1:]
env = {**os.environ, pid_key: str(os.getpid()), "LOCAL_RANK": "1"}
rank = "from charlm.training.ddp import end_with_launcher; import time; end_with_launcher(); time.sleep(60)"
process = subprocess.Popen([sys.executable, "-c", rank], env=env, stderr=open(errors, "w"))
print(process.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_a_rank_whose_rank_0_is_killed_ends_itself(tmp_path: Path) -> None:
    """Killed (SIGKILL, out of memory), rank 0 cannot end the ranks it started: each watches it."""
    errors = tmp_path / "rank.err"
    command = [sys.executable, "-c", LAUNCHER, str(errors), LAUNCHER_PID]
    launcher = subprocess.Popen(command, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, text=True)
    rank = int(launcher.stdout.readline())
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 30  # its imports, then at once
    while _alive(rank) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(rank)
    assert f"rank 1: rank 0 (pid {launcher.pid}) is gone: ending" in errors.read_text()
