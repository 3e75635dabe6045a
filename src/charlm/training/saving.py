"""Checkpoints written so that a crash never costs the last good one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO

from charlm.errors import CharLMError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a file beside its target, then rename it into place.

    Lightning stages checkpoints in $TMPDIR and moves them, which is a plain copy, not atomic, when
    $TMPDIR is another filesystem (a tmpfs /tmp, as on many clusters): a job killed mid-copy would
    leave a truncated last.ckpt where the good one was. A rename within one directory is atomic.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except OSError as err:  # a full disk, most often
            raise CharLMError(
                f"could not save checkpoint {path}: {err.strerror or err}. The previous one is intact; "
                "free space on its disk (or set paths.log_dir elsewhere) and resume with ckpt_path=<run dir>"
            ) from None
        finally:
            partial.unlink(missing_ok=True)
