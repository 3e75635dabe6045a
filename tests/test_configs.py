"""Every option of every config group composes, and its objects build."""

from __future__ import annotations

import inspect
from dataclasses import asdict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import ROOT, compose_train
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from pytorch_lightning.loggers import Logger

from charlm import generate
from charlm.cli import quote_free_text
from charlm.config import typed
from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.errors import CharLMError
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig
from charlm.models.optimization import OptimizerConfig

GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def test_groups_are_the_documented_ones() -> None:
    expected = {"data", "model", "optimizer", "scheduler", "trainer", "logger", "callbacks", "hparams_search"}
    expected |= {"experiment"}
    assert expected | {"paths", "hydra"} == set(GROUPS)
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    docs = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    for group in expected:
        for option in options(group):
            assert f"`{option}`" in docs, f"neither README.md nor docs/ documents {group}={option}"


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in GROUPS if g not in ("hydra", "paths", "experiment") for o in options(g)],
)
def test_every_option_composes(group: str, option: str, tmp_path: Path) -> None:
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if option == "textfile":
        overrides.append(f"data.path={tmp_path}")
    cfg = compose_train(overrides)
    assert cfg.hidden == cfg.model.hidden == 256
    if group == "data":
        assert isinstance(CharDataModule(typed(cfg.data, DataConfig)), CharDataModule)
    if group == "model":
        assert isinstance(CharLM(list("abc"), typed(cfg.model, NetworkConfig)), CharLM)
    if group == "optimizer":
        optimizer = instantiate(cfg.optimizer, params=[torch.nn.Parameter(torch.zeros(1))])
        assert isinstance(optimizer, torch.optim.Optimizer)
    if group == "trainer":
        assert cfg.trainer.gradient_clip_val == 1.0
        if option in ("default", "cpu"):
            trainer = instantiate(cfg.trainer, logger=False)
            assert trainer.gradient_clip_val == 1.0
    if group == "logger":
        assert all(isinstance(instantiate(node), Logger) for node in cfg.logger.values())
    if group == "callbacks":
        assert all(isinstance(instantiate(node), pl.Callback) for node in cfg.callbacks.values())


def test_hidden_is_read_by_every_model_and_sweepable() -> None:
    for model in options("model"):
        assert compose_train([f"model={model}", "hidden=32"]).model.hidden == 32


def test_missing_path_for_textfile_is_reported() -> None:
    cfg = compose_train(["data=textfile"])
    with pytest.raises(CharLMError, match="no corpus: give data.path="):
        CharDataModule(typed(cfg.data, DataConfig))


def test_the_default_run_is_the_code_defaults() -> None:
    """CharLM and CharDataModule used from a notebook train the same model, on the same windows, as
    `python train.py`: the composed config adds nothing to the definitions' own defaults."""
    cfg = compose_train([])
    assert typed(cfg.model, NetworkConfig) == NetworkConfig()
    assert OmegaConf.to_container(cfg.optimizer) == asdict(OptimizerConfig())
    data = typed(cfg.data, DataConfig)
    assert {**asdict(data), "corpus": None, "data_dir": "data", "cache_dir": "data/cache"} == asdict(
        DataConfig()
    )


def test_a_setting_of_the_wrong_type_is_refused_as_the_config_composes() -> None:
    with pytest.raises(Exception, match="model.num_layers=two") as refused:
        compose_train(["model.num_layers=two"])
    assert "could not be converted to Integer" in str(refused.value.__cause__)
    with pytest.raises(Exception, match="model.hiden") as refused:
        compose_train(["model.hiden=3"])
    assert "Key 'hiden' not in 'NetworkConfig'" in str(refused.value.__cause__)
    assert compose_train(["optimizer=sgd"]).optimizer.momentum == 0.9  # an optimizer's own arguments pass


def test_generate_config_defaults_match_the_sampler() -> None:
    """`python generate.py` and `charlm.generate` in a notebook write the same way by default."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=["ckpt=run"])
    signature = inspect.signature(generate).parameters
    for key in ("prompt", "length", "temperature", "top_k", "num_samples", "seed", "stop_at_newline"):
        assert signature[key].default == cfg[key], key


@pytest.mark.parametrize(
    "value",
    ["¿Qué es, Sancho?", "JOSÉ", "it's", "a\\'b", "ends in \\", "two\nlines", "", "1234", "null"]
    + ['"Hola"', "'Sancho'", "${oc.env:HOME}", "[1,2]", "a=b"],
)
def test_a_prompt_reaches_generation_literally(value: str) -> None:
    argv = ["generate.py", f"prompt={value}"]
    quote_free_text(argv, text=["prompt"])
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        assert compose("generate", overrides=["ckpt=run", argv[1]]).prompt == value


def test_only_paths_hydra_rejects_are_quoted_and_nothing_else() -> None:
    kept = ["--config-name=train", "-m", "data.path=a.txt,b.txt", "ckpt_path=null", "x=¿", "data.splits=[0.8"]
    argv = ["train.py", "++data.path=~/poemas/canción.txt", *kept]
    quote_free_text(argv, paths=["data.path", "ckpt_path"])
    assert argv == ["train.py", "++data.path='~/poemas/canción.txt'", *kept]
