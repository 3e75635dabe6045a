"""`train.py` as users run it: real subprocesses, real files, real TensorBoard event files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_train
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2


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
    ],
)
def test_values_out_of_range_are_one_clear_line(tmp_path: Path, override: str, error: str) -> None:
    result = run_train(["data=names", *TINY, override], cwd=tmp_path)  # last: TINY sets seq_len too
    assert result.returncode != 0
    assert error in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has the GPU the test needs to lack")
@pytest.mark.parametrize("trainer", ["gpu", "ddp"])
def test_a_gpu_trainer_without_a_gpu_is_one_line(tmp_path: Path, trainer: str) -> None:
    result = run_train(["data=names", f"trainer={trainer}"], cwd=tmp_path)
    assert result.returncode == 1
    assert "trainer.accelerator=gpu, but torch sees no CUDA GPU here: use trainer=cpu" in result.stderr
    assert "Traceback" not in result.stderr


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


def test_a_diverging_run_stops_with_the_step_and_a_suggestion(tmp_path: Path) -> None:
    result = run_train(["data=names", "hidden=8", *TINY, "optimizer.lr=1e37"], cwd=tmp_path)
    assert result.returncode != 0
    assert "training diverged at step 2: the loss is inf" in result.stderr
    assert "Lower optimizer.lr (now 1e+37)" in result.stderr and "Traceback" not in result.stderr
    (run,) = (tmp_path / "logs" / "runs").iterdir()
    assert not (run / "checkpoints").exists()  # nothing saved from the broken steps


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
