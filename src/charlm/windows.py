"""Next-character examples: windows over one encoded corpus, split into contiguous parts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from charlm.errors import CharLMError


def split_bounds(length: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """[start, end) of each contiguous part, e.g. train/val/test for fractions (0.9, 0.05, 0.05)."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise CharLMError(f"data.splits {list(fractions)} must be non-negative and sum to 1")
    ends = [round(length * sum(fractions[: i + 1])) for i in range(len(fractions))]
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends, strict=True))


class WindowDataset(Dataset):
    """Input `ids[i:i+L]`, target `ids[i+1:i+L+1]` for i = 0, stride, 2*stride, ...

    The windows are a strided view of `ids` (no copy), so memory stays O(corpus) whatever the
    overlap. Batches are gathered in one indexing op through `__getitems__`.
    """

    def __init__(self, ids: torch.Tensor, seq_len: int, stride: int):
        if seq_len < 1 or stride < 1:
            raise CharLMError(f"seq_len ({seq_len}) and stride ({stride}) must be at least 1")
        self.windows = ids.unfold(0, seq_len + 1, stride)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = self.windows[index]
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.windows[torch.as_tensor(indices)]
        return batch[:, :-1], batch[:, 1:]
