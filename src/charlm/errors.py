"""The one exception type for problems a user can fix."""

from hydra.errors import CompactHydraException


class CharLMError(CompactHydraException):
    """Bad input or environment: the message names the problem and the fix.

    It derives from Hydra's CompactHydraException so that `train.py` prints just the message, not
    a traceback.
    """
