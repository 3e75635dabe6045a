"""Encode a corpus into its cache ahead of training, and say what the cache holds.

    python -m charlm.prepare data=quijote
    python -m charlm.prepare data=textfile data.path=~/corpus/ data.lowercase=true

Takes the same `data=`, `data.*` and `paths.*` settings as `train.py`. Training needs no separate
step (its first run builds the cache), but a 10 GB corpus is better encoded once, with a progress
bar, before a sweep or a cluster job starts. A cache already there is checked against its sha256.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from charlm import config
from charlm.cli import check_keys_are_ascii, quote_free_text
from charlm.data.cache import EncodedCorpus
from charlm.data.datamodule import STAGES, CharDataModule, DataConfig
from charlm.data.windows import split_bounds
from charlm.errors import CharLMError
from charlm.training import run_dirs

CONF = Path(__file__).resolve().parents[2] / "conf"


def data_config(overrides: list[str]) -> DataConfig:
    """The data settings `python train.py <overrides>` would use."""
    if not CONF.is_dir():
        raise CharLMError(f"no conf/ folder at {CONF}: run charlm.prepare from a clone of charlm")
    config.register()
    run_dirs.register()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return config.typed(cfg.data, DataConfig)


def prepare(settings: DataConfig) -> tuple[EncodedCorpus, float]:
    """Encode the corpus into its cache (or check the one there); the seconds it took."""
    if settings.cache_dir is None:
        raise CharLMError("paths.cache_dir=null keeps no cache to prepare: give it a folder")
    split_bounds(0, settings.splits)  # bad fractions refused before the encoding, not after
    datamodule = CharDataModule(settings)
    datamodule.prepare_data()
    started = time.perf_counter()
    encoded = datamodule.encoded(progress=True, verify=True)
    return encoded, time.perf_counter() - started


def summary(encoded: EncodedCorpus, settings: DataConfig, seconds: float) -> str:
    """What a user needs to know of the cache: where, how big, its vocabulary and split sizes."""
    meta, folder = encoded.meta, encoded.folder
    ids_bytes = (folder / "ids.bin").stat().st_size
    chars = "".join(encoded.vocab.chars)
    shown = repr(chars if len(chars) <= 120 else chars[:117] + "...")
    bounds = split_bounds(meta["characters"], settings.splits)
    splits = " / ".join(f"{name} {end - start:,}" for name, (start, end) in zip(STAGES, bounds, strict=True))
    how = f"built in {seconds:.1f} s" if encoded.built else f"already built; checked in {seconds:.1f} s"
    return "\n".join(
        [
            f"cache:      {folder}  ({how})",
            f"ids:        {ids_bytes / 1e6:,.1f} MB, {meta['dtype']}, {meta['characters']:,} characters",
            f"vocabulary: {len(encoded.vocab)} characters {shown}",
            f"splits:     {splits} characters (data.splits={list(settings.splits)})",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else argv
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print(__doc__)
        return 0
    check_keys_are_ascii(argv)
    quote_free_text(argv, paths=["data.path", "paths.data_dir", "paths.cache_dir", "paths.root_dir"])
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        settings = data_config(argv[1:])
        encoded, seconds = prepare(settings)
        print(summary(encoded, settings, seconds))
    except CharLMError as err:
        print(err, file=sys.stderr)
        return 1
    except (HydraException, OmegaConfBaseException) as err:  # an override Hydra refuses
        print(str(err).splitlines()[0], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
