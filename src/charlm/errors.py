"""The one exception type for problems a user can fix, and Hydra's instantiate that lets it through."""

from typing import Any

from hydra.errors import CompactHydraException, InstantiationException
from hydra.utils import instantiate as hydra_instantiate


class CharLMError(CompactHydraException):
    """Bad input or environment: the message names the problem and the fix.

    It derives from Hydra's CompactHydraException so that `train.py` prints just the message, not
    a traceback.
    """


def instantiate(node: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, letting our own clear errors through unwrapped (Hydra would wrap a
    CharLMError raised by the object it builds in a page of its own)."""
    try:
        return hydra_instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException):
            cause = cause.__cause__
        if isinstance(cause, CharLMError):
            raise cause from None
        raise
