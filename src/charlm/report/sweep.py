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
    non-zero when a job failed or a file of it cannot be read, so that scripts notice."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        root = Path(config.hydra.sweep.dir)
        try:
            runs = write_report(root)
        except OSError as err:  # the jobs' own files are all there: only the report is missing
            log.error("cannot write the sweep report into %s (%s)", root, err.strerror)
            raise SystemExit(1) from None
        if not runs:
            log.warning("no TensorBoard events under %s: no sweep report", root)
        for line in (line for run in runs for line in run.damage):
            log.error("%s", line)
        if failed := [r.name for r in runs if r.error]:
            log.error("%d of %d jobs failed: %s (see report.md)", len(failed), len(runs), ", ".join(failed))
        if failed or any(run.damage for run in runs):
            raise SystemExit(1)
