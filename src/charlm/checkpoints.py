"""Checkpoints: written so a crash never costs the last good one, found from a run directory."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins import TorchCheckpointIO

from charlm.errors import CharLMError
from charlm.model import CharLM, saved_streams

LAST = "last.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a file beside its target, then rename it into place.

    Lightning stages checkpoints in $TMPDIR and moves them, which is a plain copy, not atomic, when
    $TMPDIR is another filesystem (a tmpfs /tmp, as on many clusters): a job killed mid-copy would
    leave a truncated last.ckpt where the good one was. A rename within one directory is atomic.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except OSError as err:  # a full disk, most often
            raise CharLMError(
                f"could not save checkpoint {path}: {err.strerror or err}. The previous one is intact; "
                "free space on its disk (or set paths.log_dir elsewhere) and resume with ckpt_path=<run dir>"
            ) from None
        finally:
            partial.unlink(missing_ok=True)


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


# what a checkpoint's weights are shaped (and shared) by: a run can resume only with the same
# (impl is not among them: fused and scratch layers hold the same weights)
_SHAPE_KEYS = ("cell", "hidden", "num_layers", "embedding_dim", "tie_weights", "locked_dropout")


# what the saved position in the data means: another value would resume on other windows
_DATA_KEYS = ("seq_len", "stride", "batch_size", "splits", "stateful")


def check_resumable(
    path: Path, checkpoint: dict[str, Any], model: CharLM, datamodule: pl.LightningDataModule, world_size: int
) -> None:
    """One clear line when `checkpoint` (read from `path`) was trained on another vocabulary, model
    shape or data layout than this run's (`world_size` DDP ranks), instead of Lightning's page of
    mismatched weight sizes (or a silent resume on other batches)."""
    saved = checkpoint.get("hyper_parameters", {})
    vocab, here = list(saved.get("vocab", [])), list(model.vocab.chars)
    if vocab != here:
        extra, missing = sorted(set(here) - set(vocab)), sorted(set(vocab) - set(here))
        changes = f"new here: {''.join(extra)[:40]!r}, gone: {''.join(missing)[:40]!r}"
        raise CharLMError(
            f"cannot resume from {path}: it was trained on another vocabulary ({len(vocab)} characters, "
            f"this corpus has {len(here)}; {changes}). "
            "Resume with the data settings it was trained with (see its run's .hydra/overrides.yaml)"
        )
    data = checkpoint.get("datamodule_hyper_parameters", {})
    differ = [(k, saved[k], model.hparams.get(k)) for k in _SHAPE_KEYS if k in saved]
    differ += [(f"data.{k}", data[k], datamodule.hparams.get(k)) for k in _DATA_KEYS if k in data]
    differ = [(k, then, now) for k, then, now in differ if list_or_value(then) != list_or_value(now)]
    if differ:
        then = ", ".join(f"{k}={v}" for k, v, _ in differ)
        now = ", ".join(f"{k}={v}" for k, _, v in differ)
        raise CharLMError(
            f"cannot resume from {path}: it was trained with {then}, this run has {now}. "
            "Resume with the settings it was trained with (see its run's .hydra/overrides.yaml)"
        )
    streams = saved_streams(checkpoint)
    if streams is not None and len(streams) != world_size:
        raise CharLMError(
            f"cannot resume from {path}: it carries the stream states of {len(streams)} DDP ranks; "
            f"resume it on {len(streams)} devices (trainer.devices={len(streams)}), not {world_size}"
        )


def list_or_value(value: Any) -> Any:
    """Splits come back from a checkpoint as a list, and from a config as a tuple."""
    return list(value) if isinstance(value, list | tuple) else value


def load_model(path: str | Path, device: str | torch.device = "cpu") -> CharLM:
    """The model of a checkpoint file or run directory (its best checkpoint), in eval mode.

    Checkpoints hold the vocabulary and the model settings, so neither the corpus nor the training
    config is needed; `device` places the weights, so a model trained on GPU loads on a CPU.
    """
    file = find_checkpoint(path)
    read_checkpoint(file)  # a damaged file gets one clear line rather than a deep traceback
    # compile=False: generating is a few hundred short steps, not worth a compilation
    model = CharLM.load_from_checkpoint(
        file, map_location=torch.device(device), weights_only=True, compile=False
    )
    return model.eval()
