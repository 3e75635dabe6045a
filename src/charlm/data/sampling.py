"""The order in which the windows are read, and by which DDP rank, for any corpus size."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler

# indices handed out as Python ints this many at a time
_SLICE = 1 << 16


class ShuffledWindows(DistributedSampler):
    """torch's DistributedSampler, the same order to the index, without its Python list.

    DistributedSampler turns its permutation into a list: about 36 bytes a window, 720 MB per
    process for the 20 million windows of a 2 GB corpus. This one keeps the permutation as a tensor
    (4 bytes a window: 80 MB), never copies it, and converts a slice at a time as the loader asks.
    """

    @property
    def _dtype(self) -> torch.dtype:
        return torch.int32 if len(self.dataset) < 2**31 else torch.int64

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator()
            generator.manual_seed(self.seed + self.epoch)
            # the same permutation as torch's int64 one (its draws do not depend on the type)
            indices = torch.randperm(len(self.dataset), generator=generator, dtype=self._dtype)
        else:
            indices = torch.arange(len(self.dataset), dtype=self._dtype)
        count = len(indices)
        end = self.total_size if self.drop_last else count  # drop_last: the tail no rank gets
        mine = indices[self.rank : end : self.num_replicas]
        for start in range(0, len(mine), _SLICE):
            yield from mine[start : start + _SLICE].tolist()
        if not self.drop_last:  # every rank the same count: torch pads with the first indices again
            first = count + (self.rank - count) % self.num_replicas  # this rank's first place past the end
            padding = torch.tensor(range(first, self.total_size, self.num_replicas), dtype=torch.long) - count
            yield from indices[padding % count].tolist()


class EvaluationShare(UnrepeatedDistributedSampler):
    """Lightning's UnrepeatedDistributedSampler (each window once, on one rank, in order), without
    its list of every index: a range."""

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            return super().__iter__()
        return iter(range(self.rank, self.total_size, self.num_replicas))
