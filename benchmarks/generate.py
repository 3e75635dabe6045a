"""Generation speed: charlm's sampler (one step per character, state carried) against the naive way.

    python benchmarks/generate.py [--hidden 512] [--layers 2] [--naive-max 1000] [--device cpu]

The notebooks generate by feeding the whole text so far back into the model for every new character,
so writing n characters costs O(n^2) steps; `charlm.generate` warms the state on the prompt once and
then costs one step per character, so its chars/s should stay flat from 100 to 10,000 characters.
The naive way is timed up to `--naive-max` characters; beyond that its time is the sum of measured
forward passes of every length it would run (forward time is linear in length, fitted on the spot),
marked "est.". Weights are random: speed does not depend on what the model learnt.
"""

from __future__ import annotations

import argparse
import string
import time

import torch
from common import timed

from charlm import CharLM, NetworkConfig, generate
from charlm.generation import _pick

LENGTHS = (100, 1000, 10000)
PROMPT = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme"


@torch.inference_mode()
def naive(model: CharLM, prompt: str, length: int) -> str:
    """Re-read the whole text for every new character, as the notebooks' predict loops do."""
    text = prompt
    for _ in range(length):
        logits, _ = model(model.vocab.encode(text).to(model.device, torch.long).unsqueeze(0))
        text += model.vocab.chars[int(_pick(logits[:, -1], 0.8, None, None))]
    return text


@torch.inference_mode()
def forward_seconds(model: CharLM, length: int, repeats: int = 3) -> float:
    ids = torch.zeros(1, length, dtype=torch.long, device=model.device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(ids)
        _sync(model)
        best = min(best, time.perf_counter() - start)
    return best


def _sync(model: CharLM) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--naive-max", type=int, default=100, help="longest naive run actually timed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    vocab = sorted(set(string.printable + "áéíóúñÁÉÍÓÚÑ¿¡üÜ"))
    model = CharLM(vocab, NetworkConfig(hidden=args.hidden, num_layers=args.layers)).to(args.device).eval()
    print(
        f"LSTM {args.layers}x{args.hidden}, vocabulary {len(vocab)}, prompt {len(PROMPT)} chars, "
        f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    generate(model, PROMPT, length=50, seed=0)  # warm-up

    # naive cost beyond --naive-max: sum over the lengths it would read of a linear fit of forward time
    short, long = len(PROMPT) + 1, len(PROMPT) + 2000
    t_short, t_long = forward_seconds(model, short), forward_seconds(model, long)
    slope = (t_long - t_short) / (long - short)

    def naive_estimate(n: int) -> float:
        return sum(t_short + slope * (len(PROMPT) + i - short) for i in range(n))

    print(f"{'length':>7} {'charlm chars/s':>15} {'naive chars/s':>15} {'speed-up':>9}")
    for length in LENGTHS:
        ours = timed(generate, model, PROMPT, length, 0.8, None, 1, 0)[1]
        if length <= args.naive_max:
            theirs, mark = timed(naive, model, PROMPT, length)[1], ""
        else:
            theirs, mark = naive_estimate(length), " est."
        speeds = f"{length / ours:>15,.0f} {length / theirs:>15,.1f}{mark:<5}"
        print(f"{length:>7} {speeds} {theirs / ours:>8,.0f}x")


if __name__ == "__main__":
    main()
