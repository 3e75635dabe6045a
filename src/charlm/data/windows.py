"""Next-character examples over one encoded corpus, split into contiguous parts.

Two layouts: independent windows (`WindowDataset`, shuffled), or parallel streams read in order
(`StreamBatches`, for training that carries the hidden state from batch to batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from charlm.data.mapped import PicklesByFile
from charlm.errors import CharLMError

# Ids of a vocabulary over 256 characters are stored as uint16 or uint32, for which torch has few
# ops (indexing among them only in recent versions): the datasets read them through a signed view
# of the same width, and batches are int32, which every device and op takes, as before the cache.
_SIGNED = {torch.uint16: torch.int16, torch.uint32: torch.int32}  # ids stay below 0x110000


def _signed(ids: torch.Tensor) -> torch.Tensor:
    return ids.view(_SIGNED[ids.dtype]) if ids.dtype in _SIGNED else ids


def _batchable(batch: torch.Tensor) -> torch.Tensor:
    return batch.int() & 0xFFFF if batch.dtype == torch.int16 else batch


def split_bounds(length: int, fractions: Sequence[float]) -> list[tuple[int, int]]:
    """[start, end) of each contiguous part, e.g. train/val/test for fractions (0.9, 0.05, 0.05)."""
    if any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise CharLMError(f"data.splits {list(fractions)} must be non-negative and sum to 1")
    ends = [round(length * sum(fractions[: i + 1])) for i in range(len(fractions))]
    starts = [0, *ends[:-1]]
    return list(zip(starts, ends, strict=True))


class WindowDataset(PicklesByFile, Dataset):
    """Input `ids[i:i+L]`, target `ids[i+1:i+L+1]` for i = 0, stride, 2*stride, ...

    The windows are a strided view of `ids` (no copy), so memory stays O(corpus) whatever the
    overlap. Batches are gathered in one indexing op through `__getitems__`.
    """

    def __init__(self, ids: torch.Tensor, seq_len: int, stride: int):
        if seq_len < 1 or stride < 1:
            raise CharLMError(f"seq_len ({seq_len}) and stride ({stride}) must be at least 1")
        self.windows = _signed(ids).unfold(0, seq_len + 1, stride)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        window = _batchable(self.windows[index])
        return window[:-1], window[1:]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = _batchable(self.windows[torch.as_tensor(indices)])
        return batch[:, :-1], batch[:, 1:]


class StreamBatches(PicklesByFile, Dataset):
    """Whole batches of `batch_size` parallel streams, so row i of batch t+1 continues row i of batch t.

    The text is cut into `batch_size` contiguous streams (the `batchify` of pytorch/examples
    word_language_model) and each batch is the next `seq_len` characters of every stream; the last
    batch may be shorter. A model that carries its hidden state from one batch to the next thus
    reads each stream from start to end: truncated backpropagation through time.

    Under DDP the text is cut into `batch_size * world_size` streams and rank r reads the r-th
    `batch_size` of them: N ranks together read what one process would with N x batch_size.
    """

    def __init__(self, ids: torch.Tensor, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1):
        if seq_len < 1 or batch_size < 1:
            raise CharLMError(f"seq_len ({seq_len}) and batch_size ({batch_size}) must be at least 1")
        streams = batch_size * world_size
        stream_len = len(ids) // streams
        everyone = _signed(ids)[: stream_len * streams].view(streams, stream_len)
        self.streams = everyone[rank * batch_size : (rank + 1) * batch_size]
        self.seq_len = seq_len

    def __len__(self) -> int:
        return -(-(self.streams.shape[1] - 1) // self.seq_len)  # ceil: a shorter last batch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start = index * self.seq_len
        end = min(start + self.seq_len, self.streams.shape[1] - 1)
        rows = _batchable(self.streams[:, start : end + 1])
        return rows[:, :-1], rows[:, 1:]
