"""The LightningDataModule: a corpus encoded once (charlm.data.cache) -> ids -> windowed splits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import Dataset, Sampler, default_convert
from torchdata.stateful_dataloader import StatefulDataLoader

from charlm.data.cache import EncodedCorpus, TextSettings, encode_once
from charlm.data.corpora import Corpus, corpus_of
from charlm.data.mapped import portable
from charlm.data.preprocess import FORMS
from charlm.data.sampling import EvaluationShare, ShuffledWindows
from charlm.data.vocab import Vocabulary
from charlm.data.windows import StreamBatches, WindowDataset, split_bounds
from charlm.errors import CharLMError
from charlm.resumable import resumable

log = logging.getLogger(__name__)

STAGES = ("train", "val", "test")


@dataclass(kw_only=True)
class DataConfig:
    """Every setting of the data (`data.<name>` on the command line), with its default.

    The one definition: `python train.py` composes it (conf/data/ picks the corpus), Hydra checks
    overrides against its types, and a checkpoint is refused for resuming when a field marked
    `resume` differs (`charlm.training.resume`).
    """

    # a `_target_` node that builds the corpus (see charlm.data.corpora): conf/data/*.yaml set it
    corpus: Any = None
    # a local UTF-8 file or a folder of .txt files, for data=textfile
    path: str | None = None
    # of data.path's files: latin-1 or cp1252 for older Spanish texts
    encoding: str = "utf-8"
    # the download cache (paths.data_dir)
    data_dir: str = "data"
    # where each corpus is encoded once and memory-mapped by every later run (paths.cache_dir);
    # null: encode it in memory at every run
    cache_dir: str | None = "data/cache"
    seq_len: int = resumable(100)
    # windows start every `stride` characters; null: seq_len (non-overlapping chunks); 1: every window
    stride: int | None = resumable(None)
    splits: list[float] = resumable(default_factory=lambda: [0.9, 0.05, 0.05])
    lowercase: bool = False
    # keep letters (accents included) and collapse everything else to one space
    letters_only: bool = False
    # Unicode form of the text, and of prompts: NFC writes an accented letter as one character even
    # where the file has a letter plus a combining accent; null keeps the text as the file has it
    normalize: str | None = "NFC"
    batch_size: int = resumable(64)
    # resumable: torchdata's loader saves its position in a format of its own for each worker count
    num_workers: int = resumable(0)
    # batch_size parallel streams read in order (row i of each batch continues row i of the last),
    # the model carrying its hidden state across batches: truncated BPTT; stride is then unused
    stateful: bool = resumable(False)


class CharDataModule(pl.LightningDataModule):
    """Next-character windows of one corpus, split contiguously into train/val/test.

    The corpus is `config.corpus` (see `charlm.data.corpora`), or `config.path` (a local file or
    folder of .txt files, in `config.encoding`), or a Corpus object given as `corpus`. `stateful`
    lays every split out as `batch_size` parallel streams read in order instead of windows (see
    `StreamBatches`), for a model that carries its hidden state across batches.

    A test fraction of 0 (`data.splits=[0.9,0.1,0]`) leaves out the test split and the test.

    Under DDP each rank reads its own share: of the shuffled training windows, of the validation
    and test windows (once each, so the scores reduced over the ranks are the single-process ones),
    or, stateful, `batch_size` streams of its own (N ranks read as one process with N x batch_size).

    The loaders are torchdata's StatefulDataLoader: Lightning saves their position in checkpoints,
    so a run resumed mid-epoch sees exactly the batches it had not seen yet.
    """

    def __init__(self, config: DataConfig | None = None, corpus: Corpus | None = None):
        super().__init__()
        config = config or DataConfig()
        if len(config.splits) != 3:
            raise CharLMError(f"data.splits must be three fractions (train, val, test), got {config.splits}")
        if config.batch_size < 1:
            raise CharLMError(f"data.batch_size must be at least 1, got {config.batch_size}")
        if config.num_workers < 0:
            raise CharLMError(
                f"data.num_workers must be 0 (no worker processes) or more, got {config.num_workers}"
            )
        if config.normalize not in (None, *FORMS):
            raise CharLMError(
                f"data.normalize must be one of {', '.join(FORMS)} or null, got {config.normalize}"
            )
        self.corpus = corpus_of(config if corpus is None else replace(config, corpus=corpus))
        # the stride in effect, so that a checkpoint holds the number its windows were cut with
        stride = config.seq_len if config.stride is None else config.stride
        self.config = replace(config, stride=stride, splits=list(config.splits))
        self.data_dir = Path(config.data_dir).expanduser()
        # kept in checkpoints: what the saved position in the data means
        settings = {f.name: getattr(self.config, f.name) for f in fields(self.config) if f.name != "corpus"}
        self.save_hyperparameters(settings, logger=False)
        self.vocab: Vocabulary | None = None
        self.ids: dict[str, torch.Tensor] = {}  # of each split
        self.datasets: dict[str, Dataset] = {}  # of each split, as one process reads it

    def prepare_data(self) -> None:
        self.corpus.fetch(self.data_dir)

    def encoded(self, progress: bool | None = None, verify: bool = False) -> EncodedCorpus:
        """The corpus as ids: mapped from its cache in data.cache_dir, built there the first time
        (see `charlm.data.cache.encode_once` for `progress` and `verify`)."""
        config = self.config
        settings = TextSettings(config.lowercase, config.letters_only, config.normalize)
        cache_dir = None if config.cache_dir is None else Path(config.cache_dir)
        return encode_once(self.corpus, self.data_dir, settings, cache_dir, progress, verify)

    def setup(self, stage: str | None = None) -> None:
        if self.vocab is not None:
            return
        config = self.config
        encoded = self.encoded()
        self.vocab, ids = encoded.vocab, encoded.ids
        for name, (start, end) in zip(STAGES, split_bounds(len(ids), self.config.splits), strict=True):
            if name == "test" and not self.config.splits[2]:  # nanoGPT's 90/10: no test split, no test
                continue
            self.ids[name] = ids[start:end]
            self.datasets[name] = self._dataset(name)
        if not config.stateful and config.stride > config.seq_len:
            log.warning(
                "data.stride=%d is longer than data.seq_len=%d: the windows skip %.0f%% of the text, "
                "which is never trained on (a stride up to seq_len covers it all)",
                config.stride,
                config.seq_len,
                100 * (1 - config.seq_len / config.stride),
            )
        log.info(
            "corpus %s: %s characters, vocabulary %d, %s %s (%s)",
            self.corpus.name,
            f"{len(ids):,}",
            len(self.vocab),
            "stream batches" if self.config.stateful else "windows",
            " / ".join(f"{name} {len(ds):,}" for name, ds in self.datasets.items()),
            f"mapped from {encoded.folder}" if encoded.folder else "encoded in memory",
        )

    @property
    def has_test_split(self) -> bool:
        return bool(self.config.splits[2])

    def _dataset(self, name: str, rank: int = 0, world_size: int = 1) -> Dataset:
        ids, seq_len, batch_size = self.ids[name], self.config.seq_len, self.config.batch_size
        if self.config.stateful:
            streams = batch_size * world_size
            if len(ids) < 2 * streams:
                raise CharLMError(
                    f"the {name} split has {len(ids):,} characters, too few for {streams} "
                    f"streams of at least 2 (data.stateful=true): lower data.batch_size or change data.splits"
                )
            return StreamBatches(ids, batch_size, seq_len, rank, world_size)
        if len(ids) < seq_len + 1:
            raise CharLMError(
                f"the {name} split has {len(ids):,} characters, fewer than one window "
                f"(seq_len + 1 = {seq_len + 1}): shorten data.seq_len or change data.splits"
            )
        return WindowDataset(ids, seq_len, self.config.stride)

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
            sampler = ShuffledWindows(dataset, world_size, rank, shuffle=True, seed=seed)
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
        return EvaluationShare(dataset, world_size, rank, shuffle=False)

    def _loader(self, stage: str) -> StatefulDataLoader:
        trainer = self.trainer
        rank, world_size = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        stateful = self.config.stateful
        if stateful:
            # this rank's streams, in order; under DDP a sampler of the DistributedSampler kind, or
            # Lightning would deal every rank each world_size-th batch, whose rows do not follow on
            dataset = self._dataset(stage, rank, world_size)
            sampler = EvaluationShare(dataset, 1, 0, shuffle=False) if world_size > 1 else None
        elif stage not in self.datasets:  # data.splits=[0.9,0.1,0]: no test split, the run was not tested
            raise CharLMError(f"there is no {stage} split: data.splits={self.config.splits} gives it no text")
        else:
            dataset = self.datasets[stage]
            sampler = self._sampler(stage, dataset, rank, world_size)
        return StatefulDataLoader(
            dataset,
            batch_size=None if stateful else self.config.batch_size,  # stream batches come whole, in order
            sampler=sampler,
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
            # page-locked batches: Lightning's copy to a GPU is then asynchronous; from pageable
            # memory the host would wait for the device's queue at every batch
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            collate_fn=default_convert,  # __getitems__ already returns the stacked batch
            generator=torch.Generator(),  # leaves the global random state (dropout) to the model
        )

    def train_dataloader(self) -> StatefulDataLoader:
        return self._loader("train")

    def val_dataloader(self) -> StatefulDataLoader:
        return self._loader("val")

    def test_dataloader(self) -> StatefulDataLoader:
        return self._loader("test")

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (a ddp_spawn rank, after `setup`): the splits as views of the cache's file, which
        the receiving process maps, not torch's shared-memory copy of the whole corpus."""
        return {**self.__dict__, "ids": {name: portable(ids) for name, ids in self.ids.items()}}

    def state_dict(self) -> dict[str, Any]:
        """Kept in checkpoints by Lightning: the characters of each split, which the loader's saved
        position counts in, so that a resume on another corpus is refused before fitting
        (`charlm.training.resume`) instead of failing, or reading other batches, mid-restore."""
        return {"split_chars": {name: len(ids) for name, ids in self.ids.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: the record is compared with this run's corpus before fitting."""
