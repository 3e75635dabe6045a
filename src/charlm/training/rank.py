"""The entry point of DDP ranks 1..N-1 (started by `charlm.training.ddp.rank_command`): the job's saved
config, given by `--config-path` and `--config-name`, trained like any job.

A module of its own rather than the script that started rank 0, which may be `train.py`, a
launcher's wrapper (submitit's) or a notebook: none of those would take these arguments.
"""

import hydra
from omegaconf import DictConfig

from charlm import config
from charlm.training import run_dirs
from charlm.training.ddp import end_with_launcher
from charlm.training.run import train_job


@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg: DictConfig) -> float | None:
    return train_job(cfg)


if __name__ == "__main__":
    end_with_launcher()  # rank 0, killed, could not end this rank itself
    config.register()
    run_dirs.register()
    main()
