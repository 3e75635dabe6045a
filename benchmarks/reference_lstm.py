"""experiment=quijote_cpu against a plain PyTorch loop of a 2-layer 256 LSTM, side by side.

    python benchmarks/reference_lstm.py                    # the preset, then 10 minutes of the plain loop
    python benchmarks/reference_lstm.py --minutes 1 -- trainer.max_steps=300   # a quick look

First it trains `python train.py experiment=quijote_cpu` (plus any overrides after `--`) as a user
would, then the plain loop below for `--minutes` of training on the same machine, and scores both
models' final weights with one function on the whole val split (the same 5% of the text, read as
64 streams with the state carried through each), so the two numbers differ only by training.

The plain loop is what a careful tutorial writes, with nothing from charlm: pytorch/examples
word_language_model's layout (the text cut into `batch` streams, truncated BPTT of `bptt`
characters with the state carried), an embedding of 64, a 2-layer LSTM of 256 units, Adam at a
constant 2e-3, gradient norm clipped to 1, no dropout. Its settings are the arguments below.
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import ROOT, local_corpus
from torch import nn

SPLITS = (0.9, 0.05, 0.05)  # train/val/test fractions, contiguous, as charlm's data.splits
EVAL_STREAMS = 64


class PlainLSTM(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden: int = 256, num_layers: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = nn.LSTM(embedding_dim, hidden, num_layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, state=None):
        out, state = self.rnn(self.embedding(ids), state)
        return self.head(out), state


def batchify(ids: torch.Tensor, streams: int) -> torch.Tensor:
    """[streams, length]: the text cut into `streams` contiguous pieces, read side by side."""
    length = len(ids) // streams
    return ids[: length * streams].view(streams, length)


def detach(state):
    return tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()


@torch.no_grad()
def val_loss(forward, ids: torch.Tensor, chunk: int = 100) -> float:
    """Mean next-character loss over `ids` read as EVAL_STREAMS streams, the state carried."""
    data = batchify(ids, EVAL_STREAMS)
    total, count, state = 0.0, 0, None
    for start in range(0, data.shape[1] - 1, chunk):
        inputs = data[:, start : start + chunk]
        targets = data[:, start + 1 : start + chunk + 1]
        inputs = inputs[:, : targets.shape[1]]
        logits, state = forward(inputs, state)
        total += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        count += targets.numel()
    return total / count


def train_plain(text: str, seconds: float, batch: int, bptt: int, lr: float, clip: float) -> tuple:
    """The plain loop, for `seconds` of training; returns the model, its vocabulary and step count."""
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([lookup[c] for c in text])
    train_end = round(len(ids) * SPLITS[0])
    data = batchify(ids[:train_end], batch)

    torch.manual_seed(1234)
    model = PlainLSTM(len(chars))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    steps, state, start_time = 0, None, time.perf_counter()
    while time.perf_counter() - start_time < seconds:
        for start in range(0, data.shape[1] - 1, bptt):  # one epoch
            inputs = data[:, start : start + bptt]
            targets = data[:, start + 1 : start + bptt + 1]
            inputs = inputs[:, : targets.shape[1]]
            state = None if start == 0 else detach(state)
            logits, state = model(inputs, state)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            steps += 1
            if time.perf_counter() - start_time >= seconds:
                break
    return model.eval(), lookup, steps, time.perf_counter() - start_time


def val_ids(text: str, lookup: dict[str, int]) -> torch.Tensor:
    start, end = round(len(text) * SPLITS[0]), round(len(text) * sum(SPLITS[:2]))
    return torch.tensor([lookup[c] for c in text[start:end]])


def train_preset(output: Path, overrides: list[str]) -> float:
    """`python train.py experiment=quijote_cpu`, as a user runs it; its wall time in seconds."""
    shutil.rmtree(output, ignore_errors=True)
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=quijote_cpu",
        f"hydra.run.dir={output}",
        f"paths.data_dir={ROOT / 'data'}",
        "++trainer.enable_progress_bar=false",
        *overrides,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--minutes", type=float, default=10.0, help="training time of the plain loop")
    parser.add_argument("--batch", type=int, default=64, help="plain loop: streams per batch")
    parser.add_argument("--bptt", type=int, default=100, help="plain loop: characters per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="plain loop: Adam's learning rate")
    parser.add_argument("--clip", type=float, default=1.0, help="plain loop: gradient norm clip")
    parser.add_argument("--run", type=Path, help="score this finished run instead of training the preset")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for the preset run")
    args = parser.parse_args()

    data_dir = ROOT / "data"
    found = local_corpus("quijote")
    if found and found.parent != data_dir:
        data_dir.mkdir(exist_ok=True)
        shutil.copy(found, data_dir / found.name)  # offline: train.py checks the hash all the same

    from charlm import find_checkpoint, load_model  # after the copy: nothing here needs the network

    rows = []
    run = args.run
    if run is None:
        run = ROOT / "logs" / "benchmarks" / "reference_lstm" / "quijote_cpu"
        wall = train_preset(run, args.overrides)
    else:
        wall = math.nan
    # last.ckpt, the final weights, as for the plain loop (no pick of the best by val loss)
    preset = load_model(find_checkpoint(run, which="last"))
    text = (data_dir / "quijote.txt").read_text(encoding="utf-8")
    lookup = {c: i for i, c in enumerate(preset.vocab.chars)}
    params = sum(p.numel() for p in preset.parameters())
    last = torch.load(find_checkpoint(run, which="last"), weights_only=True, map_location="cpu")
    steps = last["global_step"]
    rows.append(("experiment=quijote_cpu", params, steps, wall, val_loss(preset.net, val_ids(text, lookup))))

    model, lookup, steps, seconds = train_plain(
        text, args.minutes * 60, args.batch, args.bptt, args.lr, args.clip
    )
    params = sum(p.numel() for p in model.parameters())
    rows.append(("plain 2x256 LSTM loop", params, steps, seconds, val_loss(model, val_ids(text, lookup))))

    threads = torch.get_num_threads()
    print(
        f"\nQuijote, whole val split as {EVAL_STREAMS} streams, final weights; torch {torch.__version__}, "
        f"{threads} threads"
    )
    header = ("model", "params", "steps", "time", "val loss", "val ppl", "val bpc")
    print(f"{header[0]:<24} " + " ".join(f"{h:>9}" for h in header[1:]))
    for name, params, steps, seconds, loss in rows:
        print(
            f"{name:<24} {params:>9,} {steps:>9,} {seconds:>8.0f}s {loss:>9.4f} {math.exp(loss):>9.3f} "
            f"{loss / math.log(2):>9.3f}"
        )
    print(f"difference (preset - plain): {rows[0][4] - rows[1][4]:+.4f} nats per character")


if __name__ == "__main__":
    main()
