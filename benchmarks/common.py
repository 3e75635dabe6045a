"""What the benchmark scripts share: where the corpora are, train.py's config, and a timer."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from charlm import config
from charlm.training import run_dirs

ROOT = Path(__file__).resolve().parents[1]


def local_corpus(name: str) -> Path | None:
    """`<name>.txt` from the project's data/ or, offline, from ../shared/data/, if either has it."""
    for path in (ROOT / "data" / f"{name}.txt", ROOT.parent / "shared" / "data" / f"{name}.txt"):
        if path.exists():
            return path
    return None


def compose_train(overrides: list[str]) -> DictConfig:
    """The config `python train.py <overrides>` would run, as train.py composes it."""
    config.register()
    run_dirs.register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """fn(*args) and the seconds it took."""
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start
