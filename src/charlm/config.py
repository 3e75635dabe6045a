"""The schema of `python train.py`'s config, built from each component's one typed definition.

`NetworkConfig` (model), `DataConfig` (data) and `OptimizerConfig` (optimizer) are dataclasses
beside the code they configure; `TrainConfig` gathers them with the Trainer settings charlm
relies on. Registered in Hydra's ConfigStore as `charlm_train` (the first entry of conf/train.yaml's
defaults), it types every override as Hydra composes the config: `hidden=abc` or
`data.seq_len=1.5` is refused before anything runs, naming the key and the type it wants.

The optimizer and trainer groups are open: their typed keys are checked, and any other argument of
the optimizer or of `pytorch_lightning.Trainer` passes to it as it is.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf

from charlm.data.datamodule import DataConfig
from charlm.errors import CharLMError
from charlm.models.network import NetworkConfig
from charlm.models.optimization import OptimizerConfig


@dataclass
class TrainerConfig:
    """The types of the Trainer settings that charlm's configs and README set (values: conf/trainer/)."""

    _target_: str = MISSING
    max_epochs: int | None = MISSING
    max_steps: int = MISSING
    gradient_clip_val: float | None = MISSING
    log_every_n_steps: int = MISSING


@dataclass
class TrainConfig:
    # read by every model config (model.hidden: ${hidden}), so that `-m hidden=32,256` sweeps any backbone
    hidden: int = NetworkConfig.hidden
    seed: int | None = MISSING
    ckpt_path: str | None = MISSING
    model: NetworkConfig = field(default_factory=NetworkConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: Any = None
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: Any = None
    callbacks: Any = None
    paths: Any = None


def schema() -> DictConfig:
    """TrainConfig as a config node, its open groups (optimizer, trainer) open to other keys."""
    node = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(node.optimizer, False)
    OmegaConf.set_struct(node.trainer, False)
    return node


def register() -> None:
    """Put the schema in Hydra's ConfigStore, before Hydra composes `train.yaml`. The entry points
    call it (with `charlm.training.run_dirs.register`); importing charlm does not."""
    ConfigStore.instance().store(name="charlm_train", node=schema())


def plain(node: DictConfig | None) -> Any:
    """A composed group as plain Python data (dicts and lists), interpolations resolved; None stays."""
    return None if node is None else OmegaConf.to_container(node, resolve=True)


def typed(node: Any, config: type) -> Any:
    """A composed group (a DictConfig, typed or not: a DDP rank reads the saved YAML) as its dataclass."""
    return config(**plain(node))


def check_open_groups(cfg: DictConfig) -> None:
    """Name a key that the optimizer or the Trainer does not take (`trainer.max_step=5`, a typo),
    before anything runs: those groups pass their other keys on unchecked, and the class itself
    would refuse it only once the corpus is read."""
    for group in ("optimizer", "trainer"):
        node = cfg.get(group)
        if not node or "_target_" not in node:
            continue
        target = get_object(node._target_)
        parameters = inspect.signature(target).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        unknown = sorted(set(node) - set(parameters) - {"_target_", "_partial_"})
        if unknown:
            raise CharLMError(
                f"{group}.{unknown[0]} is not a setting of {node._target_}: check its spelling "
                f"(`python train.py --cfg job` shows the {group} settings)"
            )
