"""One call that checks the GPU path and prints its figures: `make gpu-check` (8 minutes at most).

    python benchmarks/gpu_check.py [--budget 480] [--only overhead,precision]

Runs, each part in its own process with its own timeout (and none past `--budget` seconds in all:
the parts left when it runs out are listed as skipped; `--only` runs those), printing each part's
output as it comes and one table at the end:

1. `tests/test_gpu.py`: torch's sync debug mode over a real run, page-locked batches, weight drop on cuDNN;
2. `experiment=shakespeare_char` in full: best and final val loss, time;
3. the user's command, `train.py model=lstm data=quijote -m hidden=32,256`: val loss and time per job;
4. `benchmarks/overhead.py --accelerator gpu` for the default model and for shakespeare_char's network;
5. the user's command with `hydra/launcher=parallel`, both jobs on the GPU at once;
6. `trainer=ddp` on one GPU (on two where there are two): the NCCL path;
7. `benchmarks/precision.py` for both models, `benchmarks/backbones.py` (fused and scratch),
   `benchmarks/generate.py` on the GPU, and last the compiled scratch cells (one row).

The corpora must be in data/ (quijote.txt, tinyshakespeare.txt): a GPU machine without network
cannot download them. ../shared/gpu/README.md says how to carry them and the few packages such a
machine lacks; for the parallel launcher carry its plugin too, from a machine with network:
`pip download --no-deps hydra-joblib-launcher joblib -d .gpu/wheels`.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import ROOT

from charlm.report import read_run

PYTHON = sys.executable
USER_COMMAND = ["model=lstm", "data=quijote", "-m", "hidden=32,256"]


@dataclass
class Part:
    name: str
    command: list[str]
    timeout: float
    summarize: Callable[[str, Path], str]  # (output, its log dir) -> the table's cell
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gpu-check-")))


def train(*overrides: str) -> list[str]:
    return [PYTHON, str(ROOT / "train.py"), f"paths.data_dir={ROOT / 'data'}", *overrides]


def bench(script: str, *args: str) -> list[str]:
    return [PYTHON, str(ROOT / "benchmarks" / script), *args]


def lines_like(pattern: str) -> Callable[[str, Path], str]:
    """The output's lines that match `pattern`, joined."""
    return lambda output, _: "; ".join(m.strip() for m in re.findall(pattern, output, re.M)) or "no figures"


def sweep_jobs(output: str, log_dir: Path) -> str:
    (sweep,) = (log_dir / "multiruns").iterdir()
    runs = [read_run(job) for job in sorted(sweep.iterdir()) if job.is_dir() and not job.name.startswith(".")]
    return "; ".join(f"{r.name}: val loss {r.val_loss:.4f}, {r.wall_time:.0f} s" for r in runs)


def one_run(output: str, log_dir: Path) -> str:
    (run_dir,) = (log_dir / "runs").iterdir()
    run = read_run(run_dir)
    final = math.log(run.val_ppl_curve[-1][1]) if run.val_ppl_curve else math.nan
    speed = f", {run.chars_per_sec:,.0f} chars/s" if run.chars_per_sec else ""
    return f"best val loss {run.val_loss:.4f}, final {final:.4f}{speed}, {run.wall_time:.0f} s"


