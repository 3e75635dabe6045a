"""Hydra resolvers that name run directories: unique per run, readable per sweep job.

- `${charlm.claim_dir:PARENT}` creates PARENT/<date>_<time> and returns it; a second run started
  in the same second gets <date>_<time>_2 (mkdir is atomic, so two runs never share one).
- `${charlm.sweep_job_name:}` is `hidden=256` for the job of `-m hidden=32,256`: only the
  overrides that the sweep varies (numbers drawn by a search to 4 digits).
"""

from __future__ import annotations

import hashlib
import os
from datetime import datetime
from itertools import count
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf

# longer job names (in UTF-8 bytes) are cut, with a hash of the whole name so that they stay apart
_LONGEST_NAME = 100
# the run directories this process made: the only ones a refused run may remove (charlm.training.run)
claimed: set[Path] = set()


def claim_dir(parent: str | Path) -> str:
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    parent = Path(parent).expanduser()  # paths.log_dir=~/charlm-logs
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in count(1):
            path = parent / (stamp if n == 1 else f"{stamp}_{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            claimed.add(path.resolve())
            return str(path)
    except OSError as err:
        # Hydra resolves this before the run, where it would print any exception as a page of
        # OmegaConf's frames: SystemExit passes through both, printing just the line
        raise SystemExit(
            f"cannot create a run directory in {parent}: {err.strerror or err} ({err.filename}). "
            "Set paths.log_dir to a folder you can write to (e.g. paths.log_dir=~/charlm-logs)"
        ) from None
    raise AssertionError("unreachable")


def _searched_keys(root: DictConfig) -> set[str]:
    """The keys a search draws values for (`hydra.sweeper.params`: Optuna's space)."""
    return set(OmegaConf.select(root, "hydra.sweeper.params", default=None) or {})


def _swept_keys(root: DictConfig, searched: set[str]) -> set[str] | None:
    """The keys a sweep varies: the searched ones and its `-m` overrides (from the multirun.yaml
    that Hydra's basic sweeper writes first); None when nothing says (name jobs by all overrides)."""
    try:
        master = OmegaConf.load(Path(root.hydra.sweep.dir) / "multirun.yaml")
    except FileNotFoundError:  # a sweeper that does not write it
        return searched or None
    overrides = OverridesParser.create().parse_overrides(list(master.hydra.overrides.task))
    return searched | {o.key_or_group for o in overrides if o.is_sweep_override()}


def _short(override: Override, searched: set[str]) -> str:
    """`optimizer.lr=0.004711` for the 0.004711152355759387 that a search drew."""
    value = override.value()
    if override.key_or_group in searched and isinstance(value, float):
        return f"{override.key_or_group}={value:.4g}"
    return override.input_line


def sweep_job_name(*, _root_: DictConfig) -> str:
    job_overrides = OverridesParser.create().parse_overrides(list(_root_.hydra.overrides.task))
    searched = _searched_keys(_root_)
    swept = _swept_keys(_root_, searched)
    chosen = [o for o in job_overrides if swept is None or o.key_or_group in swept] or job_overrides
    name = ",".join(sorted(_short(o, searched) for o in chosen)).replace(os.sep, "_") or "defaults"
    if len(name.encode()) > _LONGEST_NAME:  # file systems allow 255 bytes; TensorBoard's run list less
        head = name.encode()[: _LONGEST_NAME - 9].decode(errors="ignore")  # whole characters only
        name = f"{head}_{hashlib.sha1(name.encode()).hexdigest()[:8]}"
    return name


def register() -> None:
    # use_cache: every read of hydra.run.dir in this run, and every job of a sweep, sees one value
    OmegaConf.register_new_resolver("charlm.claim_dir", claim_dir, use_cache=True, replace=True)
    OmegaConf.register_new_resolver("charlm.sweep_job_name", sweep_job_name, replace=True)
