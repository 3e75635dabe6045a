"""Settings a resumed run must keep: marked where they are defined (NetworkConfig, DataConfig),
read where a resume is checked (`charlm.training.resume`)."""

from __future__ import annotations

import dataclasses
from typing import Any


def resumable(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field that shapes (or shares) the weights, or that the saved position in the data
    depends on: a checkpoint resumes only with the same value."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={"resume": True})


def resume_keys(config: type) -> list[str]:
    """The fields of a config dataclass that a resumed run must keep."""
    return [f.name for f in dataclasses.fields(config) if f.metadata.get("resume")]
