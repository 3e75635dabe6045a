"""What checkpoints hold beyond Lightning's defaults: the whole run's record of the best, and
torch's random state."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning import callbacks


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, but a run resumed into a new directory keeps the record of the
    best checkpoints so far, so that "best" is the best of the whole run (it may stay in the old
    directory, from which nothing is ever deleted). Lightning forgets all but the best's path when
    the directory changes, and would then take the first validation after a resume for the best."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


class RandomState(pl.Callback):
    """Keep torch's random state in checkpoints, so a resumed run draws the same dropout masks as
    one that never stopped (Lightning keeps the data order, through StatefulDataLoader, but not
    this). Under DDP every rank is seeded alike and draws alike, so rank 0's state is every rank's.
    A callback, not a module hook: loading a model to use it must not reset anyone's RNG."""

    def state_dict(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state()  # the current device: this rank's
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"].cpu())
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state(state_dict["cuda"].cpu())
