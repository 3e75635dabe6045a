"""charlm: character-level recurrent language models with PyTorch Lightning and Hydra.

The package reads top-down as the data flows: `data` (corpus to batches), `models` (the network
and its LightningModule), `generation` (writing text), `training` (runs, callbacks, checkpoints,
DDP), `report` (sweep reports). Importing it changes nothing: the entry points register what Hydra
needs (`charlm.config.register`). The names below load on first use, so that light commands
(`python -m charlm.report`) do not pay for importing torch and Lightning.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from charlm.data.datamodule import CharDataModule, DataConfig
    from charlm.data.vocab import Vocabulary
    from charlm.errors import CharLMError
    from charlm.generation import generate
    from charlm.models.checkpoints import find_checkpoint, load_model
    from charlm.models.lightning_module import CharLM
    from charlm.models.network import CharRNN, NetworkConfig

_HOMES = {
    "CharDataModule": "charlm.data.datamodule",
    "CharLM": "charlm.models.lightning_module",
    "CharLMError": "charlm.errors",
    "CharRNN": "charlm.models.network",
    "DataConfig": "charlm.data.datamodule",
    "NetworkConfig": "charlm.models.network",
    "Vocabulary": "charlm.data.vocab",
    "find_checkpoint": "charlm.models.checkpoints",
    "generate": "charlm.generation",
    "load_model": "charlm.models.checkpoints",
}
__all__ = [
    "CharDataModule",
    "CharLM",
    "CharLMError",
    "CharRNN",
    "DataConfig",
    "NetworkConfig",
    "Vocabulary",
    "find_checkpoint",
    "generate",
    "load_model",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'charlm' has no attribute {name!r}")
    return getattr(import_module(_HOMES[name]), name)