def parts() -> list[Part]:
    devices = min(torch.cuda.device_count(), 2) or 1
    ratio = lines_like(r"^(?:plain loop|pipeline|ratio).*$")
    table_rows = lines_like(r"^\| (?!precision|cell|---).*\|$")
    # the most telling first: what runs out of the budget is skipped, and says so
    return [
        Part(
            "GPU-only tests",
            [PYTHON, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_gpu.py")],
            120,
            lines_like(r"^(?:FAILED .*|=* ?\d+ (?:passed|failed).*)$"),
        ),
        Part("experiment=shakespeare_char", train("experiment=shakespeare_char"), 300, one_run),
        Part("user command, basic launcher", train(*USER_COMMAND, "trainer=gpu"), 150, sweep_jobs),
        Part(
            "overhead, default model",
            bench("overhead.py", "--accelerator", "gpu", "--repeats", "2"),
            90,
            ratio,
        ),
        Part(
            "overhead, shakespeare_char network",
            bench("overhead.py", "--accelerator", "gpu", "--experiment", "shakespeare_char", "--steps", "60")
            + ["--repeats", "2"],
            90,
            ratio,
        ),
        Part(
            "user command, parallel launcher",
            train(*USER_COMMAND, "trainer=gpu", "hydra/launcher=parallel"),
            150,
            sweep_jobs,
        ),
        Part(
            f"trainer=ddp, {devices} GPU(s)",
            train("data=quijote", "trainer=ddp", f"trainer.devices={devices}", "trainer.max_epochs=1"),
            90,
            one_run,
        ),
        Part("precision, default model", bench("precision.py", "--steps", "150"), 90, table_rows),
        Part(
            "precision, shakespeare_char",
            bench("precision.py", "--experiment", "shakespeare_char", "--steps", "60"),
            120,
            table_rows,
        ),
        Part(
            "backbones (fused, scratch)",
            bench(
                "backbones.py",
                "--device",
                "cuda",
                "--cells",
                "lstm,gru",
                "--hidden",
                "256,1024",
                "--seconds",
                "1",
            ),
            60,
            table_rows,
        ),
        Part("generation", bench("generate.py", "--device", "cuda"), 45, lines_like(r"^\s+\d[\d,]* .*x$")),
        Part(
            "backbones (compiled)",
            bench("backbones.py", "--device", "cuda", "--cells", "lstm", "--hidden", "256", "--compile")
            + ["--seconds", "1"],
            120,
            table_rows,
        ),
    ]


def echo(stream: Any, into: list[str]) -> None:
    for line in stream:
        print("  " + line, end="", flush=True)
        into.append(line)


def run(part: Part, timeout: float) -> tuple[str, str, float]:
    """(status, summary, seconds) of one part, its output printed as it comes."""
    print(f"\n=== {part.name} (timeout {timeout:.0f} s)\n$ {' '.join(part.command)}", flush=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    command = (
        [*part.command, f"paths.log_dir={part.log_dir}"] if "train.py" in part.command[1] else part.command
    )
    output: list[str] = []
    with subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as process:
        # read in a thread: a part that hangs without a word must still meet its timeout
        reader = threading.Thread(target=echo, args=(process.stdout, output), daemon=True)
        reader.start()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # DDP ranks and launcher workers with it
            return "timed out", "", time.monotonic() - start
        reader.join()
    seconds = time.monotonic() - start
    if process.returncode != 0:
        return f"failed ({process.returncode})", output[-1].strip()[:200] if output else "", seconds
    try:
        return "ok", part.summarize("".join(output), part.log_dir), seconds
    except Exception as err:  # a figure not found: say so, and go on
        return "ok", f"figures not read: {err}", seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget", type=float, default=480, help="seconds for all parts together")
    parser.add_argument("--only", help="comma-separated words; runs the parts whose name has one")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU here")
    for corpus in ("quijote", "tinyshakespeare"):
        if not (ROOT / "data" / f"{corpus}.txt").exists():
            print(f"gpu_check: data/{corpus}.txt is missing: parts that need it will fail (no network here?)")
    print(f"{torch.cuda.get_device_name()} x{torch.cuda.device_count()}, torch {torch.__version__}, "
          f"cuDNN {torch.backends.cudnn.version()}")  # fmt: skip
    selected = [p for p in parts() if not args.only or any(w in p.name for w in args.only.split(","))]
    started, rows = time.monotonic(), []
    for part in selected:
        left = args.budget - (time.monotonic() - started)
        if left < 20:
            rows.append((part.name, "skipped (budget spent)", "", 0.0))
            continue
        status, summary, seconds = run(part, min(part.timeout, left))
        rows.append((part.name, status, summary, seconds))
    total = time.monotonic() - started
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, {total:.0f} s in all\n")
    print("| part | status | figures | seconds |\n|---|---|---|--:|")
    for name, status, summary, seconds in rows:
        print(f"| {name} | {status} | {summary} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
