"""The hidden state that stateful training (`data.stateful=true`) carries from batch to batch."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection

from charlm.models.network import State

# where a stateful checkpoint keeps the training streams' state, one entry per DDP rank
CHECKPOINT_KEY = "carried_state"


def detach(state: State) -> State:
    """The state without its history: gradients stop at the batch boundary (truncated BPTT)."""
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


def every_rank(module: pl.LightningModule, state: Any) -> list[Any]:
    """Each DDP rank's `state`, in rank order (a list of one without DDP); every rank must call it."""
    world_size = module.trainer.world_size
    if world_size == 1:
        return [state]
    gathered = module.all_gather(state)  # [world_size, ...] per tensor
    # clones: a view would be saved with the whole gathered storage
    return [apply_to_collection(gathered, torch.Tensor, _row, rank) for rank in range(world_size)]


def _row(gathered: torch.Tensor, rank: int) -> torch.Tensor:
    return gathered[rank].clone()


def saved_streams(checkpoint: dict[str, Any]) -> list[State] | None:
    """The carried state of each DDP rank's streams in a stateful checkpoint (one process's alone
    in checkpoints saved before DDP), or None."""
    states = checkpoint.get(CHECKPOINT_KEY)
    return states if states is None or isinstance(states, list) else [states]


class CarriedState:
    """The state each stage's streams carry: reset at each epoch start, detached as it is kept,
    moved with the model, saved and loaded with checkpoints.

    Each stage (train, val, test) carries its own, so that a validation in the middle of an epoch
    leaves training's alone. A checkpoint taken mid-epoch keeps every DDP rank's training state,
    so a resumed run reads on each stream from where it stopped. Disabled, it carries nothing:
    each batch starts from a zero state.
    """

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._states: dict[str, State] = {}

    def __call__(self, stage: str) -> State | None:
        """The state to start the next batch of `stage` from (None: zeros)."""
        return self._states.get(stage)

    def keep(self, stage: str, state: State) -> None:
        if self.enabled:
            self._states[stage] = detach(state)

    def reset(self, stage: str) -> None:
        self._states.pop(stage, None)

    def to(self, device: torch.device) -> None:
        """A resumed state is loaded before the model moves to its device."""
        self._states = apply_to_collection(self._states, torch.Tensor, lambda t: t.to(device))

    def save(self, module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        """Mid-epoch, the training streams' state of every rank (every rank must call this)."""
        if "train" in self._states:
            checkpoint[CHECKPOINT_KEY] = every_rank(module, self._states["train"])

    def load(self, checkpoint: dict[str, Any], rank: int) -> None:
        """This rank's training state (`check_resumable` has checked the rank count)."""
        states = saved_streams(checkpoint)
        if states is not None:
            self._states["train"] = states[rank]
