"""Training throughput against DDP devices and batch size, through the whole pipeline.

    python benchmarks/scaling.py                                   # CPU: 1 and 2 processes (gloo)
    python benchmarks/scaling.py --accelerator gpu --devices 1,2,4 --batch-sizes 64,256,1024

Each cell of the table is one real `train.py` run (`trainer.strategy=ddp` when devices > 1) of
`--steps` training steps with validation off, its chars/s read back from its TensorBoard events as
the throughput monitor logged them: characters of every rank over training time, from step
`--warmup` to the last (process start-up, data preparation and the first steps, which include
cuDNN's and gloo's set-up, left out).
`data.batch_size` is per device, as in Lightning: N devices train on N x batch_size windows a step.
On a CPU, N processes split its cores, so the figures show DDP's cost there, not a speed-up.
Runs go to logs/benchmarks/scaling/.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys

import torch
from common import ROOT, local_corpus
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def machine(accelerator: str) -> str:
    if accelerator == "gpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch {torch.__version__}"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"


def run(devices: int, batch_size: int, args: argparse.Namespace, data: list[str]) -> float:
    """chars/s of one training run, all ranks together, from its events."""
    out = ROOT / "logs" / "benchmarks" / "scaling" / f"{args.accelerator}-{devices}x{batch_size}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        *data,
        f"hidden={args.hidden}",
        f"trainer.accelerator={args.accelerator}",
        f"trainer.devices={devices}",
        f"++trainer.strategy={'ddp' if devices > 1 else 'auto'}",
        f"data.batch_size={batch_size}",
        f"++trainer.max_steps={args.steps}",
        "++trainer.limit_val_batches=0",
        "++trainer.limit_test_batches=1",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_checkpointing=false",
        "callbacks.model_checkpoint=null",
        "callbacks.step_checkpoint=null",
        "callbacks.sample_text=null",
        # throughput points every `warmup` steps: chars/s from the first to the last
        f"++trainer.log_every_n_steps={args.warmup}",
        f"hydra.run.dir={out}",
        *args.overrides,
    ]
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"run failed ({devices} devices, batch {batch_size}):\n{result.stderr[-2000:]}")
    events = EventAccumulator(str(out))
    events.Reload()
    chars, seconds = events.Scalars("train/lengths"), events.Scalars("train/time")  # rank 0's
    return devices * (chars[-1].value - chars[0].value) / (seconds[-1].value - seconds[0].value)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"])
    parser.add_argument("--devices", default="1,2", help="comma-separated device counts")
    parser.add_argument("--batch-sizes", default="32,64,128", help="comma-separated, per device")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=60, help="training steps of each run")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of chars/s")
    parser.add_argument("overrides", nargs="*", help="more train.py overrides, e.g. model=gru")
    args = parser.parse_args()

    corpus = local_corpus("quijote")
    data = ["data=textfile", f"data.path={corpus}"] if corpus else ["data=names"]
    devices = [int(d) for d in args.devices.split(",")]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{machine(args.accelerator)}; {corpus.name if corpus else 'names'}, LSTM hidden {args.hidden},")
    print(f"{args.steps} steps a run, chars/s over the last {args.steps - args.warmup}\n")
    print("| devices | batch/device | global batch | chars/s | vs 1 device |")
    print("|--:|--:|--:|--:|--:|")
    for batch_size in batch_sizes:
        single = None
        for n in devices:
            speed = run(n, batch_size, args, data)
            single = single or speed
            row = [n, batch_size, n * batch_size, f"{speed:,.0f}", f"{speed / single:.2f}"]
            print("| " + " | ".join(map(str, row)) + " |", flush=True)


if __name__ == "__main__":
    main()
