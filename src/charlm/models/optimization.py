"""How the weights are trained: the optimizer's settings and the learning-rate schedules.

The optimizer and the schedule are Hydra-style dicts (`_target_` plus arguments; `conf/optimizer`,
`conf/scheduler`), kept in checkpoints as plain data so that they load with
`torch.load(weights_only=True)`. Each schedule returns a Lightning `lr_scheduler` config dict,
built once the run knows its optimizer and its total step count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from charlm.errors import CharLMError


@dataclass(kw_only=True)
class OptimizerConfig:
    """The settings every optimizer has (`optimizer.<name>`), with charlm's default: Adam at 2e-3.

    conf/optimizer/*.yaml choose another `_target_` and may add its own arguments (SGD's momentum):
    Hydra checks the types of these three and passes the others to the optimizer as they are.
    """

    _target_: str = "torch.optim.Adam"
    lr: float = 2e-3
    weight_decay: float = 0.0


def check_optimizer(settings: Mapping[str, Any]) -> None:
    """One clear line before training for a learning rate that cannot train: torch refuses a
    negative one only once the fit starts, and trains at 0 without a word (the loss never moves)."""
    lr, weight_decay = settings.get("lr", OptimizerConfig.lr), settings.get("weight_decay", 0.0)
    if not lr > 0:
        raise CharLMError(f"optimizer.lr must be above 0 (Adam: around 1e-3), got {lr}")
    if not weight_decay >= 0:
        raise CharLMError(f"optimizer.weight_decay must be 0 or more, got {weight_decay}")


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.1) -> dict:
    """Linear warmup, then cosine decay to `min_lr_ratio` x lr at the last step (stepped per batch)."""
    if warmup_steps < 0 or not 0 <= min_lr_ratio <= 1:
        raise CharLMError(
            f"scheduler.warmup_steps must be 0 or more ({warmup_steps}) and scheduler.min_lr_ratio "
            f"from 0 to 1 ({min_lr_ratio})"
        )

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return {"scheduler": LambdaLR(optimizer, factor), "interval": "step"}


def plateau(optimizer: Optimizer, total_steps: int, factor: float = 0.5, patience: int = 2) -> dict:
    """Multiply lr by `factor` when val loss has not improved for `patience` validations."""
    if not 0 < factor < 1 or patience < 0:
        raise CharLMError(
            f"scheduler.factor must be in (0, 1) ({factor}) and scheduler.patience 0 or more ({patience})"
        )
    scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=factor, patience=patience)
    # not strict: an epoch without validation (limit_val_batches=0, ...) leaves the lr as it is
    return {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False}
