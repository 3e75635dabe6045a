"""Whether a checkpoint can be resumed by this run: same vocabulary, same weights, same data layout
and corpus, same optimizer and schedule, a training state to continue, as many DDP ranks as it
carries stream states for. Each mismatch is one clear line before fitting, instead of Lightning's
key errors, a traceback from the data loader, or a silent resume on other batches or settings.

What must match is read from the settings' own definitions: the fields of NetworkConfig and
DataConfig marked `resume` in their metadata.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.errors import CharLMError
from charlm.models.carried_state import saved_streams
from charlm.models.checkpoints import model_settings
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig
from charlm.resumable import resume_keys

SETTINGS = "see its run's .hydra/overrides.yaml"


def list_or_value(value: Any) -> Any:
    """Splits come back from a checkpoint as a list, and from a config as a tuple."""
    return list(value) if isinstance(value, list | tuple) else value


def _listed(names: list[str], most: int = 3) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _then_and_now(differ: list[tuple[str, Any, Any]]) -> tuple[str, str]:
    """`name=value, ...` of the checkpoint's settings and of this run's."""
    return tuple(", ".join(f"{name}={values[i]}" for name, *values in differ) for i in (0, 1))


def _settings_differ(
    path: Path, checkpoint: dict[str, Any], model: CharLM, datamodule: CharDataModule
) -> None:
    """A setting that shapes the weights or the saved position in the data. A setting that the
    checkpoint predates (saved by an older charlm) had its default: the behaviour before it existed."""
    network = model_settings(checkpoint)["network"]
    data = dict(checkpoint.get("datamodule_hyper_parameters", {}))
    predates = [k for k in resume_keys(NetworkConfig) if network and k not in network]
    network = {**asdict(NetworkConfig()), **network} if network else {}
    data = {**asdict(DataConfig()), **data} if data else {}
    if data.get("stride", 0) is None:  # saved through the Python API: windows every seq_len characters
        data["stride"] = data.get("seq_len")
    differ = [(k, network[k], model.hparams.network[k]) for k in resume_keys(NetworkConfig) if k in network]
    differ += [(f"data.{k}", data[k], datamodule.hparams[k]) for k in resume_keys(DataConfig) if k in data]
    differ = [(k, then, now) for k, then, now in differ if list_or_value(then) != list_or_value(now)]
    if differ:
        then, now = _then_and_now(differ)
        older = ", ".join(f"model.{k}" for k, _, _ in differ if k in predates)
        note = f" (it predates {older}: an older charlm, trained with the default)" if older else ""
        raise CharLMError(
            f"cannot resume from {path}: it was trained with {then}{note}, this run has {now}. "
            f"Resume with the settings it was trained with ({SETTINGS})"
        )


def _weights_differ(path: Path, checkpoint: dict[str, Any], model: CharLM) -> None:
    """Weights that Lightning's strict load would refuse with a page of key errors: a checkpoint of
    another charlm version (a setting added or removed since) or of other model settings."""
    saved, here = checkpoint["state_dict"], model.state_dict()
    lacks, extra = [k for k in here if k not in saved], [k for k in saved if k not in here]
    resized = [k for k in here if k in saved and tuple(saved[k].shape) != tuple(here[k].shape)]
    if not (lacks or extra or resized):
        return
    what = [f"it lacks {_listed(lacks)}"] if lacks else []
    what += [f"it has {_listed(extra)}, which this model lacks"] if extra else []
    what += [f"{_listed(resized)} differ in shape"] if resized else []
    network = model_settings(checkpoint)["network"] or {}
    predates = [f"model.{name}" for name in asdict(NetworkConfig()) if network and name not in network]
    older = f"it predates {_listed(predates)}, so it was saved by an older charlm" if predates else ""
    raise CharLMError(
        f"cannot resume from {path}: its weights do not fit this model ({'; '.join(what)}): "
        f"{older or 'it was saved by another charlm version or with other model settings'}. "
        f"Resume with the charlm version and model settings it was trained with ({SETTINGS}), "
        "or start a new run without ckpt_path"
    )


def _optimizer_differs(path: Path, checkpoint: dict[str, Any], model: CharLM) -> None:
    """A resume restores the optimizer's state, its learning rate included, and the schedule's:
    with other settings torch fails on missing keys (sgd from adam's state), or the new ones are
    silently ignored (optimizer.lr) or start in the middle of the run (a schedule added)."""
    saved = model_settings(checkpoint)
    differ = []
    for group in ("optimizer", "scheduler"):
        then, now = saved[group], model.hparams[group]
        if group == "optimizer" and then is None:  # not recorded: nothing to compare with
            continue
        if not (then and now) or then.get("_target_") != now.get("_target_"):  # scheduler=none: None
            differ.append((group, (then or {}).get("_target_", "none"), (now or {}).get("_target_", "none")))
        else:  # the arguments it was saved with (one added to the config since is not compared)
            differ += [(f"{group}.{k}", then[k], now.get(k)) for k in then]
    differ = [(k, then, now) for k, then, now in differ if list_or_value(then) != list_or_value(now)]
    if differ:
        then, now = _then_and_now(differ)
        raise CharLMError(
            f"cannot resume from {path}: it was trained with {then}, this run has {now}; a resume continues "
            f"its optimizer's state and schedule. Resume with the optimizer and scheduler it was trained "
            f"with ({SETTINGS}), or start a new run without ckpt_path"
        )


def _corpus_differs(path: Path, checkpoint: dict[str, Any], datamodule: CharDataModule) -> None:
    """The saved position in the data counts batches of the corpus it was trained on: on a smaller
    one Lightning fails while restoring it, on a bigger one the resume reads other batches. The
    datamodule records its splits' sizes (`CharDataModule.state_dict`); checkpoints written before
    it did are not checked."""
    saved = checkpoint.get(type(datamodule).__qualname__, {}).get("split_chars")
    here = datamodule.state_dict()["split_chars"]
    if saved is None or saved == here:
        return
    names = [name for name in ("train", "val", "test") if name in saved or name in here]
    then, now = (" / ".join(f"{sizes.get(name, 0):,}" for name in names) for sizes in (saved, here))
    raise CharLMError(
        f"cannot resume from {path}: it was trained on a corpus of {then} characters "
        f"({' / '.join(names)}), this run's has {now}; its saved position in the data holds for "
        f"that text only. Resume on the corpus it was trained on ({SETTINGS})"
    )


def _older_text(gone: set[str], new: set[str]) -> str:
    """Why a checkpoint of a charlm from before text normalisation has another vocabulary, when
    that is the only difference: '' otherwise."""
    if "\ufeff" in gone:
        return (
            "it was saved by an older charlm, whose vocabulary kept the file's byte-order mark (U+FEFF), "
            "which is now dropped: start a new run (generate.py still writes with it)"
        )
    if any(unicodedata.combining(c) for c in gone | new):
        return (
            "it was saved by an older charlm, which kept accents as the file writes them: "
            "resume with data.normalize=null"
        )
    return ""


def check_resumable(
    path: Path, checkpoint: dict[str, Any], model: CharLM, datamodule: CharDataModule, world_size: int
) -> None:
    """One clear line when `checkpoint` (read from `path`) cannot be resumed by this run's model,
    data and `world_size` DDP ranks exactly where it stopped."""
    saved = model_settings(checkpoint)
    vocab, here = list(saved["vocab"] or []), list(model.vocab.chars)
    if vocab != here:
        extra, missing = sorted(set(here) - set(vocab)), sorted(set(vocab) - set(here))
        changes = f"new here: {''.join(extra)[:40]!r}, gone: {''.join(missing)[:40]!r}"
        if "normalize" not in checkpoint.get("datamodule_hyper_parameters", {"normalize": None}):
            older = _older_text(set(missing), set(extra))
            if older:
                raise CharLMError(f"cannot resume from {path}: {older}")
        raise CharLMError(
            f"cannot resume from {path}: it was trained on another vocabulary ({len(vocab)} characters, "
            f"this corpus has {len(here)}; {changes}). "
            f"Resume with the data settings it was trained with ({SETTINGS})"
        )
    if not isinstance(checkpoint.get("loops"), Mapping) or "optimizer_states" not in checkpoint:
        raise CharLMError(
            f"cannot resume from {path}: it holds the weights only (saved with save_weights_only=true), not "
            "the optimizer's and the loops' state that a resume continues. Start a new run without ckpt_path"
        )
    _settings_differ(path, checkpoint, model, datamodule)
    _weights_differ(path, checkpoint, model)
    _optimizer_differs(path, checkpoint, model)
    _corpus_differs(path, checkpoint, datamodule)
    streams = saved_streams(checkpoint)
    if streams is not None and len(streams) != world_size:
        raise CharLMError(
            f"cannot resume from {path}: it carries the stream states of {len(streams)} DDP ranks; "
            f"resume it on {len(streams)} devices (trainer.devices={len(streams)}), not {world_size}"
        )
