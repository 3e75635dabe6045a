"""Scores of a next-character model, from one number: the mean cross-entropy per character."""

import math

import torch
from torchmetrics import Metric


class CharScores(Metric):
    """Character-weighted mean loss (nats/char), with the perplexity and bits per char it implies.

    Accumulates across batches and, under DDP, across ranks; `compute` gives
    `{"loss": L, "ppl": exp(L), "bpc": L / ln 2}`. An update only adds on the device: torchmetrics'
    MeanMetric checks every value for nan (a host-device sync per training step on a GPU) and
    copies the weight to the device; a nan here shows in the scores, and `StopWhenDiverged` stops
    the run at it.
    """

    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("chars", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, loss: torch.Tensor, chars: int) -> None:  # type: ignore[override]
        self.total += loss.detach() * chars
        self.chars += chars

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        loss = self.total / self.chars
        return {"loss": loss, "ppl": loss.exp(), "bpc": loss / math.log(2)}
