"""The failures of torch, Lightning and the operating system that a user's settings or machine
cause, said in one line that names the setting or file and the fix, instead of a library's page."""

from __future__ import annotations

import errno
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from lightning_fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

from charlm.errors import CharLMError, out_of_memory

# a write that the disk, not the code, refused
_DISK_ERRORS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EFBIG,
    errno.ENOTDIR,
}


def _raised_by_lightning(err: BaseException) -> bool:
    """Whether the innermost frame of `err` is Lightning's (not charlm's, nor a library's bug)."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.startswith(("pytorch_lightning", "lightning_fabric"))


def _size(err: BaseException) -> str:
    """`160.0 GB` from the allocator's message, or '' when it does not say."""
    tried = re.search(r"allocate (\d+) bytes|Tried to allocate ([\d.]+ [KMGT]iB)", str(err))
    if not tried:
        return ""
    if tried.group(1):
        return f" ({int(tried.group(1)) / 1e9:,.1f} GB asked for)"
    return f" ({tried.group(2)} asked for)"


@contextmanager
def said_in_one_line(cfg: DictConfig) -> Iterator[None]:
    """Run the body; an out-of-memory error, a refused write or a Trainer setting that Lightning
    rejects midway comes out as a CharLMError naming the settings to change."""
    try:
        yield
    except ValueError as err:  # Lightning's naming a Trainer argument: `val_check_interval` (9) must...
        named = [key for key in (cfg.get("trainer") or {}) if re.search(rf"\b{key}\b", str(err))]
        if not named or not _raised_by_lightning(err):
            raise
        raise CharLMError(f"trainer.{named[0]}: {str(err).strip()}".replace("`", "")) from None
    except MisconfigurationException as err:  # Lightning's word for a setting it cannot use
        raise CharLMError(
            f"{err} (a trainer or callbacks setting; `python train.py --cfg job` shows them)"
        ) from None
    except (RuntimeError, torch.OutOfMemoryError) as err:
        if not out_of_memory(err):
            raise
        model, data = cfg.get("model") or {}, cfg.get("data") or {}
        where = "GPU" if isinstance(err, torch.OutOfMemoryError) else "host"
        raise CharLMError(
            f"out of {where} memory{_size(err)}: lower hidden ({model.get('hidden')}), "
            f"model.num_layers ({model.get('num_layers')}), data.batch_size ({data.get('batch_size')}) "
            f"or data.seq_len ({data.get('seq_len')})"
        ) from None
    except OSError as err:
        if err.errno not in _DISK_ERRORS:
            raise
        raise CharLMError(write_refused(err)) from None


def write_refused(err: OSError) -> str:
    """Why a file of the run could not be written (or reached), and what to do."""
    file = err.filename or "a file of the run"
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        free = _free_space(Path(file))
        return (
            f"could not write {file}: {err.strerror or err}. The checkpoints saved before are intact; "
            f"free space on its disk{free} or set paths.log_dir to another disk"
        )
    return (
        f"cannot access {file}: {err.strerror or err}. Check its permissions, or set paths.log_dir "
        "(paths.data_dir for the corpora) to a folder you can write to"
    )


def _free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        if folder.exists():
            return f" ({shutil.disk_usage(folder).free / 1e6:,.0f} MB free there)"
    return ""


def check_limits(cfg: DictConfig) -> None:
    """Trainer settings that Lightning takes without a word but cannot train with: a limit of 0
    trains nothing (the run ends at once with its untrained weights, reported as finished), a
    negative clip flips the gradients, no accumulation divides by zero midway; and a seed that
    Lightning would replace by 0."""
    trainer = cfg.get("trainer") or {}
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if trainer.get(key) == 0:
            raise CharLMError(f"trainer.{key}=0 trains nothing: give it at least 1")
    if (clip := trainer.get("gradient_clip_val")) is not None and clip < 0:
        raise CharLMError(f"trainer.gradient_clip_val must be 0 (off) or more, got {clip}")
    if (accumulate := trainer.get("accumulate_grad_batches")) is not None and accumulate < 1:
        raise CharLMError(f"trainer.accumulate_grad_batches must be at least 1, got {accumulate}")
    if (seed := cfg.get("seed")) is not None and not 0 <= seed < 2**32:
        raise CharLMError(f"seed must be from 0 to {2**32 - 1} (or null: unseeded), got {seed}")
