"""Sweeps beyond the basic launcher: an Optuna search, jobs in parallel (joblib), jobs through submitit."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from conftest import TINY, run_train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from charlm import config
from charlm.report import read_run
from charlm.training import run_dirs

SEARCHED = {"hidden", "model.num_layers", "optimizer.lr", "model.dropout", "data.seq_len"}


def _sweep(cwd: Path) -> Path:
    (sweep,) = (cwd / "logs" / "multiruns").iterdir()
    return sweep


@pytest.mark.slow
def test_optuna_search_minimises_the_val_loss_and_writes_its_result(tmp_path: Path, text_file: Path) -> None:
    # a value given on the command line is fixed, not searched; seq_len 200 leaves fewer than 6 batches
    dropped = (*(f"{key}=" for key in SEARCHED), "++trainer.val_check_interval=")
    args = [
        *(arg for arg in TINY if not arg.startswith(dropped)),
        "data=textfile",
        f"data.path={text_file}",
        "hparams_search=optuna",  # a multirun without -m
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.params.hidden='choice(8,16)'",  # the shipped space otherwise: small is quick
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
    ]
    result = run_train(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = _sweep(tmp_path)
    found = OmegaConf.load(sweep / "optimization_results.yaml")
    assert found.name == "optuna" and set(found.best_params) == SEARCHED
    jobs = {d.name: read_run(d) for d in sweep.iterdir() if d.is_dir()}
    assert len(jobs) == 2 and all(job.status == "finished" for job in jobs.values())
    best = min(jobs.values(), key=lambda job: job.val_loss)
    assert found.best_value == pytest.approx(best.val_loss, rel=1e-6)
    # jobs are named by what the search drew, numbers to 4 digits
    assert f"hidden={found.best_params.hidden}" in best.name
    assert f"optimizer.lr={found.best_params['optimizer.lr']:.4g}" in best.name
    assert "★" in (sweep / "report.md").read_text()
    # the study is kept, to resume or inspect with Optuna
    study = optuna.load_study(study_name="charlm", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(study.trials) == 2 and study.best_value == pytest.approx(found.best_value)


@pytest.mark.slow
def test_parallel_and_submitit_launchers_give_the_basic_launchers_results(
    tmp_path: Path, text_file: Path
) -> None:
    common = [*TINY, "data=textfile", f"data.path={text_file}", "-m", "hidden=8,12"]
    losses = {}
    for launcher in ("basic", "parallel", "submitit_local"):
        cwd = tmp_path / launcher
        cwd.mkdir()
        # the parallel launcher's jobs wait at their start for each other: one by one, they would time out
        meet = ["+callbacks.meet._target_=probes.MeetAtStart", f"+callbacks.meet.path={cwd}/meet"]
        meet += ["+callbacks.meet.count=2", "+callbacks.meet.timeout=60"]
        result = run_train(
            [*common, f"hydra/launcher={launcher}", *(meet if launcher == "parallel" else [])], cwd
        )
        assert result.returncode == 0, result.stderr[-3000:]
        sweep = _sweep(cwd)
        assert (sweep / "report.md").exists()
        losses[launcher] = {
            d.name: read_run(d).val_loss for d in sweep.iterdir() if d.is_dir() and d.name[0] != "."
        }
    assert list(losses["basic"]) == ["0_hidden=8", "1_hidden=12"]
    assert losses["parallel"] == losses["basic"] == losses["submitit_local"]


def test_the_slurm_launcher_asks_for_a_task_and_a_gpu_per_ddp_rank() -> None:
    config.register()  # the schema train.yaml starts from, as train.py does
    run_dirs.register()
    with initialize_config_dir(str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "++trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
