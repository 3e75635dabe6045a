"""Checkpoints read back: found from a run directory, checked byte by byte, loaded as a model."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch

from charlm.errors import CharLMError
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig

LAST = "last.ckpt"
WHAT_IT_IS = "a checkpoint that train.py wrote: it holds the vocabulary, the model settings and the weights"
SHOWN_RUNS = 5
_VAL_LOSS = re.compile(r"val_loss=?(\d+(?:\.\d+)?)")  # epoch003-step135-val_loss1.2345.ckpt


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The charlm checkpoint at `path` as plain data on the CPU (memory-mapped), or one clear error:
    unreadable, damaged (truncated, or with a flipped byte anywhere: each entry's CRC is checked;
    torch would not), or not a checkpoint of train.py at all."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError as err:  # permission denied, a folder, ...
        raise CharLMError(f"cannot read checkpoint {path}: {err.strerror or err}") from None
    if head[:2] != b"PK":  # torch.save writes a zip archive
        kind = "an empty file" if not head else "no zip archive, as torch.save writes (a text file?)"
        raise CharLMError(f"{path} is not a charlm checkpoint ({WHAT_IT_IS}): it is {kind}")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
        if not damaged:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:  # intact bytes, but objects beyond plain data
        raise CharLMError(
            f"{path} is not a charlm checkpoint ({WHAT_IT_IS}): it holds pickled Python objects "
            "(torch.save of a whole model?)"
        ) from None
    # OSError: a truncated file fails to memory-map ("Invalid argument")
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise CharLMError(f"cannot read checkpoint {path} ({err}): it is damaged or no checkpoint") from None
    if damaged:
        raise CharLMError(f"cannot read checkpoint {path} ({damaged} fails its checksum): it is damaged")
    check_charlm_checkpoint(path, checkpoint)
    return checkpoint


def check_charlm_checkpoint(path: Path, checkpoint: Any) -> None:
    """One clear line for data that torch reads but train.py did not write, such as a plain
    `torch.save(model.state_dict())`: without it, loading fails on missing keys and resuming
    compares vocabularies of 0 characters."""
    settings = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if isinstance(settings, dict) and model_settings(checkpoint)["vocab"] and "state_dict" in checkpoint:
        return
    values = list(checkpoint.values()) if isinstance(checkpoint, dict) else []
    if values and all(isinstance(v, torch.Tensor) for v in values):
        holds = f"only weights ({len(values)} tensors, as torch.save(model.state_dict()) writes them)"
    elif isinstance(checkpoint, dict):
        keys = ", ".join(str(k) for k in list(checkpoint)[:6]) + (", ..." if len(checkpoint) > 6 else "")
        holds = f"no vocabulary or no weights (its keys: {keys})"
    else:
        holds = f"a {type(checkpoint).__name__}"
    raise CharLMError(
        f"{path} is not a charlm checkpoint ({WHAT_IT_IS}); it holds {holds}. "
        "Give a .ckpt file from a run's checkpoints/ folder, or the run directory"
    )


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


def _first_intact(candidates: list[Path]) -> tuple[Path, str] | None:
    """When last.ckpt, the record of the best, cannot be read: the checkpoint with the lowest val
    loss in its file name, else the newest, of those that read back intact."""
    losses = {p: float(m[1]) for p in candidates if (m := _VAL_LOSS.search(p.name))}
    ranked = sorted(losses, key=losses.__getitem__)
    ranked += sorted(set(candidates) - set(losses), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in ranked:
        try:
            read_checkpoint(path)
        except CharLMError:
            continue
        return path, "the lowest val loss in its name" if path in losses else "the newest that reads"
    return None


# logs/multiruns/<date>/<job>/checkpoints is three folders below logs/
_DEEPEST = 3


def _runs_below(path: Path) -> list[Path]:
    """The run directories anywhere below `path` (those with a checkpoints/ folder), newest first:
    logs/ holds runs/<run>/ and multiruns/<date>/<job>/."""
    runs = []
    for folder, subfolders, _ in os.walk(path):
        if "checkpoints" in subfolders and Path(folder) != path:
            runs.append(Path(folder))
        deep = len(Path(folder).relative_to(path).parts) >= _DEEPEST  # ckpt=~ must not walk the disk
        subfolders[:] = (
            [] if deep else [d for d in subfolders if d != "checkpoints" and not d.startswith(".")]
        )
    return sorted(runs, key=lambda run: ((run / "checkpoints").stat().st_mtime, run.name), reverse=True)


def find_checkpoint(path: str | Path, which: Literal["best", "last"] = "best") -> Path:
    """The checkpoint file that `path` means: itself if a file, else the `best` or `last` one of a
    run directory (or its checkpoints/ folder). A folder of runs gets the list of them."""
    path = Path(path).expanduser()
    try:
        return _find_checkpoint(path, which)
    except PermissionError as err:
        raise CharLMError(
            f"cannot read {err.filename or path}: permission denied; give a checkpoint this user can read"
        ) from None


def _find_checkpoint(path: Path, which: Literal["best", "last"]) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        what = "; it is neither a file nor a directory" if path.exists() else ""  # /dev/null, a pipe
        raise CharLMError(f"no checkpoint at {path}{what}: give a .ckpt file or a run directory")
    folder = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    # hidden: leftovers of saves that never finished (.last.ckpt.partial), never chosen
    found = sorted(p for p in folder.glob("*.ckpt") if not p.name.startswith(".") and p.is_file())
    runs = [] if found or folder != path else _runs_below(path)
    if runs:  # a multirun, logs/runs, or logs itself
        shown = [str(run.relative_to(path)) for run in runs[:SHOWN_RUNS]]
        more = f", and {len(runs) - SHOWN_RUNS} more" if runs[SHOWN_RUNS:] else ""
        listed = ", ".join(shown) + more
        raise CharLMError(f"{path} holds {len(runs)} runs: choose one (newest first: {listed})")
    if not found and (folder != path or path.name == "checkpoints" or (path / ".hydra").is_dir()):
        raise CharLMError(f"no checkpoints in {folder}: the run may have stopped before saving one")
    if not found:
        raise CharLMError(f"no checkpoints in {path}, nor runs below it: give a .ckpt file or a run dir")
    last = folder / LAST
    if which == "last" and last in found:
        return last
    if which == "best" and last in found:
        try:
            best = _best_recorded(last)
        except CharLMError as err:  # a truncated last.ckpt: the other checkpoints may be intact
            fallback = _first_intact([p for p in found if p != last])
            if not fallback:
                raise
            print(f"# {err}; taking {fallback[0].name} instead ({fallback[1]})", file=sys.stderr)
            return fallback[0]
        if best:
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
    checkpoint = read_checkpoint(file)  # a damaged file, or none of train.py's, gets one clear line
    settings = model_settings(checkpoint)
    # compile off: generating is a few hundred short steps, not worth a compilation
    settings["network"] = {**settings["network"], "compile": False}
    settings["stateful"] = bool(settings["stateful"])
    model = CharLM(**settings)
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(device).eval()
