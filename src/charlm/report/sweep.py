"""The Hydra callback that writes a multirun's report when it ends (conf/hydra/default.yaml)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from charlm.report.render import write_report

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Hydra callback: when a multirun ends, write its report into the multirun directory; exit
    non-zero when a job failed, so that scripts notice."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        runs = write_report(root)
        if not runs:
            log.warning("no TensorBoard events under %s: no sweep report", root)
        if failed := [r.name for r in runs if r.error]:
            log.error("%d of %d jobs failed: %s (see report.md)", len(failed), len(runs), ", ".join(failed))
            raise SystemExit(1)
