"""DDP under Hydra: ranks 1..N-1 run this very job, in its run directory, and write nothing there;
and a rank that fails ends every rank of the job within seconds.

Lightning starts the other ranks of a node by running the script again with `sys.argv` and
`hydra.run.dir=<run.dir>`. Under Hydra that goes wrong twice (Lightning issue #16694, PR #18175
still open): in a multirun, `-m hidden=32,256` makes every rank start a whole sweep of its own,
and `run.dir` (`${charlm.claim_dir:...}` here) claims a new directory per rank. Instead, each rank
(`python -m charlm.training.rank`) composes the config that Hydra saved for this job
(`<run dir>/.hydra/config.yaml`), with this job's run directory, no `.hydra` of its own and no log
file: rank 0 alone writes the run's output.

A rank's failure must not leave the others waiting in a collective: gloo's fail when a peer's
connection closes, but NCCL's wait on the device for as long as the process group's timeout
(30 minutes). So nothing here counts on the backend: a failing rank 1..N-1 exits at once, rank 0
watches the ranks it started (`RankWatch`), a failing rank 0 kills them, and a rank whose rank 0
is gone ends itself (`end_with_launcher`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_original_cwd
from pytorch_lightning.strategies.launchers import subprocess_script
from pytorch_lightning.utilities import rank_zero_only

from charlm.cli import hydra_quote
from charlm.errors import CharLMError

log = logging.getLogger(__name__)

# how often the watches look, and how long rank 0 has to end a job by itself once a rank has failed
# (gloo's collectives fail at once; NCCL's never return)
POLL_S = 0.2
GRACE_S = 5.0


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
# rank 0's process id, for the ranks it starts (they inherit its environment): see end_with_launcher
LAUNCHER_PID = "CHARLM_DDP_LAUNCHER_PID"


def _how(code: int) -> str:
    return f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"


def _end_process(message: str, err: Exception | None = None) -> NoReturn:
    """Say why (with `err`'s traceback if given) and end this process now, from any thread: a main
    thread blocked in a collective never returns to Python, so no exception or signal handler
    would reach it; and a process group's teardown could wait on the other ranks."""
    log.error(message, exc_info=err)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


class RankWatch:
    """Rank 0's watch over the ranks it started, in place of Lightning's `_ChildProcessObserver`
    (which looks every 5 s and then kills rank 0, a sweep's one process included, with SIGKILL).

    A rank that exits with an error is noted at once. Rank 0 then has `GRACE_S` to end the job by
    itself (its next collective fails under gloo, and `ranks_of_one_job` names the failed rank);
    if it is still at it, it is waiting in a collective that never returns, and the watch ends it
    and every rank: a sweep ends there too, since its one process is stuck for good.
    """

    def __init__(self) -> None:
        self.ranks: list[subprocess.Popen] = []
        self._job_over = threading.Event()
        self._failed = threading.Event()
        self.failure = ""

    def start(self, ranks: list[subprocess.Popen]) -> None:
        """Called by Lightning's launcher once it has started `ranks` (1..N-1, in order)."""
        self.ranks = ranks
        threading.Thread(target=self._watch, name="charlm-rank-watch", daemon=True).start()

    def _watch(self) -> None:
        while not self._job_over.wait(POLL_S):
            for rank, process in enumerate(self.ranks, start=1):
                code = process.poll()
                if code:  # None: running; 0: done
                    self.failure = f"DDP rank {rank} failed ({_how(code)})"
                    self._failed.set()
                    if not self._job_over.wait(GRACE_S):
                        self.end_ranks()
                        _end_process(
                            f"{self.failure}, and rank 0 still waits for it {GRACE_S:g} s later "
                            "(in a collective that never returns): ending every rank"
                        )
                    return

    def failed_rank(self, within: float) -> str:
        """What rank failed, if one has or does within `within` seconds; '' if none."""
        if self.ranks:  # none started: no DDP, or ranks started by someone else (torchrun, SLURM)
            self._failed.wait(within)
        return self.failure

    def end_ranks(self) -> None:
        """Kill the ranks still running: SIGKILL, as a rank blocked in a collective takes no other
        signal (and SIGTERM would ask ours to save a checkpoint, a collective of its own)."""
        for process in self.ranks:
            if process.poll() is None:
                process.kill()
                process.wait()

    def stop(self) -> None:
        self._job_over.set()


def leave_as_failed_rank(err: Exception) -> NoReturn:
    """A rank 1..N-1 that failed: say why, once, and exit at once, for rank 0's watch to see."""
    if isinstance(err, CharLMError):
        _end_process(f"rank {rank_zero_only.rank}: {err}")
    _end_process(f"rank {rank_zero_only.rank} failed:", err)  # a bug, not bad input: its traceback


def end_with_launcher() -> None:
    """Ranks 1..N-1: end this rank when the process that started it (rank 0) is gone, killed
    before it could end its ranks itself (SIGKILL, out of memory); gone already, it is seen at once."""
    launcher = int(os.environ.get(LAUNCHER_PID, os.getppid()))

    def watch() -> None:
        while os.getppid() == launcher:
            threading.Event().wait(POLL_S)
        _end_process(f"rank {rank_zero_only.rank}: rank 0 (pid {launcher}) is gone: ending")

    threading.Thread(target=watch, name="charlm-launcher-watch", daemon=True).start()


@contextmanager
def ranks_of_one_job() -> Iterator[None]:
    """Start DDP's other ranks as `rank_command` says, end them all when one fails, and leave no
    DDP behind a job, so that the next job of a multirun starts ranks of its own.

    Otherwise the second job would find the first one's process group (its other ranks gone) and
    `LOCAL_RANK` in the environment, take itself for a rank that someone else started, and wait;
    and it would run on the share of the cores that the first job's launcher gave each rank.

    On rank 0, an error that follows another rank's failure (a collective that lost its peer) is
    reported as that rank's failure, whose own error that rank printed; rank 0's own errors as they
    are, after the other ranks are killed.
    """
    launch_env = {key: os.environ.get(key) for key in (*_LAUNCH_ENV, LAUNCHER_PID)}
    os.environ[LAUNCHER_PID] = str(os.getpid())
    threads = torch.get_num_threads()
    watch = RankWatch()
    # Lightning's launcher asks for the rank command here whenever Hydra runs, and has the ranks
    # it started watched here
    lightnings = subprocess_script._hydra_subprocess_cmd, subprocess_script._launch_process_observer
    subprocess_script._hydra_subprocess_cmd = rank_command
    subprocess_script._launch_process_observer = watch.start
    try:
        yield
    except Exception as err:
        if rank_zero_only.rank != 0:
            leave_as_failed_rank(err)
        # a decision of every rank (divergence) is rank 0's to name; any other error may be the echo
        # of a rank that failed first (whose exit comes with its connections' end)
        failure = "" if isinstance(err, CharLMError) else watch.failed_rank(within=0.5)
        watch.end_ranks()
        if failure:
            raise CharLMError(f"{failure}: its error is printed above") from None
        raise
    except BaseException:  # Ctrl+C (Lightning has ended the ranks), SystemExit
        watch.end_ranks()
        raise
    finally:
        watch.stop()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        torch.set_num_threads(threads)
        subprocess_script._hydra_subprocess_cmd, subprocess_script._launch_process_observer = lightnings
        for key, value in launch_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
