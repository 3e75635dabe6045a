"""Train a character-level language model.

    python train.py model=lstm data=quijote -m hidden=32,256

Configuration lives in conf/ (see `python train.py --help`); the pipeline in src/charlm/.
"""

import hydra
from omegaconf import DictConfig

from charlm import config
from charlm.cli import check_extras_installed, check_keys_are_ascii, hydra_flags_first, quote_free_text
from charlm.training import run_dirs
from charlm.training.run import train_job

# before Hydra composes: the typed schema of every setting, and the run directories' resolvers
config.register()
run_dirs.register()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train_job(cfg)


if __name__ == "__main__":
    check_keys_are_ascii()
    check_extras_installed()
    hydra_flags_first()
    quote_free_text(
        text=["callbacks.sample_text.prompt"],
        paths=[
            "data.path",
            "ckpt_path",
            "paths.data_dir",
            "paths.cache_dir",
            "paths.log_dir",
            "paths.root_dir",
        ],
    )
    main()
