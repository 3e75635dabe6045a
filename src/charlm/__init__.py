"""charlm: character-level recurrent language models with PyTorch Lightning and Hydra."""

from charlm import run_dirs
from charlm.checkpoints import find_checkpoint, load_model
from charlm.datamodule import CharDataModule
from charlm.errors import CharLMError
from charlm.generation import generate
from charlm.model import CharLM
from charlm.network import CharRNN
from charlm.vocab import Vocabulary

run_dirs.register()

__all__ = [
    "CharDataModule",
    "CharLM",
    "CharLMError",
    "CharRNN",
    "Vocabulary",
    "find_checkpoint",
    "generate",
    "load_model",
]
