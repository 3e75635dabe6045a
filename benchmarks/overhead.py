"""What the pipeline costs over a plain PyTorch loop: same model, same data, same steps.

    python benchmarks/overhead.py [--steps 200] [--hidden 256] [--corpus quijote]

Runs a plain loop (random batches of the same windows, Adam, global-norm clipping) and the full
pipeline (Hydra config -> CharDataModule -> CharLM -> Lightning Trainer with the default
callbacks and TensorBoard logger), alternately, `--repeats` times each. Both are timed in steady
state, after `--warmup` steps, and the best run of each counts (noise only ever adds time). It
prints training chars/s of each and, last, `ratio=<pipeline / plain>` (goal: at least 0.95).
Quijote is read from data/ or ../shared/data/ when present; otherwise the names corpus is used.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from common import ROOT, local_corpus
from hydra import compose, initialize_config_dir

from charlm.config import register, typed
from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.models.network import CharRNN, NetworkConfig
from charlm.training import run_dirs
from charlm.training.run import build


def plain_loop(cfg, windows: torch.Tensor, vocab_size: int, steps: int, warmup: int) -> float:
    """chars/s of a textbook training loop over the same windows."""
    torch.manual_seed(cfg.seed)
    net = CharRNN(vocab_size, typed(cfg.model, NetworkConfig))
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optimizer.lr)
    batch_size = cfg.data.batch_size
    order = torch.randperm(len(windows))
    net.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        index = order[(step * batch_size) % len(order) :][:batch_size]
        batch = windows[index].long()
        logits, _ = net(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
    elapsed = time.perf_counter() - start
    return steps * batch_size * (windows.shape[1] - 1) / elapsed


class SteadyStateTimer(pl.Callback):
    """Seconds from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        self.end = time.perf_counter()


def pipeline(cfg, steps: int, warmup: int) -> float:
    """chars/s of `train.py`'s fit loop (startup, validation and testing excluded)."""
    datamodule, model, trainer = build(cfg)
    timer = SteadyStateTimer(warmup)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=datamodule)
    return steps * cfg.data.batch_size * cfg.data.seq_len / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--corpus", default="quijote")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp())
    corpus = args.corpus
    found = local_corpus(corpus)
    if found:
        shutil.copy(found, data_dir)
    else:
        corpus = "names"
    out_dir = Path(tempfile.mkdtemp())
    overrides = [
        f"data={corpus}",
        f"model={args.model}",
        f"hidden={args.hidden}",
        "trainer=cpu",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        f"++trainer.max_steps={args.warmup + args.steps}",
        "++trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0",
    ]
    register()
    run_dirs.register()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)

    datamodule = CharDataModule(
        typed(cfg.data, DataConfig)
    )  # the data alone: no trainer or logger for the plain loop
    datamodule.setup()
    windows, vocab_size = datamodule.datasets["train"].windows, len(datamodule.vocab)
    print(
        f"{corpus}, {args.model} hidden {args.hidden} x{cfg.model.num_layers}, "
        f"batch {cfg.data.batch_size} x {cfg.data.seq_len} chars, {args.steps} steps, "
        f"{torch.get_num_threads()} threads"
    )
    plain, piped = [], []
    for _ in range(args.repeats):
        plain.append(plain_loop(cfg, windows, vocab_size, args.steps, args.warmup))
        piped.append(pipeline(cfg, args.steps, args.warmup))
        print(f"  plain {plain[-1]:,.0f} chars/s   pipeline {piped[-1]:,.0f} chars/s")
    print(f"plain loop: {max(plain):,.0f} chars/s")
    print(f"pipeline:   {max(piped):,.0f} chars/s")
    print(f"ratio={max(piped) / max(plain):.3f}")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
