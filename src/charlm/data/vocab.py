"""Character vocabulary: built from a corpus, saved beside every run and inside every checkpoint."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_only
from rich.progress import track

from charlm.errors import CharLMError

# Encoding walks the text in slices so that a large corpus never needs 4 bytes x its length at once.
_CHUNK = 1 << 24
# a pass over this many slices or more (over 33 M characters, a second or so) shows a progress bar
_PROGRESS_FROM = 3


def codepoints(text: str) -> np.ndarray:
    """The code points of `text` in the narrowest array that holds them. Python keeps a string of
    characters below 256 one byte each, below 65536 two bytes each, so the matching codec is a
    plain copy: Latin text needs 1 byte a character here, not 4."""
    try:
        return np.frombuffer(text.encode("latin-1"), dtype=np.uint8)
    except UnicodeEncodeError:
        pass
    units = text.encode("utf-16-le", "surrogatepass")
    if len(units) == 2 * len(text):  # no character beyond U+FFFF: one unit each
        return np.frombuffer(units, dtype="<u2")
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")


def mark_seen(seen: np.ndarray, points: np.ndarray) -> None:
    """Set `seen` at every code point: a count over the narrow range where it fits (fast), else a
    scatter over all of Unicode."""
    if points.dtype.itemsize <= 2:
        counts = np.bincount(points, minlength=2 ** (8 * points.dtype.itemsize))
        seen[: len(counts)] |= counts > 0
    else:
        seen[points] = True


def _codepoint_slices(text: str, task: str) -> Iterable[np.ndarray]:
    starts: Iterable[int] = range(0, len(text), _CHUNK)
    if len(starts) >= _PROGRESS_FROM and rank_zero_only.rank == 0:  # one bar, not one per DDP rank
        starts = track(starts, description=f"{task} ({len(text):,} characters)")
    for start in starts:
        yield codepoints(text[start : start + _CHUNK])


@dataclass(frozen=True)
class Vocabulary:
    """The corpus characters in code-point order, so the same corpus always gives the same ids."""

    chars: tuple[str, ...]

    def __post_init__(self) -> None:
        if list(self.chars) != sorted(set(self.chars)):
            raise ValueError("vocabulary characters must be unique and sorted")

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        """Every character that occurs in `text` (vectorised: seconds for 100 MB)."""
        seen = np.zeros(0x110000, dtype=bool)
        for cps in _codepoint_slices(text, "vocabulary"):
            mark_seen(seen, cps)
        return cls(tuple(chr(c) for c in np.flatnonzero(seen)))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def _id_dtype(self) -> type[np.integer]:
        """The smallest integer type that holds every id and one spare value that marks unknowns:
        a 100 MB corpus of up to 255 distinct characters stays 100 MB in memory."""
        return np.uint8 if len(self) < 256 else np.int32

    def encode(self, text: str) -> torch.Tensor:
        """Ids of `text` as a 1-D tensor (uint8 for up to 255 characters, else int32)."""
        dtype = self._id_dtype
        unknown = np.iinfo(dtype).max
        table = np.full(0x110000, unknown, dtype=dtype)  # code point -> id, in the output type
        table[[ord(c) for c in self.chars]] = np.arange(len(self))
        ids = np.empty(len(text), dtype=dtype)
        pos = 0
        for cps in _codepoint_slices(text, "encoding"):
            chunk = table[cps]
            if (chunk == unknown).any():
                missing = sorted({chr(c) for c in cps[chunk == unknown]})
                raise CharLMError(
                    f"characters not in the vocabulary: {''.join(missing)!r} "
                    f"(the vocabulary has {len(self)} characters)"
                )
            ids[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return torch.from_numpy(ids)

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return "".join(self.chars[i] for i in ids)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"chars": list(self.chars)}, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        return cls(tuple(json.loads(Path(path).read_text())["chars"]))
