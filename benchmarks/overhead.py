"""What the pipeline costs over a plain PyTorch loop: same network, same data, same steps.

    python benchmarks/overhead.py [--steps 200] [--hidden 256] [--corpus quijote]
    python benchmarks/overhead.py --accelerator gpu                      # the default model
    python benchmarks/overhead.py --accelerator gpu --experiment shakespeare_char --steps 60

Runs a plain loop (random batches of the same windows, the run's optimizer, global-norm clipping)
and the full pipeline (Hydra config -> CharDataModule -> CharLM -> Lightning Trainer with the default
callbacks, progress bar and TensorBoard logger), alternately, `--repeats` times each. Both are timed
in steady state, after `--warmup` steps, and the best run of each counts (noise only ever adds time).
On a GPU the interval is timed from the device's point of view: synchronised at its two ends only,
so what the host leaves the device waiting for counts, and the pipeline's last checkpoint is written
after it. `--experiment` takes a preset's network, batch and optimizer (its carried state is left
out of both: `data.stateful=false`); `--precision` sets `trainer.precision` and the plain loop's
autocast alike. It prints training chars/s of each and, last, `ratio=<pipeline / plain>` (goal: at
least 0.95). Quijote is read from data/ or ../shared/data/ when present, otherwise the names corpus
is used; an experiment's corpus must be there.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from common import compose_train, local_corpus
from hydra.utils import instantiate

from charlm.config import plain, typed
from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.models.network import CharRNN, NetworkConfig
from charlm.training.run import build

AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def now(device: torch.device) -> float:
    """The time once the device has done all it was given."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def plain_loop(cfg, windows: torch.Tensor, vocab_size: int, steps: int, warmup: int) -> float:
    """chars/s of a textbook training loop over the same windows."""
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    torch.manual_seed(cfg.seed)
    net = CharRNN(vocab_size, typed(cfg.model, NetworkConfig)).to(device)
    optimizer = instantiate(plain(cfg.optimizer), params=net.parameters())
    dtype = AUTOCAST.get(str(cfg.trainer.precision))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    batch_size = cfg.data.batch_size
    windows = windows.to(device)
    order = torch.randperm(len(windows), device=device)
    net.train()
    for step in range(warmup + steps):
        if step == warmup:
            start = now(device)
        index = order[(step * batch_size) % len(order) :][:batch_size]
        batch = windows[index].long()
        autocast = torch.autocast(device.type, dtype) if dtype else contextlib.nullcontext()
        with autocast:
            logits, _ = net(batch[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.trainer.gradient_clip_val)
        scaler.step(optimizer)
        scaler.update()
    return steps * batch_size * (windows.shape[1] - 1) / (now(device) - start)


class SteadyStateTimer(pl.Callback):
    """Seconds from the start of step `warmup` to the end of step `warmup + steps`, the device
    synchronised at those two points only."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.last, self.start, self.end = warmup, warmup + steps, 0.0, 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.warmup:
            self.start = now(trainer.strategy.root_device)

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        if trainer.global_step == self.last:
            self.end = now(trainer.strategy.root_device)


def pipeline(cfg, steps: int, warmup: int) -> float:
    """chars/s of `train.py`'s fit loop (startup, validation, the last checkpoint and testing excluded)."""
    datamodule, model, trainer = build(cfg)
    timer = SteadyStateTimer(warmup, steps)
    trainer.callbacks.append(timer)
    trainer.fit(model, datamodule=datamodule)
    return steps * cfg.data.batch_size * cfg.data.seq_len / (timer.end - timer.start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--experiment", help="a preset of conf/experiment, e.g. shakespeare_char")
    parser.add_argument("--precision", help="trainer.precision: 32-true (default), bf16-mixed, 16-mixed")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--hidden", type=int, help="default: the model's (256) or the experiment's")
    parser.add_argument("--model", default="lstm")
    parser.add_argument("--corpus", default="quijote")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp())
    if args.experiment:
        overrides = [f"experiment={args.experiment}", "data.stateful=false"]
    else:
        overrides = [f"model={args.model}", f"data={args.corpus if local_corpus(args.corpus) else 'names'}"]
    if args.hidden:
        overrides.append(f"hidden={args.hidden}")
    if args.precision:
        overrides.append(f"trainer.precision={args.precision}")
    out_dir = Path(tempfile.mkdtemp())
    overrides += [
        f"trainer.accelerator={args.accelerator}",
        f"paths.data_dir={data_dir}",
        f"paths.output_dir={out_dir}",
        "trainer.max_epochs=null",
        f"trainer.max_steps={args.warmup + args.steps}",
        "++trainer.limit_val_batches=0",
        "++trainer.num_sanity_val_steps=0",
    ]
    cfg = compose_train(overrides)
    corpus = cfg.data.corpus.name
    if found := local_corpus(corpus):
        shutil.copy(found, data_dir)

    datamodule = CharDataModule(typed(cfg.data, DataConfig))  # the data alone, for the plain loop
    datamodule.setup()
    windows, vocab_size = datamodule.datasets["train"].windows, len(datamodule.vocab)
    where = (
        torch.cuda.get_device_name() if args.accelerator == "gpu" else f"{torch.get_num_threads()} threads"
    )
    print(
        f"{corpus}, {cfg.model.cell} hidden {cfg.model.hidden} x{cfg.model.num_layers}, "
        f"batch {cfg.data.batch_size} x {cfg.data.seq_len} chars, {cfg.trainer.precision}, "
        f"{args.steps} steps, {where}, torch {torch.__version__}",
        flush=True,
    )
    plain_speeds, pipeline_speeds = [], []
    for _ in range(args.repeats):
        plain_speeds.append(plain_loop(cfg, windows, vocab_size, args.steps, args.warmup))
        pipeline_speeds.append(pipeline(cfg, args.steps, args.warmup))
        print(
            f"  plain {plain_speeds[-1]:,.0f} chars/s   pipeline {pipeline_speeds[-1]:,.0f} chars/s",
            flush=True,
        )
    print(f"plain loop: {max(plain_speeds):,.0f} chars/s")
    print(f"pipeline:   {max(pipeline_speeds):,.0f} chars/s")
    print(f"ratio={max(pipeline_speeds) / max(plain_speeds):.3f}")
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    pl.seed_everything(0, verbose=False)
    main()
