"""What checkpoints hold beyond Lightning's defaults: the whole run's record of the best, and
torch's random state."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning import callbacks

from charlm.models.carried_state import every_rank


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, but a run resumed into a new directory keeps the record of the
    best checkpoints so far, so that "best" is the best of the whole run (it may stay in the old
    directory, from which nothing is ever deleted). Lightning forgets all but the best's path when
    the directory changes, and would then take the first validation after a resume for the best."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict({**state_dict, "dirpath": self.dirpath})


class RandomState(pl.Callback):
    """Each DDP rank its own dropout masks, and torch's random state in checkpoints, so that a
    resumed run draws the masks an unbroken one would (Lightning keeps the data order, through
    StatefulDataLoader, but not this).

    Every rank is seeded alike, for the same initial weights; at fit start rank r reseeds torch
    (CPU and CUDA) with that seed + r, or all ranks would drop the same units at every step. One
    process keeps its random state as it is. The data order draws nothing from it (the training
    sampler has a seed of its own, rank 0's: see CharDataModule._sampler).

    Checkpoints keep every rank's state (gathered: every rank saves) and each rank loads its own.
    A checkpoint of fewer ranks (one: a single process's, or DDP's from before the ranks drew
    apart) gives rank 0 its state, and the other ranks keep the streams they were just seeded with.
    A callback, not a module hook: loading a model to use it must not reset anyone's RNG.
    """

    def __init__(self) -> None:
        self._module: pl.LightningModule | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._module = pl_module
        # after Lightning's reset_seed at DDP's start, before a checkpoint's state is loaded
        if stage == "fit" and trainer.world_size > 1:
            torch.manual_seed((torch.initial_seed() + trainer.global_rank) % 2**64)

    def state_dict(self) -> dict[str, Any]:
        module = self._module
        state = {"torch": torch.get_rng_state()}
        if module is not None and module.device.type == "cuda":  # alike on every rank, for the gather
            state["cuda"] = torch.cuda.get_rng_state(module.device)
        ranks = every_rank(module, state) if module is not None else [state]
        # gathered on the module's device (NCCL's take no other): kept on the CPU, as torch gives them
        return {"ranks": [{key: t.cpu() for key, t in rank.items()} for rank in ranks]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        ranks = state_dict.get("ranks", [state_dict])  # one state, not a list: saved before DDP kept each
        rank = self._module.global_rank if self._module is not None else 0
        if rank >= len(ranks):
            return
        torch.set_rng_state(ranks[rank]["torch"].cpu())
        if "cuda" in ranks[rank] and torch.cuda.is_available():
            torch.cuda.set_rng_state(ranks[rank]["cuda"].cpu())
