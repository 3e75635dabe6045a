"""Run directory names: unique, and readable for each job of a sweep."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from charlm.training import run_dirs


class FrozenClock(datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2026, 11, 23, 14, 5, 33)


def test_runs_in_the_same_second_get_their_own_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(run_dirs, "datetime", FrozenClock)
    claimed = [run_dirs.claim_dir(str(tmp_path / "runs")) for _ in range(3)]
    assert [Path(p).name for p in claimed] == [
        "2026-11-23_14-05-33",
        "2026-11-23_14-05-33_2",
        "2026-11-23_14-05-33_3",
    ]
    assert all(Path(p).is_dir() for p in claimed)


def test_train_runs_name_their_directory_through_the_resolver(tmp_path: Path, monkeypatch) -> None:
    """Two runs composed in the same second, as train.py composes them: two directories."""
    monkeypatch.setattr(run_dirs, "datetime", FrozenClock)
    run_dirs_seen = []
    for _ in range(2):
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", [f"paths.root_dir={tmp_path}"], return_hydra_config=True)
        run_dirs_seen.append(cfg.hydra.run.dir)
        assert cfg.hydra.run.dir == run_dirs_seen[-1]  # read again: the same, nothing new made
    assert run_dirs_seen == [
        f"{tmp_path}/logs/runs/2026-11-23_14-05-33",
        f"{tmp_path}/logs/runs/2026-11-23_14-05-33_2",
    ]
    assert sorted(p.name for p in (tmp_path / "logs" / "runs").iterdir()) == [
        "2026-11-23_14-05-33",
        "2026-11-23_14-05-33_2",
    ]


@pytest.mark.parametrize(
    "sweep, job, name",
    [
        (
            ["model=lstm", "data=quijote", "hidden=32,256"],
            ["model=lstm", "data=quijote", "hidden=256"],
            "hidden=256",
        ),
        (["model=lstm,gru", "hidden=8,16"], ["model=gru", "hidden=8"], "hidden=8,model=gru"),
        (None, ["hidden=8", "data.path=a/b.txt"], "data.path=a_b.txt,hidden=8"),
    ],
)
def test_sweep_jobs_are_named_by_what_the_sweep_varies(tmp_path, sweep, job, name) -> None:
    if sweep is not None:
        OmegaConf.save({"hydra": {"overrides": {"task": sweep}}}, tmp_path / "multirun.yaml")
    root = OmegaConf.create({"hydra": {"overrides": {"task": job}, "sweep": {"dir": str(tmp_path)}}})
    assert run_dirs.sweep_job_name(_root_=root) == name


def test_long_job_names_are_cut_and_stay_apart(tmp_path: Path) -> None:
    """`-m` with one value per key names the job by all its overrides: a folder name must stay short."""
    common = ["callbacks.throughput=null", "++trainer.enable_progress_bar=false", "++trainer.max_steps=500"]
    names = []
    for seed in ("seed=1", "seed=2"):
        job = ["data.path=/home/ana/corpora/poesia/siglo_de_oro/completo.txt", *common, seed]
        OmegaConf.save({"hydra": {"overrides": {"task": job}}}, tmp_path / "multirun.yaml")
        root = OmegaConf.create({"hydra": {"overrides": {"task": job}, "sweep": {"dir": str(tmp_path)}}})
        names.append(run_dirs.sweep_job_name(_root_=root))
    assert all(len(name) <= 100 and name.startswith("++trainer.enable_progress_bar=false,") for name in names)
    assert names[0] != names[1]
