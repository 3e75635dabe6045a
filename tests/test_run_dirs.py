"""Run directory names: unique, and readable for each job of a sweep."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from charlm import run_dirs


def test_runs_in_the_same_second_get_their_own_directory(tmp_path: Path, monkeypatch) -> None:
    class FrozenClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 11, 23, 14, 5, 33)

    monkeypatch.setattr(run_dirs, "datetime", FrozenClock)
    claimed = [run_dirs.claim_dir(str(tmp_path / "runs")) for _ in range(3)]
    assert [Path(p).name for p in claimed] == [
        "2026-11-23_14-05-33",
        "2026-11-23_14-05-33_2",
        "2026-11-23_14-05-33_3",
    ]
    assert all(Path(p).is_dir() for p in claimed)


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
