"""Tensors over a memory-mapped file that pickle as the file's name, not as its bytes.

torch's multiprocessing pickler moves a tensor's whole storage into shared memory: a DataLoader
worker started by spawn or forkserver (macOS, Windows, Python 3.14's Linux default) or a
`ddp_spawn` rank would each cost a copy of the corpus. A view of a mapped file instead travels as
(file, type, length, and the view's size, stride and offset), and the receiving process maps the
file itself.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the storage address of each file this process has mapped -> (file, dtype, length)
_MAPS: dict[int, tuple[Path, str, int]] = {}


def map_ids(path: Path, dtype: str, length: int) -> torch.Tensor:
    """`length` values of `dtype` from `path` as a 1-D tensor over a private (copy-on-write) map:
    pages come from disk as they are touched and are shared with every process mapping the file."""
    array = np.memmap(path, dtype=dtype, mode="c", shape=(length,))
    ids = torch.from_numpy(array)
    address = ids.untyped_storage().data_ptr()
    _MAPS[address] = (Path(path), dtype, length)
    weakref.finalize(array, _MAPS.pop, address, None)  # unmapped: the address may be reused
    return ids


class _MappedView:
    """What a view of a mapped file pickles as; unpickling maps the file and returns the view."""

    def __init__(self, tensor: torch.Tensor, origin: tuple[Path, str, int]):
        geometry = (tuple(tensor.shape), tuple(tensor.stride()), tensor.storage_offset(), tensor.dtype)
        self.args = (*origin, *geometry)

    def __reduce__(self) -> tuple[Any, tuple]:
        return _view, self.args


def _view(
    path: Path, dtype: str, length: int, size: tuple, stride: tuple, offset: int, view_dtype: torch.dtype
) -> torch.Tensor:
    """The view again, over this process's own map (of the same element size, maybe signed)."""
    return map_ids(path, dtype, length).view(view_dtype).as_strided(size, stride, offset)


def portable(value: Any) -> Any:
    """`value`, or what it pickles as when it is a view of a mapped file."""
    if isinstance(value, torch.Tensor):
        origin = _MAPS.get(value.untyped_storage().data_ptr())
        if origin is not None:
            return _MappedView(value, origin)
    return value


class PicklesByFile:
    """A mixin for datasets over mapped ids: their tensors pickle as the file's name."""

    def __getstate__(self) -> dict[str, Any]:
        return {name: portable(value) for name, value in self.__dict__.items()}
