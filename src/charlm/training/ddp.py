"""DDP under Hydra: ranks 1..N-1 run this very job, in its run directory, and write nothing there.

Lightning starts the other ranks of a node by running the script again with `sys.argv` and
`hydra.run.dir=<run.dir>`. Under Hydra that goes wrong twice (Lightning issue #16694, PR #18175
still open): in a multirun, `-m hidden=32,256` makes every rank start a whole sweep of its own,
and `run.dir` (`${charlm.claim_dir:...}` here) claims a new directory per rank. Instead, each rank
(`python -m charlm.training.rank`) composes the config that Hydra saved for this job
(`<run dir>/.hydra/config.yaml`), with this job's run directory, no `.hydra` of its own and no log
file: rank 0 alone writes the run's output.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_original_cwd
from pytorch_lightning.strategies.launchers import subprocess_script

from charlm.cli import hydra_quote
from charlm.errors import CharLMError


def rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command (and working directory) that runs this Hydra job as DDP rank `local_rank`."""
    hydra = HydraConfig.get()
    if hydra.output_subdir is None:
        raise CharLMError("DDP starts its ranks from this job's saved config: drop hydra.output_subdir=null")
    run_dir = Path(hydra.runtime.output_dir).resolve()
    command = [
        sys.executable,
        "-m",
        "charlm.training.rank",
        f"--config-path={run_dir / hydra.output_subdir}",
        "--config-name=config",
        f"hydra.run.dir={hydra_quote(str(run_dir))}",
        f"hydra.job.chdir={hydra.job.chdir}",
        "hydra.output_subdir=null",  # rank 0 saved the config
        "hydra/job_logging=none",  # rank 0 writes the log: the others print warnings and errors only
        "hydra/hydra_logging=none",
    ]
    return command, get_original_cwd()


# what Lightning's launcher and seeding put in this process's environment for the ranks it starts
_LAUNCH_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "OMP_NUM_THREADS",
    "PL_GLOBAL_SEED",
    "PL_SEED_WORKERS",
)
# set for the ranks of a sweep's job: they leave a failure for rank 0 to report (see train_job)
RANK_OF_SWEEP_JOB = "CHARLM_RANK_OF_SWEEP_JOB"


@contextmanager
def ranks_of_one_job() -> Iterator[None]:
    """Start DDP's other ranks as `rank_command` says, and leave no DDP behind a job, so that
    the next job of a multirun starts ranks of its own.

    Otherwise the second job would find the first one's process group (its other ranks gone) and
    `LOCAL_RANK` in the environment, take itself for a rank that someone else started, and wait;
    and it would run on the share of the cores that the first job's launcher gave each rank.
    """
    launch_env = {key: os.environ.get(key) for key in (*_LAUNCH_ENV, RANK_OF_SWEEP_JOB)}
    threads = torch.get_num_threads()
    # Lightning's launcher asks for the rank command here whenever Hydra runs
    lightnings_command = subprocess_script._hydra_subprocess_cmd
    subprocess_script._hydra_subprocess_cmd = rank_command
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        os.environ[RANK_OF_SWEEP_JOB] = "1"
    try:
        yield
    finally:
        # the other ranks, blocked in a collective if rank 0 failed alone, fail too and exit
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        torch.set_num_threads(threads)
        subprocess_script._hydra_subprocess_cmd = lightnings_command
        for key, value in launch_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
