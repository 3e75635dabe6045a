"""Scores of a next-character model, from one number: the mean cross-entropy per character."""

import math

import torch
from torchmetrics import MeanMetric


class CharScores(MeanMetric):
    """Character-weighted mean loss (nats/char), with the perplexity and bits per char it implies.

    Accumulates across batches and, under DDP, across ranks; `compute` gives
    `{"loss": L, "ppl": exp(L), "bpc": L / ln 2}`.
    """

    def update(self, loss: torch.Tensor, chars: int) -> None:  # type: ignore[override]
        super().update(loss, chars)

    def compute(self) -> dict[str, torch.Tensor]:  # type: ignore[override]
        loss = super().compute()
        return {"loss": loss, "ppl": loss.exp(), "bpc": loss / math.log(2)}
