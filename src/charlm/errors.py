"""The one exception type for problems a user can fix, the test for an allocation failure that
training and generation both turn into one, and Hydra's instantiate that names the setting at
fault when the object it builds refuses its arguments."""

from typing import Any

import torch
from hydra.errors import CompactHydraException, InstantiationException
from hydra.utils import instantiate as hydra_instantiate
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig


def out_of_memory(err: BaseException) -> bool:
    """A GPU's or the host's allocation failure (torch raises a RuntimeError on the CPU), or Python's."""
    return isinstance(err, MemoryError | torch.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "can't allocate memory" in str(err)
    )


class CharLMError(CompactHydraException):
    """Bad input or environment: the message names the problem and the fix.

    It derives from Hydra's CompactHydraException so that `train.py` prints just the message, not
    a traceback.
    """


def _refuses_its_arguments(err: BaseException) -> bool:
    """What torch, Lightning and the like raise for an argument out of range or misspelt: the
    setting's fault, not a bug (`Invalid learning rate: -0.01`, `every_n_train_steps=-1`)."""
    if isinstance(err, TypeError):  # a wrong key: "got an unexpected keyword argument 'lrr'"
        return "argument" in str(err)
    return isinstance(err, ValueError | MisconfigurationException)


def instantiate(node: Any, *, setting: str | None = None, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, with one clear line instead of Hydra's page when the object refuses
    its settings: `setting` (default: the node's key, e.g. `callbacks.step_checkpoint`) and the
    library's own message. A CharLMError of the object built comes through unwrapped."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, CharLMError):
            raise cause from None
        if cause is not None and _refuses_its_arguments(cause):
            key = setting or (node._get_full_key(None) if isinstance(node, DictConfig) else "")
            target = node.get("_target_", "") if hasattr(node, "get") else ""
            raise CharLMError(
                f"{key or target}: {cause}. Fix the value"
                + (f" (`python train.py --cfg job` shows the {key} settings)" if key else "")
            ) from None
        raise
