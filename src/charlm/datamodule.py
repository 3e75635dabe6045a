"""The LightningDataModule: corpus -> preprocessing -> vocabulary -> ids -> windowed splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader, default_convert

from charlm.corpora import Corpus, TextFiles
from charlm.errors import CharLMError
from charlm.preprocess import preprocess
from charlm.vocab import Vocabulary
from charlm.windows import WindowDataset, split_bounds

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


class CharDataModule(pl.LightningDataModule):
    """Next-character windows of one corpus, split contiguously into train/val/test.

    Give either `corpus` (see `charlm.corpora`) or `path` (a local UTF-8 file or folder of .txt
    files). `stride` defaults to `seq_len` (non-overlapping chunks); 1 gives every window.
    """

    def __init__(
        self,
        corpus: Corpus | None = None,
        path: str | None = None,
        data_dir: str | Path = "data",
        seq_len: int = 100,
        stride: int | None = None,
        splits: Sequence[float] = (0.9, 0.05, 0.05),
        lowercase: bool = False,
        letters_only: bool = False,
        batch_size: int = 64,
        num_workers: int = 0,
    ):
        super().__init__()
        if corpus is None and path is None:
            raise CharLMError(
                "no corpus: give data.path=<UTF-8 file or folder of .txt files> with data=textfile, "
                "or choose a corpus (data=quijote, tinyshakespeare, names)"
            )
        if corpus is not None and path is not None:
            raise CharLMError(f"data.path is set but so is corpus '{corpus.name}': use data=textfile")
        if len(splits) != 3:
            raise CharLMError(f"data.splits must be three fractions (train, val, test), got {splits}")
        if batch_size < 1:
            raise CharLMError(f"data.batch_size must be at least 1, got {batch_size}")
        self.save_hyperparameters(ignore=["corpus"], logger=False)  # kept in checkpoints
        self.corpus = corpus if corpus is not None else TextFiles(path)
        self.data_dir = Path(data_dir)
        self.seq_len, self.stride = seq_len, seq_len if stride is None else stride
        self.splits = tuple(splits)
        self.lowercase, self.letters_only = lowercase, letters_only
        self.batch_size, self.num_workers = batch_size, num_workers
        self.vocab: Vocabulary | None = None
        self.datasets: dict[str, WindowDataset] = {}

    def prepare_data(self) -> None:
        self.corpus.fetch(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        text = preprocess(self.corpus.read(self.data_dir), self.lowercase, self.letters_only)
        if not text:
            raise CharLMError(f"corpus '{self.corpus.name}' is empty")
        self.vocab = Vocabulary.from_text(text)
        ids = self.vocab.encode(text)
        for name, (start, end) in zip(STAGES, split_bounds(len(ids), self.splits), strict=True):
            if end - start < self.seq_len + 1:
                raise CharLMError(
                    f"the {name} split has {end - start:,} characters, fewer than one window "
                    f"(seq_len + 1 = {self.seq_len + 1}): shorten seq_len or change data.splits"
                )
            self.datasets[name] = WindowDataset(ids[start:end], self.seq_len, self.stride)
        log.info(
            "corpus %s: %s characters, vocabulary %d, windows %s",
            self.corpus.name,
            f"{len(ids):,}",
            len(self.vocab),
            " / ".join(f"{name} {len(ds):,}" for name, ds in self.datasets.items()),
        )

    def _loader(self, stage: str) -> DataLoader:
        return DataLoader(
            self.datasets[stage],
            batch_size=self.batch_size,
            shuffle=stage == "train",
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=default_convert,  # __getitems__ already returns the stacked batch
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
