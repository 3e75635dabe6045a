"""`train.py` as users run it: real subprocesses, real files, real TensorBoard event files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_train, run_train
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from charlm.errors import CharLMError
from charlm.training.run import train


def load_runs(log_dir: Path) -> EventMultiplexer:
    """The runs as TensorBoard itself sees them under `tensorboard --logdir logs`."""
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(log_dir))
    multiplexer.Reload()
    return multiplexer


def session_hparams(multiplexer: EventMultiplexer, run: str) -> dict[str, object]:
    content = multiplexer.PluginRunToTagToContent("hparams")[run]["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    return {
        key: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
        for key, value in start.hparams.items()
    }


@pytest.mark.slow
def test_users_multirun_gives_two_named_runs_in_tensorboard(tmp_path: Path, quijote_dir) -> None:
    data_dir, extra = quijote_dir
    result = run_train(
        ["model=lstm", "data=quijote", "-m", "hidden=8,16", f"paths.data_dir={data_dir}", *TINY, *extra],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]

    (sweep,) = (tmp_path / "logs" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_hidden=8", "1_hidden=16"]
    multiplexer = load_runs(tmp_path / "logs")
    runs = sorted(multiplexer.Runs())
    assert runs == [f"multiruns/{sweep.name}/0_hidden=8", f"multiruns/{sweep.name}/1_hidden=16"]

    for run, hidden in zip(runs, (8, 16), strict=True):
        job_dir = tmp_path / "logs" / run
        assert len(list(job_dir.glob("events.out.tfevents.*"))) >= 1
        tags = multiplexer.GetAccumulator(run).Tags()["scalars"]
        assert {"train/loss", "train/ppl", "train/bpc", "val/ppl", "val/bpc", "test/ppl"} <= set(tags)
        val_ppl = [e.value for e in multiplexer.Scalars(run, "val/ppl")]
        assert len(val_ppl) == 2  # val_check_interval=6 within max_steps=12
        # HPARAMS tab: this run's settings, ranked by the real best val perplexity
        hparams = session_hparams(multiplexer, run)
        assert hparams["model/hidden"] == hidden
        assert hparams["config/data"] == "quijote" and hparams["config/model"] == "lstm"
        assert multiplexer.Scalars(run, "hp_metric")[-1].value == min(val_ppl)
        assert (job_dir / "vocab.json").exists()
        checkpoints = sorted(p.name for p in (job_dir / "checkpoints").iterdir())
        assert "last.ckpt" in checkpoints and any(n.startswith("epoch") for n in checkpoints)


@pytest.mark.slow
def test_a_single_run_shorter_than_an_epoch(tmp_path: Path) -> None:
    result = run_train(["data=names", "hidden=8", *TINY, "++trainer.max_steps=3"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "runs").iterdir()
    multiplexer = load_runs(tmp_path / "logs")
    assert list(multiplexer.Runs()) == [f"runs/{run.name}"]
    assert [e.step for e in multiplexer.Scalars(f"runs/{run.name}", "val/ppl")] == [2]  # after step 3
    assert list((run / "checkpoints").glob("epoch000-step3-*.ckpt"))
    assert re.search(
        rf"done: {run.name}: params [\d,]+, val loss [\d.]+, .* status finished",
        result.stdout + result.stderr,
    )


@pytest.mark.parametrize(
    "override, expected",
    [
        ("model=lstmm", ["Could not find 'model/lstmm'", "Available options in 'model':", "gru", "rnn"]),
        ("data=quijot", ["Could not find 'data/quijot'", "names", "quijote", "textfile", "tinyshakespeare"]),
        ("trainer=gpus", ["Could not find 'trainer/gpus'", "cpu", "ddp", "default", "gpu"]),
        ("model.hiden=3", ["Could not override 'model.hiden'", "Key 'hiden' not in 'NetworkConfig'"]),
    ],
)
@pytest.mark.slow
def test_unknown_names_and_keys_are_refused_with_the_choices(
    tmp_path: Path, override: str, expected: list[str]
) -> None:
    result = run_train([override], cwd=tmp_path)
    assert result.returncode != 0
    assert all(text in result.stderr for text in expected) and "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists()  # refused before any run directory is made


@pytest.mark.parametrize(
    "override, error",
    [
        ("hidden=-3", "hidden must be at least 1, got -3"),
        ("data.seq_len=0", "seq_len (0) and stride (0) must be at least 1"),
        ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
        ("data.splits=[0.5,0.2,0.2]", "must be non-negative and sum to 1"),
        ("data.splits=[0.95,0.0,0.05]", "the val split has 0 characters, fewer than one window"),
        # the optimizer and trainer groups take their class's other arguments, and only those
        ("trainer.max_step=5", "trainer.max_step is not a setting of pytorch_lightning.Trainer"),
        ("optimizer.momentum=0.9", "optimizer.momentum is not a setting of torch.optim.Adam"),
        ("hídden=32", "hídden=32: setting names are plain ASCII: did you mean hidden=32?"),
    ],
)
@pytest.mark.slow
def test_values_out_of_range_are_one_clear_line(tmp_path: Path, override: str, error: str) -> None:
    result = run_train(["data=names", *TINY, override], cwd=tmp_path)  # last: TINY sets seq_len too
    assert result.returncode != 0
    assert error in result.stderr and "Traceback" not in result.stderr
    assert not list(tmp_path.glob("logs/runs/*"))  # a refused run leaves no run directory behind


@pytest.mark.parametrize(
    "overrides, error",
    [
        # refused by torch or Lightning, named here by the setting
        (["optimizer.lr=-0.01"], "optimizer.lr must be above 0 (Adam: around 1e-3), got -0.01"),
        (["optimizer.lr=0"], "optimizer.lr must be above 0"),  # would train without a word
        (["model.embedding_dim=-5"], "model.embedding_dim must be at least 1 (null: one-hot inputs), got -5"),
        (
            ["callbacks.step_checkpoint.every_n_train_steps=-1"],
            "callbacks.step_checkpoint: Invalid value for every_n_train_steps=-1. Must be >= 0. Fix",
        ),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing: give it at least 1"),
        (["++trainer.max_steps=0"], "trainer.max_steps=0 trains nothing"),
        # 1.6 PB of weights: more than any address space, whatever the machine's overcommit policy
        (["hidden=10000000"], "GB asked for): lower hidden (10000000), model.num_layers (1)"),
        # settings that Lightning or torch would take without a word, or fail on midway
        (["seed=-1"], "seed must be from 0 to 4294967295 (or null: unseeded), got -1"),
        (
            ["trainer.gradient_clip_val=-1"],
            "trainer.gradient_clip_val must be 0 (off) or more",
        ),  # flips the gradients
        (["++trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches must be at least 1"),
        (["data.num_workers=-1"], "data.num_workers must be 0 (no worker processes) or more, got -1"),
        (
            ["++trainer.val_check_interval=100000"],
            "trainer.val_check_interval: val_check_interval (100000) must",
        ),
        (
            ["callbacks.sample_text.length=-1"],
            "callbacks.sample_text.length must be 0 (none) or more, got -1",
        ),
        (
            ["callbacks.sample_text.temperature=-1"],
            "callbacks.sample_text (prompt=''): temperature must be 0",
        ),
        (["callbacks.early_stopping.min_delta=-1"], "callbacks.early_stopping.min_delta must be 0 or more"),
        (["scheduler=cosine", "scheduler.warmup_steps=-5"], "scheduler.warmup_steps must be 0 or more (-5)"),
        (["++trainer.precision=banana"], "trainer: Precision 'banana' is invalid"),
        (["logger.tensorboard.save_dir=/dev/null/logs"], "cannot access /dev/null/logs: Not a directory"),
    ],
)
def test_settings_out_of_range_are_refused_in_one_line(
    tmp_path: Path, overrides: list[str], error: str
) -> None:
    """In-process (the subprocess path is the test above): each a CharLMError, whose one line
    train.py prints."""
    cfg = compose_train(["data=names", *TINY, f"paths.output_dir={tmp_path}", *overrides])
    with pytest.raises(CharLMError) as refused:
        train(cfg)
    assert error in str(refused.value) and "\n" not in str(refused.value)


@pytest.mark.slow
def test_a_refused_run_in_a_folder_given_by_hand_keeps_it(tmp_path: Path) -> None:
    """Only a run directory charlm made itself is removed when the run is refused: never one
    given with hydra.run.dir (it may be `.`, the checkout)."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = run_train(["data=names", *TINY, "hidden=-3", f"hydra.run.dir={mine}"], cwd=tmp_path)
    assert result.returncode == 1 and "hidden must be at least 1" in result.stderr
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("multirun", [False, True])
@pytest.mark.slow
def test_a_log_dir_that_cannot_be_made_is_one_line(tmp_path: Path, multirun: bool) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    args = ["-m", "hidden=8,16"] if multirun else []
    result = run_train(["data=names", *TINY, *args, f"paths.log_dir={tmp_path}/a_file/logs"], cwd=tmp_path)
    assert result.returncode == 1
    folder = "multiruns" if multirun else "runs"
    assert (
        f"cannot create a run directory in {tmp_path}/a_file/logs/{folder}: Not a directory" in result.stderr
    )
    assert "Set paths.log_dir to a folder you can write to" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("full", ["samples.txt", "checkpoints/.last.ckpt.partial"])
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_loses_nothing(tmp_path: Path, full: str) -> None:
    """/dev/full answers every write with ENOSPC. samples.txt is left out with a warning and the
    run goes on; a checkpoint that cannot be written stops the run in one line, the best
    checkpoint saved before it kept."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / full).symlink_to("/dev/full")
    result = run_train(["data=names", *TINY, "++trainer.max_steps=6", f"hydra.run.dir={run}"], cwd=tmp_path)
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    if full == "samples.txt":
        assert result.returncode == 0
        assert "samples.txt: No space left on device; the samples stay in TensorBoard's TEXT tab" in output
    else:
        assert result.returncode == 1
        assert f"could not save checkpoint {run}/checkpoints/last.ckpt: No space left on device" in output
        saved = [p.name for p in (run / "checkpoints").iterdir()]  # the best, and no leftover
        assert len(saved) == 1 and saved[0].startswith("epoch000-step6-val_loss")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU the test needs to lack")
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
@pytest.mark.slow
def test_a_gpu_trainer_without_a_gpu_is_one_line(tmp_path: Path, trainer: str) -> None:
    result = run_train(["data=names", f"trainer={trainer}"], cwd=tmp_path)
    assert result.returncode == 1
    assert "trainer.accelerator=gpu, but torch sees no CUDA GPU here: use trainer=cpu" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cfg_job_prints_the_composed_config(tmp_path: Path) -> None:
    result = run_train(["--cfg", "job", "model=gru", "hidden=64"], cwd=tmp_path)
    assert result.returncode == 0
    assert "cell: gru" in result.stdout and "hidden: 64" in result.stdout and "seq_len: 100" in result.stdout


@pytest.mark.parametrize(
    "override, error",
    [
        ("hidden=abc", "Value 'abc' of type 'str' could not be converted to Integer"),
        ("data.seq_len=1.5", "Value '1.5' of type 'float' could not be converted to Integer"),
        ("optimizer.lr=fast", "Value 'fast' of type 'str' could not be converted to Float"),
        ("data.lowercase=maybe", "Value 'maybe' is not a valid bool"),
        ("trainer.max_epochs=ten", "Value 'ten' of type 'str' could not be converted to Integer"),
    ],
)
@pytest.mark.slow
def test_settings_of_the_wrong_type_are_named_before_anything_runs(
    tmp_path: Path, override: str, error: str
) -> None:
    """The schema (charlm.config) types every override as Hydra composes the config."""
    empty = tmp_path / "data"  # Quijote is not there: a download would be tried, and fail, first
    result = run_train(["data=quijote", f"paths.data_dir={empty}", override], cwd=tmp_path)
    assert result.returncode != 0
    assert f"Error merging override {override}" in result.stderr and error in result.stderr
    assert f"full_key: {override.split('=')[0]}" in result.stderr
    assert "could not get corpus" not in result.stderr and "Traceback" not in result.stderr
    assert not empty.exists() and not (tmp_path / "logs").exists()  # nothing ran


@pytest.mark.slow
def test_a_diverging_run_stops_with_the_step_and_a_suggestion(tmp_path: Path) -> None:
    result = run_train(["data=names", "hidden=8", *TINY, "optimizer.lr=1e37"], cwd=tmp_path)
    assert result.returncode != 0
    assert "training diverged at step 2: the loss is inf" in result.stderr
    assert "Lower optimizer.lr (now 1e+37)" in result.stderr and "Traceback" not in result.stderr
    (run,) = (tmp_path / "logs" / "runs").iterdir()
    assert not (run / "checkpoints").exists()  # nothing saved from the broken steps


@pytest.mark.slow
def test_download_failure_is_one_clear_line_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    result = run_train(
        ["data=quijote", f"paths.data_dir={data_dir}", "data.corpus.url=file:///nonexistent/quijote.txt"],
        cwd=tmp_path,
    )
    assert result.returncode != 0
    assert "could not get corpus 'quijote'" in result.stderr
    assert f"Download it by hand to {data_dir}/quijote.txt" in result.stderr
    assert "Traceback" not in result.stderr
    assert not data_dir.exists() or list(data_dir.iterdir()) == []
