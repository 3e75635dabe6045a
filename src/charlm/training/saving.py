"""Checkpoints written so that a crash never costs the last good one."""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from charlm.errors import CharLMError

log = logging.getLogger(__name__)

# what torch's zip writer says when the file's write fails
_WRITER_FAILED = re.compile(r"PytorchStreamWriter|inline_container|unexpected pos")
# a save in progress writes its partial file continually; one untouched this long was cut short
_ABANDONED_AFTER_SECONDS = 300


def partial_name(path: Path) -> Path:
    """Where `path` is written before it is renamed into place: hidden, beside it."""
    return path.with_name(f".{path.name}.partial")


def remove_abandoned_partials(folder: Path) -> None:
    """Delete the partial files that saves killed midway (SIGKILL, power loss) left in `folder`:
    each as large as a checkpoint, and nothing else would ever remove them."""
    for partial in folder.glob(".*.partial"):
        try:
            if time.time() - partial.stat().st_mtime > _ABANDONED_AFTER_SECONDS:
                partial.unlink()
                log.info("removed %s, left by a save that was cut short", partial)
        except OSError:  # gone meanwhile, or not ours to delete: it stays
            pass


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a file beside its target, then rename it into place.

    Lightning stages checkpoints in $TMPDIR and moves them, which is a plain copy, not atomic, when
    $TMPDIR is another filesystem (a tmpfs /tmp, as on many clusters): a job killed mid-copy would
    leave a truncated last.ckpt where the good one was. A rename within one directory is atomic.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = partial_name(path)
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        # a full disk, most often: the file's write fails with an OSError, torch's zip writer's with a
        # RuntimeError ("unexpected pos"): either way, nothing of the previous checkpoint is lost
        except (OSError, RuntimeError) as err:
            if isinstance(err, RuntimeError) and not _WRITER_FAILED.search(str(err)):
                raise  # a bug, or a GPU fault surfacing in the copy: not the disk's
            reason = err.strerror if isinstance(err, OSError) and err.strerror else "the write failed"
            free = shutil.disk_usage(path.parent).free / 1e6
            raise CharLMError(
                f"could not save checkpoint {path}: {reason} ({free:,.0f} MB free on its disk). The previous "
                "one is intact; free space (or set paths.log_dir elsewhere), resume with ckpt_path=<run dir>"
            ) from None
        finally:
            partial.unlink(missing_ok=True)
