"""What installing charlm does to a user's environment: the core install adds no pins that
downgrade common packages, and the optional features say which extra they need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SUBPROCESS_ENV, run_train

# what the Optuna sweeper (optuna<3) brings: charlm[search] only
SEARCH_ONLY = ("sqlalchemy", "optuna", "scipy", "alembic")


def would_install(venv: Path, requirement: str) -> dict[str, str]:
    """name -> version of what `pip install <requirement>` would install into `venv` (a dry run)."""
    report = venv / "report.json"
    subprocess.run(
        [
            venv / "bin" / "python",
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--quiet",
            "--report",
            report,
            requirement,
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    installs = json.loads(report.read_text())["install"]
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in installs}


@pytest.mark.slow
def test_installing_charlm_leaves_sqlalchemy_2_where_it_is(tmp_path: Path) -> None:
    """A user's environment with SQLAlchemy 2 (most current data stacks) keeps it: only
    charlm[search] would take it back to 1.4, for optuna<3."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    pip = [venv / "bin" / "python", "-m", "pip", "install", "--quiet", "sqlalchemy>=2"]
    if subprocess.run(pip, capture_output=True, timeout=300).returncode:
        pytest.skip("no package index reachable from here")
    core = would_install(venv, f"{ROOT}")
    assert "torch" in core and "pytorch-lightning" in core  # the resolution did run
    assert not [name for name in core if name in SEARCH_ONLY], core
    search = would_install(venv, f"{ROOT}[search]")
    assert search["sqlalchemy"].startswith("1.4") and "optuna" in search  # what the extra costs


@pytest.mark.slow
def test_hparams_search_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    """Without charlm[search], Hydra would say only that the sweeper option does not exist."""
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, *args):\n"
        "        if name.startswith(('hydra_plugins.hydra_optuna_sweeper', 'optuna')):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
    )
    env = {**SUBPROCESS_ENV, "PYTHONPATH": f"{hide}:{SUBPROCESS_ENV['PYTHONPATH']}"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "hparams_search=optuna", "data=names"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "hparams_search=optuna needs Hydra's Optuna sweeper, an optional extra: pip install 'charlm[search]' "
        "(from a clone: pip install -e '.[search]')"
    )
    assert run_train(["hparams_search=optuna", "--cfg", "hydra"], cwd=tmp_path).returncode == 0  # with it
