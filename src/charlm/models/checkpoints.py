"""Checkpoints read back: found from a run directory, checked byte by byte, loaded as a model."""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

from charlm.errors import CharLMError
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig

LAST = "last.ckpt"


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint as plain data on the CPU (memory-mapped), or one clear error if it is damaged:
    truncated, or with a flipped byte anywhere (each entry's CRC is checked; torch would not)."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if not damaged:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    # OSError: a truncated file fails to memory-map ("Invalid argument")
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CharLMError(f"cannot read checkpoint {path} ({err}): it is damaged or no checkpoint") from None
    raise CharLMError(f"cannot read checkpoint {path} ({damaged} fails its checksum): it is damaged")


def _best_recorded(last: Path) -> Path | None:
    """The best checkpoint that the ModelCheckpoint callbacks recorded in `last`, if still there:
    where it was written (a resumed run's best may be in the run it resumed), or else beside `last`
    (the run directory may have moved)."""
    for key, state in read_checkpoint(last).get("callbacks", {}).items():
        best = state.get("best_model_path") if key.startswith("ModelCheckpoint") else None
        if best and state.get("monitor"):
            for candidate in (Path(best), last.parent / Path(best).name):
                if candidate.is_file():
                    return candidate
    return None


def find_checkpoint(path: str | Path, which: Literal["best", "last"] = "best") -> Path:
    """The checkpoint file that `path` means: itself if a file, else the `best` or `last` one of a
    run directory (or its checkpoints/ folder)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if not path.is_dir():
        raise CharLMError(f"no checkpoint at {path}: give a .ckpt file or a run directory")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    found = sorted(folder.glob("*.ckpt"))
    runs = sorted(p.name for p in path.iterdir() if (p / "checkpoints").is_dir())
    if not found and runs:  # a multirun, or logs/runs itself
        shown = ", ".join(runs if len(runs) <= 6 else ["...", *runs[-5:]])
        raise CharLMError(f"{path} holds {len(runs)} runs: choose one ({shown})")
    if not found:
        raise CharLMError(f"no checkpoints in {folder}: the run may have stopped before saving one")
    last = folder / LAST
    if which == "last" and last.exists():
        return last
    if which == "best" and last.exists() and (best := _best_recorded(last)):
        return best
    return max(found, key=lambda p: p.stat().st_mtime)  # the newest, when the record is missing


def model_settings(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """CharLM's arguments as a checkpoint holds them. Checkpoints written before NetworkConfig
    kept the network's settings flat beside the vocabulary: they are gathered into `network`."""
    saved = dict(checkpoint.get("hyper_parameters", {}))
    if "network" not in saved:
        fields = {f.name for f in dataclasses.fields(NetworkConfig)}
        saved["network"] = {k: saved.pop(k) for k in list(saved) if k in fields}
    return {k: saved.get(k) for k in ("vocab", "network", "optimizer", "scheduler", "stateful")}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> CharLM:
    """The model of a checkpoint file or run directory (its best checkpoint), in eval mode.

    Checkpoints hold the vocabulary and the model settings, so neither the corpus nor the training
    config is needed; `device` places the weights, so a model trained on GPU loads on a CPU.
    """
    file = find_checkpoint(path)
    checkpoint = read_checkpoint(file)  # a damaged file gets one clear line
    settings = model_settings(checkpoint)
    if not settings["vocab"] or "state_dict" not in checkpoint:
        raise CharLMError(f"{file} is no charlm checkpoint: it holds no vocabulary or no weights")
    # compile off: generating is a few hundred short steps, not worth a compilation
    settings["network"] = {**settings["network"], "compile": False}
    settings["stateful"] = bool(settings["stateful"])
    model = CharLM(**settings)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()
