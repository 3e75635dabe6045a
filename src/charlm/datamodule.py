"""The LightningDataModule: corpus -> preprocessing -> vocabulary -> ids -> windowed splits."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import Dataset, DistributedSampler, Sampler, default_convert
from torchdata.stateful_dataloader import StatefulDataLoader

from charlm.corpora import Corpus, TextFiles
from charlm.errors import CharLMError
from charlm.preprocess import preprocess
from charlm.vocab import Vocabulary
from charlm.windows import StreamBatches, WindowDataset, split_bounds

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


class CharDataModule(pl.LightningDataModule):
    """Next-character windows of one corpus, split contiguously into train/val/test.

    Give either `corpus` (see `charlm.corpora`) or `path` (a local file or folder of .txt files,
    in `encoding`). `stride` defaults to `seq_len` (non-overlapping chunks); 1 gives every window.
    `stateful=True` lays every split out as `batch_size` parallel streams read in order instead
    (see `StreamBatches`), for a model that carries its hidden state across batches.

    A test fraction of 0 (`data.splits=[0.9,0.1,0]`) leaves out the test split and the test.

    Under DDP each rank reads its own share: of the shuffled training windows, of the validation
    and test windows (once each, so the scores reduced over the ranks are the single-process ones),
    or, stateful, `batch_size` streams of its own (N ranks read as one process with N x batch_size).

    The loaders are torchdata's StatefulDataLoader: Lightning saves their position in checkpoints,
    so a run resumed mid-epoch sees exactly the batches it had not seen yet.
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
        stateful: bool = False,
        encoding: str = "utf-8",
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
        self.corpus = corpus if corpus is not None else TextFiles(path, encoding)
        self.data_dir = Path(data_dir)
        self.seq_len, self.stride = seq_len, seq_len if stride is None else stride
        self.splits = tuple(splits)
        self.lowercase, self.letters_only = lowercase, letters_only
        self.batch_size, self.num_workers = batch_size, num_workers
        self.stateful = stateful
        self.vocab: Vocabulary | None = None
        self.ids: dict[str, torch.Tensor] = {}  # of each split
        self.datasets: dict[str, Dataset] = {}  # of each split, as one process reads it

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
            if name == "test" and not self.splits[2]:  # nanoGPT's 90/10: no test split, no test
                continue
            self.ids[name] = ids[start:end]
            self.datasets[name] = self._dataset(name)
        log.info(
            "corpus %s: %s characters, vocabulary %d, %s %s",
            self.corpus.name,
            f"{len(ids):,}",
            len(self.vocab),
            "stream batches" if self.stateful else "windows",
            " / ".join(f"{name} {len(ds):,}" for name, ds in self.datasets.items()),
        )

    @property
    def has_test_split(self) -> bool:
        return bool(self.splits[2])

    def _dataset(self, name: str, rank: int = 0, world_size: int = 1) -> Dataset:
        ids = self.ids[name]
        if self.stateful:
            streams = self.batch_size * world_size
            if len(ids) < 2 * streams:
                raise CharLMError(
                    f"the {name} split has {len(ids):,} characters, too few for {streams} "
                    f"streams of at least 2 (data.stateful=true): lower data.batch_size or change data.splits"
                )
            return StreamBatches(ids, self.batch_size, self.seq_len, rank, world_size)
        if len(ids) < self.seq_len + 1:
            raise CharLMError(
                f"the {name} split has {len(ids):,} characters, fewer than one window "
                f"(seq_len + 1 = {self.seq_len + 1}): shorten seq_len or change data.splits"
            )
        return WindowDataset(ids, self.seq_len, self.stride)

    def _sampler(self, stage: str, dataset: Dataset, rank: int, world_size: int) -> Sampler | None:
        """Training: a shuffle that is a function of (seed, epoch), so a run resumed mid-epoch replays
        the order of an unbroken one, one share per rank (Lightning sets the epoch at each epoch
        start, but only after a resumed loader has skipped what it had seen: so it is set here too).
        Evaluation under DDP: each window once, on one rank (Lightning's default sampler would pad
        the ranks' shares to one length with repeated windows, and count those twice)."""
        trainer = self.trainer
        if stage == "train":
            seed = torch.initial_seed()
            if trainer:  # rank 0's, so that every rank deals out the same order (seed=null too)
                seed = trainer.strategy.broadcast(seed)
            sampler = DistributedSampler(dataset, world_size, rank, shuffle=True, seed=seed)
            sampler.set_epoch(trainer.current_epoch if trainer else 0)
            return sampler
        if world_size == 1:
            return None
        if len(dataset) < world_size:  # a rank with nothing to score would leave the others waiting
            raise CharLMError(
                f"the {stage} split has {len(dataset)} window{'s' * (len(dataset) != 1)}, fewer than the "
                f"{world_size} DDP ranks: "
                "change data.splits or data.seq_len, or use fewer devices"
            )
        return UnrepeatedDistributedSampler(dataset, world_size, rank, shuffle=False)

    def _loader(self, stage: str) -> StatefulDataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if self.stateful:
            # this rank's streams, in order; under DDP a sampler of the DistributedSampler kind, or
            # Lightning would deal every rank each world_size-th batch, whose rows do not follow on
            dataset = self._dataset(stage, rank, world_size)
            sampler = UnrepeatedDistributedSampler(dataset, 1, 0, shuffle=False) if world_size > 1 else None
        else:
            dataset = self.datasets[stage]
            sampler = self._sampler(stage, dataset, rank, world_size)
        return StatefulDataLoader(
            dataset,
            batch_size=None if self.stateful else self.batch_size,  # stream batches come whole, in order
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=default_convert,  # __getitems__ already returns the stacked batch
            generator=torch.Generator(),  # leaves the global random state (dropout) to the model
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test")
