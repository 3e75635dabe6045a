"""The experiment presets compose to what they promise, and each one trains through the pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose_train
from omegaconf import OmegaConf
from test_model import scalars

from charlm.models.checkpoints import load_model
from charlm.training.run import train

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))

# What each preset's comment, the README and docs/presets.md promise, key by key.
PROMISES = {
    "shakespeare_char": {
        "data.corpus.name": "tinyshakespeare",
        "data.splits": [0.9, 0.1, 0.0],
        "data.stateful": True,
        "model.tie_weights": True,
        "model.locked_dropout": True,
        "optimizer._target_": "torch.optim.AdamW",
        "scheduler._target_": "charlm.models.optimization.cosine",
    },
    "quijote_cpu": {
        "data.corpus.name": "quijote",
        "model.cell": "lstm",
        "model.hidden": 256,
        "model.num_layers": 2,
        "data.stateful": True,
        "optimizer._target_": "torch.optim.AdamW",
    },
    "quijote_letters": {"data.corpus.name": "quijote", "data.lowercase": True, "data.letters_only": True},
    "lesson_gru32": {
        "data.lowercase": True,
        "data.letters_only": True,
        "model.cell": "gru",
        "model.hidden": 32,
        "model.num_layers": 1,
        "model.embedding_dim": None,
        "data.seq_len": 32,
        "data.stride": 1,
        "optimizer._target_": "torch.optim.Adadelta",
        "optimizer.lr": 4.0,
        "trainer.gradient_clip_val": 1.0,
    },
    "names": {"data.corpus._target_": "charlm.data.corpora.CensusNames"},
}


def test_every_preset_is_promised_and_in_the_readme() -> None:
    assert sorted(PROMISES) == PRESETS
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in PRESETS:
        assert f"experiment={name}" in readme, name


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_composes_to_what_it_promises(name: str) -> None:
    cfg = compose_train([f"experiment={name}"])
    for key, value in PROMISES[name].items():
        found = OmegaConf.select(cfg, key)
        assert (OmegaConf.to_container(found) if OmegaConf.is_config(found) else found) == value, key


def test_quijote_letters_is_quijote_cpu_on_the_lessons_text() -> None:
    cpu, letters = (
        OmegaConf.to_container(compose_train([f"experiment={name}"]))
        for name in ("quijote_cpu", "quijote_letters")
    )
    assert (letters["data"].pop("lowercase"), letters["data"].pop("letters_only")) == (True, True)
    cpu["data"].pop("lowercase"), cpu["data"].pop("letters_only")
    assert letters == cpu


@pytest.mark.parametrize("name", PRESETS)
def test_a_preset_trains_on_a_small_corpus(name: str, tmp_path: Path, text_file: Path) -> None:
    """Each preset at a tiny size (its own recipe otherwise: optimizer, schedule, dropout, layout)."""
    tiny = [o for o in TINY if not o.startswith(("model.embedding_dim", "model.num_layers"))]
    if OmegaConf.select(compose_train([f"experiment={name}"]), "scheduler.warmup_steps"):
        tiny.append("scheduler.warmup_steps=3")  # of 30 steps
    cfg = compose_train(
        [
            f"experiment={name}",
            "data=textfile",
            f"data.path={text_file}",
            f"paths.output_dir={tmp_path / 'run'}",
            "hidden=16",
            *tiny,
            "++trainer.precision=32-true",
            "++trainer.max_steps=30",
        ]
    )
    best = train(cfg)
    vocab = load_model(tmp_path / "run").vocab
    assert math.isfinite(best) and best < math.log(len(vocab))
    assert ("test/loss" in scalars(tmp_path / "run")) == (cfg.data.splits[2] > 0)  # 90/10: no test
