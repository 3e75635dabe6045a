"""The types of the settings people type most, checked before anything runs.

`hidden=abc` or `data.seq_len=1.5` would otherwise surface minutes later, after the corpus is
read, as a TypeError deep in torch. Each group's known keys are merged into a typed dataclass
(OmegaConf's structured configs), which names the key and the type it wants; the other keys of a
group (any Trainer argument, an optimizer's own) pass unchecked.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ValidationError

from charlm.errors import CharLMError


@dataclass
class Top:
    hidden: int
    seed: Optional[int]  # noqa: UP045 (OmegaConf 2.3 reads Optional, not X | None)


@dataclass
class Model:
    cell: str
    hidden: int
    num_layers: int
    dropout: float
    embedding_dim: Optional[int]  # noqa: UP045
    stateful: bool


@dataclass
class Data:
    path: Optional[str]  # noqa: UP045
    encoding: str
    seq_len: int
    stride: int
    splits: list[float]
    lowercase: bool
    letters_only: bool
    batch_size: int
    num_workers: int
    stateful: bool


@dataclass
class Optimizer:
    lr: float
    weight_decay: float


@dataclass
class Trainer:
    max_epochs: Optional[int]  # noqa: UP045
    max_steps: int
    gradient_clip_val: Optional[float]  # noqa: UP045
    log_every_n_steps: int


SCHEMAS: dict[str, type] = {"": Top, "model": Model, "data": Data, "optimizer": Optimizer, "trainer": Trainer}

_WANTED = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _wanted(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return f"a list of {_WANTED[args[0]].removeprefix('a ').removeprefix('an ')}s"
    if args:  # Optional[X]
        return f"{_WANTED[args[0]]} or null"
    return _WANTED[annotation]


def check_types(cfg: DictConfig) -> None:
    """Raise one CharLMError naming the first setting of the wrong type, e.g. `hidden='abc'`."""
    for group, schema in SCHEMAS.items():
        node = cfg.get(group) if group else cfg
        if not isinstance(node, DictConfig):
            continue
        hints = typing.get_type_hints(schema)
        for field in fields(schema):
            if field.name not in node:
                continue
            value = node[field.name]
            try:
                OmegaConf.merge(OmegaConf.structured(schema), {field.name: value})
            except ValidationError:
                key = f"{group}.{field.name}" if group else field.name
                raise CharLMError(f"{key}={value!r} is not {_wanted(hints[field.name])}") from None
