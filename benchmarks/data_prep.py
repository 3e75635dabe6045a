"""How long a 100 MB corpus takes to become training windows, and what memory they cost.

    python benchmarks/data_prep.py [--megabytes 100]

Builds the corpus by repeating Don Quijote (from data/ or ../shared/data/; otherwise the names
corpus), then times the vocabulary, the encoding (vectorised, against a per-character Python loop
measured on a tenth of the text and scaled up) and the stride-1 windows, and prints the bytes the
ids and the windows hold: the windows are a view, so they add none.
"""

from __future__ import annotations

import argparse
import resource

import torch
from common import ROOT, local_corpus, timed

from charlm.data.corpora import CensusNames
from charlm.data.vocab import Vocabulary
from charlm.data.windows import WindowDataset


def seed_text() -> tuple[str, str]:
    path = local_corpus("quijote")
    if path:
        return "quijote", path.read_text(encoding="utf-8")
    return "names", CensusNames().read(ROOT / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()

    name, seed = seed_text()
    text = (seed * (args.megabytes * 10**6 // len(seed) + 1))[: args.megabytes * 10**6]
    print(f"corpus: {name} repeated to {len(text):,} characters")

    vocab, t_vocab = timed(Vocabulary.from_text, text)
    ids, t_encode = timed(vocab.encode, text)
    # the notebooks' way: a dict lookup per character, then an array
    index = {c: i for i, c in enumerate(vocab.chars)}
    tenth = text[: len(text) // 10]
    _, t_loop = timed(lambda: torch.tensor([index[c] for c in tenth], dtype=torch.uint8))
    windows, t_windows = timed(WindowDataset, ids, 100, 1)

    print(f"vocabulary ({len(vocab)} chars): {t_vocab:.2f} s")
    print(f"encode, vectorised:           {t_encode:.2f} s")
    print(f"encode, Python loop (scaled): {10 * t_loop:.2f} s")
    print(f"windows, seq_len 100 stride 1: {len(windows):,} in {t_windows * 1000:.2f} ms")
    extra = windows.windows.untyped_storage().nbytes() - ids.untyped_storage().nbytes()
    print(f"ids: {ids.numel() * ids.element_size() / 1e6:.0f} MB ({ids.dtype}); windows add {extra} bytes")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3:.0f} MB")
    print(f"speedup={10 * t_loop / t_encode:.1f}")


if __name__ == "__main__":
    main()
