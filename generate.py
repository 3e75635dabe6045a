"""Write text with a trained model: the prompt, then `length` new characters.

    python generate.py ckpt=logs/runs/<date>_<time> prompt="En un lugar de la" length=500 temperature=0.5

Configuration: conf/generate.yaml (`python generate.py --help`); the sampler: charlm.generation.
"""

import os
import sys

import hydra
import torch
from omegaconf import DictConfig

from charlm.cli import check_keys_are_ascii, quote_free_text
from charlm.errors import CharLMError
from charlm.generation import generate
from charlm.models.checkpoints import find_checkpoint, load_model


def pick_device(setting: str) -> str:
    """`device` as torch takes it, or one clear line: torch's own errors name no setting."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError:  # device=tpu: "Expected one of cpu, cuda, ipu, xpu, ..."
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise CharLMError(f"device={setting} is no device generate.py knows: use auto, cpu, cuda or cuda:<n>")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CharLMError(f"device={setting}, but torch sees no Apple GPU here: use device=cpu (or auto)")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device.type == "cuda" and not gpus:
        raise CharLMError(f"device={setting}, but torch sees no GPU here: use device=cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= gpus:
        raise CharLMError(f"device={setting}, but torch sees {gpus} GPU(s), cuda:0 to cuda:{gpus - 1}")
    return str(device)


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    if cfg.ckpt in (None, ""):
        raise CharLMError("give ckpt=<checkpoint file or run directory>, e.g. ckpt=logs/runs/<date>_<time>")
    device = pick_device(str(cfg.device))
    path = find_checkpoint(str(cfg.ckpt))
    print(f"# {path} on {device}", file=sys.stderr)
    samples = generate(
        load_model(path, device),
        prompt=str(cfg.prompt),
        length=cfg.length,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        num_samples=cfg.num_samples,
        seed=cfg.seed,
        stop_at_newline=cfg.stop_at_newline,
    )
    separator = "\n" if cfg.stop_at_newline else "\n" + "-" * 40 + "\n"
    try:
        print(separator.join(samples), flush=True)
    except BrokenPipeError:  # `generate.py ... | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor fail again at exit


if __name__ == "__main__":
    check_keys_are_ascii()
    quote_free_text(text=["prompt"], paths=["ckpt"])  # as typed: prompt="¿Qué es, Sancho?"
    main()
