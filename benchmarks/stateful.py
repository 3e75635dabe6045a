"""Stateful (truncated BPTT, state carried across batches) against stateless training, same steps.

    python benchmarks/stateful.py [--steps 1570] [--data tinyshakespeare] [extra overrides ...]

Trains the default model twice through the whole pipeline, once with `data.stateful=false`
(shuffled independent windows, each read from a zero state) and once with `data.stateful=true`
(`batch_size` streams read in order, the hidden state carried from batch to batch), for the same
number of steps of the same batch shape. Then scores each one's best checkpoint on the whole val
split both ways, because the two evaluations differ: windows read from a zero state give every
character at most `seq_len` characters of context, streams give it all the text before it.
Runs go to logs/benchmarks/stateful/ and show up in TensorBoard with the rest.
"""

from __future__ import annotations

import argparse
import math
import shutil
from dataclasses import replace

import pytorch_lightning as pl
from common import ROOT, compose_train, local_corpus, timed

from charlm import CharDataModule, DataConfig, find_checkpoint, load_model
from charlm.config import typed
from charlm.training.run import train


def val_loss(model: pl.LightningModule, datamodule: CharDataModule) -> float:
    """Loss over the whole val split in the datamodule's layout."""
    model.carried.enabled = datamodule.config.stateful  # carry the state through the streams, or not
    quiet = {"logger": False, "enable_progress_bar": False, "enable_checkpointing": False}
    trainer = pl.Trainer(accelerator="auto", devices=1, **quiet)
    return trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--steps", type=int, default=1570, help="training steps of each run")
    parser.add_argument("--data", default="tinyshakespeare")
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides for both runs")
    args = parser.parse_args()

    data_dir = ROOT / "data"
    found = local_corpus(args.data)
    if found and found.parent != data_dir:
        data_dir.mkdir(exist_ok=True)
        shutil.copy(found, data_dir / found.name)  # offline: the hash is checked all the same

    common = [
        f"data={args.data}",
        f"paths.data_dir={data_dir}",
        f"++trainer.max_steps={args.steps}",
        "trainer.max_epochs=null",
        "++trainer.enable_progress_bar=false",
        *args.overrides,
    ]
    results = {}
    for stateful in (False, True):
        name = "stateful" if stateful else "stateless"
        output = ROOT / "logs" / "benchmarks" / "stateful" / name
        shutil.rmtree(output, ignore_errors=True)
        cfg = compose_train([*common, f"data.stateful={stateful}", f"paths.output_dir={output}"])
        _, seconds = timed(train, cfg)
        model = load_model(find_checkpoint(output))
        scores = {}
        for layout in (False, True):
            datamodule = CharDataModule(replace(typed(cfg.data, DataConfig), stateful=layout))
            scores[layout] = val_loss(model, datamodule)
        results[name] = (scores, seconds)

    print(f"\n{args.data}, {args.steps} steps each, overrides: {' '.join(args.overrides) or 'none'}")
    print(f"{'training':>10} {'val ppl, windows':>17} {'val ppl, streams':>17} {'wall':>7}")
    for name, (scores, seconds) in results.items():
        print(f"{name:>10} {math.exp(scores[False]):>17.3f} {math.exp(scores[True]):>17.3f} {seconds:>6.0f}s")


if __name__ == "__main__":
    main()
