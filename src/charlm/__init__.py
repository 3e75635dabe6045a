"""charlm: character-level recurrent language models with PyTorch Lightning and Hydra.

The names below load on first use, so that light commands (`python -m charlm.report`) do not pay
for importing torch and Lightning.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from charlm import run_dirs

if TYPE_CHECKING:
    from charlm.checkpoints import find_checkpoint, load_model
    from charlm.datamodule import CharDataModule
    from charlm.errors import CharLMError
    from charlm.generation import generate
    from charlm.model import CharLM
    from charlm.network import CharRNN
    from charlm.vocab import Vocabulary

run_dirs.register()

_HOMES = {
    "CharDataModule": "charlm.datamodule",
    "CharLM": "charlm.model",
    "CharLMError": "charlm.errors",
    "CharRNN": "charlm.network",
    "Vocabulary": "charlm.vocab",
    "find_checkpoint": "charlm.checkpoints",
    "generate": "charlm.generation",
    "load_model": "charlm.checkpoints",
}
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


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'charlm' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
