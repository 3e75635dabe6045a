"""The types of the settings people type most, checked before anything runs.

`hidden=abc` or `data.seq_len=1.5` would otherwise surface minutes later, after the corpus is
read, as a TypeError deep in torch. Each group's known keys are declared in a dataclass and
checked strictly (`data.lowercase=no` is the text 'no', not false), naming the key and the type
it wants; the other keys of a group (any Trainer argument, an optimizer's own) pass unchecked.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from charlm.errors import CharLMError


@dataclass
class Top:
    hidden: int
    seed: int | None


@dataclass
class Model:
    cell: str
    hidden: int
    num_layers: int
    dropout: float
    embedding_dim: int | None
    locked_dropout: bool
    stateful: bool
    compile: bool
    impl: str
    init: str
    unit_forget_bias: bool
    tie_weights: bool
    bidirectional: bool


@dataclass
class Data:
    path: str | None
    encoding: str
    seq_len: int
    stride: int | None  # null: seq_len
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
    max_epochs: int | None
    max_steps: int
    gradient_clip_val: float | None
    log_every_n_steps: int


SCHEMAS: dict[str, type] = {"": Top, "model": Model, "data": Data, "optimizer": Optimizer, "trainer": Trainer}

_WANTED = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _is(value: Any, kind: type) -> bool:
    """Strictly: `true`, not 'yes' (which would pass as a string, and count as true)."""
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def _fits(value: Any, annotation: Any) -> bool:
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is list:
        items = isinstance(value, Sequence) and not isinstance(value, str)
        return items and all(_is(v, args[0]) for v in value)
    if args:  # X | None
        return value is None or _is(value, args[0])
    return _is(value, annotation)


def _wanted(annotation: Any) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is list:
        return f"a list of {_WANTED[args[0]].removeprefix('a ').removeprefix('an ')}s"
    if args:  # X | None
        return f"{_WANTED[args[0]]} or null"
    return _WANTED[annotation]


def check_types(cfg: DictConfig) -> None:
    """Raise one CharLMError naming the first setting of the wrong type, e.g. `hidden='abc'`."""
    for group, schema in SCHEMAS.items():
        node = cfg.get(group) if group else cfg
        if not isinstance(node, DictConfig):
            continue
        for name, annotation in typing.get_type_hints(schema).items():
            if name not in node:
                continue
            value = OmegaConf.to_object(node[name]) if OmegaConf.is_config(node[name]) else node[name]
            if not _fits(value, annotation):
                key = f"{group}.{name}" if group else name
                raise CharLMError(f"{key}={value!r} is not {_wanted(annotation)}")
