"""Write text with a trained model: the prompt, then `length` new characters.

    python generate.py ckpt=logs/runs/<date>_<time> prompt="En un lugar de la" length=500 temperature=0.5

Configuration: conf/generate.yaml (`python generate.py --help`); the sampler: charlm.generation.
"""

import sys

import hydra
import torch
from omegaconf import DictConfig

from charlm.cli import quote_free_text
from charlm.errors import CharLMError
from charlm.generation import generate
from charlm.models.checkpoints import find_checkpoint, load_model


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    if not cfg.ckpt:
        raise CharLMError("give ckpt=<checkpoint file or run directory>, e.g. ckpt=logs/runs/<date>_<time>")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CharLMError(f"device={device}, but torch sees no GPU here: use device=cpu (or auto)")
    path = find_checkpoint(cfg.ckpt)
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
    print(separator.join(samples))


if __name__ == "__main__":
    quote_free_text(text=["prompt"], paths=["ckpt"])  # as typed: prompt="¿Qué es, Sancho?"
    main()
