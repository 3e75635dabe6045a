"""Training precision, measured: chars/s and val loss after the same steps, one run per precision.

    python benchmarks/precision.py                                   # the default model, on a GPU
    python benchmarks/precision.py --experiment shakespeare_char --steps 150

Each precision trains the same network from the same seed on the same batches for `--steps` steps
through `train.py`'s pipeline (`build`, then `fit`), then scores the first `--val-batches` batches of
the val split. chars/s is the run's own figure, `train/lengths / train/time` (the device's time,
validation left out), after a discarded warm-up run that pays CUDA's and cuDNN's start-up.
Precisions: `32-true` (float32; cuDNN's recurrent kernels use TF32 tensor cores by
default), `tf32` (32-true with `torch.set_float32_matmul_precision("high")`, so the embedding and the
head's matrix products use TF32 too), `bf16-mixed` and `16-mixed` (autocast; 16-mixed scales the
loss). Rows print as they are measured.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import torch
from common import compose_train, local_corpus

from charlm.training.run import build


def measure(overrides: list[str], precision: str, steps: int) -> tuple[float, float]:
    """(chars/s, val loss) of one short run at `precision`."""
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    trainer_precision = "32-true" if precision == "tf32" else precision
    out_dir = Path(tempfile.mkdtemp())
    run = [*overrides, f"trainer.precision={trainer_precision}", f"paths.output_dir={out_dir}"]
    run.append(f"trainer.max_steps={steps}")
    datamodule, model, trainer = build(compose_train(run))
    trainer.fit(model, datamodule=datamodule)
    shutil.rmtree(out_dir, ignore_errors=True)
    metrics = trainer.logged_metrics
    chars_per_sec = float(metrics["train/lengths"]) / float(metrics["train/time"])
    return chars_per_sec, float(trainer.callback_metrics["val/loss"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--experiment", help="a preset of conf/experiment, e.g. shakespeare_char")
    parser.add_argument("--precisions", default="32-true,tf32,bf16-mixed,16-mixed")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--val-batches", type=int, default=20)
    parser.add_argument("--accelerator", default="gpu", choices=["cpu", "gpu"])
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp())
    overrides = [f"experiment={args.experiment}"] if args.experiment else ["data=quijote"]
    overrides += [
        f"trainer.accelerator={args.accelerator}",
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=null",
        "trainer.val_check_interval=null",
        f"++trainer.limit_val_batches={args.val_batches}",
        "++trainer.num_sanity_val_steps=0",
        "~logger",
        "callbacks.sample_text=null",
        "++trainer.enable_model_summary=false",
        "++trainer.enable_progress_bar=false",
    ]
    corpus = "tinyshakespeare" if args.experiment == "shakespeare_char" else "quijote"
    if found := local_corpus(corpus):
        shutil.copy(found, data_dir)
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    model = args.experiment or "default model"
    print(f"{model} on {corpus}, {args.steps} steps, {device}, torch {torch.__version__}")
    print("| precision | chars/s | val loss | chars/s vs 32-true |\n|---|--:|--:|--:|", flush=True)
    measure(overrides, "32-true", 20)  # CUDA's and cuDNN's start-up, not to be charged to the first row
    baseline = None
    for precision in args.precisions.split(","):
        speed, val_loss = measure(overrides, precision, args.steps)
        baseline = baseline or speed
        print(f"| {precision} | {speed:,.0f} | {val_loss:.4f} | {speed / baseline:.2f}x |", flush=True)
    shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
