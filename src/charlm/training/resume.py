"""Whether a checkpoint can be resumed by this run: same vocabulary, same weights' shapes, same
data layout, as many DDP ranks as it carries stream states for.

What must match is read from the settings' own definitions: the fields of NetworkConfig and
DataConfig marked `resume` in their metadata.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.errors import CharLMError
from charlm.models.carried_state import saved_streams
from charlm.models.checkpoints import model_settings
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig
from charlm.resumable import resume_keys


def list_or_value(value: Any) -> Any:
    """Splits come back from a checkpoint as a list, and from a config as a tuple."""
    return list(value) if isinstance(value, list | tuple) else value


def check_resumable(
    path: Path, checkpoint: dict[str, Any], model: CharLM, datamodule: CharDataModule, world_size: int
) -> None:
    """One clear line when `checkpoint` (read from `path`) was trained on another vocabulary, model
    shape or data layout than this run's (`world_size` DDP ranks), instead of Lightning's page of
    mismatched weight sizes (or a silent resume on other batches)."""
    saved = model_settings(checkpoint)
    vocab, here = list(saved["vocab"] or []), list(model.vocab.chars)
    if vocab != here:
        extra, missing = sorted(set(here) - set(vocab)), sorted(set(vocab) - set(here))
        changes = f"new here: {''.join(extra)[:40]!r}, gone: {''.join(missing)[:40]!r}"
        raise CharLMError(
            f"cannot resume from {path}: it was trained on another vocabulary ({len(vocab)} characters, "
            f"this corpus has {len(here)}; {changes}). "
            "Resume with the data settings it was trained with (see its run's .hydra/overrides.yaml)"
        )
    network, data = saved["network"], dict(checkpoint.get("datamodule_hyper_parameters", {}))
    if data.get("stride", 0) is None:  # saved through the Python API: windows every seq_len characters
        data["stride"] = data.get("seq_len")
    differ = [(k, network[k], model.hparams.network[k]) for k in resume_keys(NetworkConfig) if k in network]
    differ += [(f"data.{k}", data[k], datamodule.hparams[k]) for k in resume_keys(DataConfig) if k in data]
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
