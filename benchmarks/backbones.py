"""Training throughput of torch.nn's fused layers against the cells written from scratch.

    python benchmarks/backbones.py                                  # CPU, the table in docs/backbones.md
    python benchmarks/backbones.py --device cuda --batch 64 --seq-len 100
    python benchmarks/backbones.py --compile                        # and the compiled scratch cells

For rnn, lstm and gru at each hidden size: chars/s of one forward and backward pass (cross-entropy
over the vocabulary, as in training) of the same network (`CharRNN`, embedding 64, one layer by
default) with the fused layer (`model.impl=fused`: cuDNN on GPU; on CPU oneDNN for the LSTM, ATen's
loop of matrix products for the RNN and GRU), with the cells of
`charlm.models.cells` (`model.impl=scratch`: one Python step per character), and, with `--compile`,
with those cells under torch.compile (`model.compile=true`: Dynamo unrolls the time loop into one
graph, whose steps inductor fuses into a few kernels each). The compilation takes 10-50 s per row
and grows with `--seq-len`, hence the flag: without it the defaults end within a minute or two, on a
CPU or a GPU. Each is timed for about `--seconds` after a warm-up pass (for the compiled one, the
compilation, printed too). They are measured side by side, in turn, on the same batch; each row is
printed as soon as it is measured.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from charlm.models.network import CharRNN, NetworkConfig

VOCAB = 100


def chars_per_sec(net: CharRNN, ids: torch.Tensor, seconds: float) -> tuple[float, float]:
    """(chars/s of forward + backward, seconds of the first pass)."""

    def step() -> None:
        logits, _ = net(ids[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
        if ids.is_cuda:
            torch.cuda.synchronize()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return ids[:, 1:].numel() * steps / (time.perf_counter() - start), first


def machine(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    threads = torch.get_num_threads()
    return f"{platform.machine()}, {os.cpu_count()} cores ({threads} threads), torch {torch.__version__}"


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cells", default="rnn,lstm,gru")
    parser.add_argument("--hidden", default="32,256,1024", help="comma-separated hidden sizes")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0, help="timed per measurement, after warm-up")
    parser.add_argument("--compile", action="store_true", help="also time the scratch cells compiled")
    args = parser.parse_args()
    impls = ("fused", "scratch", "compiled") if args.compile else ("fused", "scratch")

    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (args.batch, args.seq_len + 1), device=args.device)
    print(f"{machine(args.device)}; batch {args.batch} x {args.seq_len} characters, {args.layers} layer(s)\n")
    header = ["cell", "hidden", "fused chars/s", "scratch chars/s", "fused / scratch"]
    if args.compile:
        header += ["compiled scratch chars/s", "compiled / scratch", "compile s"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "--:|" * (len(header) - 1), flush=True)
    for cell in args.cells.split(","):
        for hidden in (int(h) for h in args.hidden.split(",")):
            speeds, compile_seconds = {}, 0.0
            for impl in impls:
                torch.manual_seed(0)  # the same weights for all three
                layers = "fused" if impl == "fused" else "scratch"
                net = CharRNN(
                    VOCAB, NetworkConfig(cell=cell, hidden=hidden, num_layers=args.layers, impl=layers)
                )
                net.to(args.device)
                if impl == "compiled":
                    torch.compiler.reset()  # or Dynamo stops compiling forward after 8 shapes
                    net.compile()  # as model.compile=true does: the whole network, the time loop unrolled
                speeds[impl], first = chars_per_sec(net, ids, args.seconds)
                if impl == "compiled":
                    compile_seconds = first
            fused, scratch = speeds["fused"], speeds["scratch"]
            row = [cell, hidden, f"{fused:,.0f}", f"{scratch:,.0f}", f"{fused / scratch:.1f}x"]
            if args.compile:
                compiled = speeds["compiled"]
                row += [f"{compiled:,.0f}", f"{compiled / scratch:.2f}x", f"{compile_seconds:.0f}"]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
