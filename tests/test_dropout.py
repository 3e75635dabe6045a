"""Locked (per-sequence) dropout, AWD-LSTM style: one mask for every character of a sequence."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_model import train_tiny

from charlm.generation import generate
from charlm.models.checkpoints import load_model
from charlm.models.network import CELLS, CharRNN, LayerStack, LockedDropout, NetworkConfig


def test_locked_dropout_drops_the_same_units_at_every_step() -> None:
    drop = LockedDropout(0.5).train()
    x = torch.ones(4, 30, 64)
    out = drop(x)
    assert torch.equal(out, out[:, :1].expand_as(out))  # the mask of step 0 at every step
    assert set(out.unique().tolist()) == {0.0, 2.0}  # kept units scaled by 1 / (1 - p)
    assert 0.35 < (out == 0).float().mean() < 0.65
    assert not torch.equal(out[0], out[1])  # one mask per sequence, not per batch
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("impl", ["fused", "scratch"])
def test_a_layer_stack_computes_what_one_multi_layer_module_does(cell: str, impl: str) -> None:
    """Without dropout, the one-module-per-layer stack is torch.nn's 2-layer module, state included."""
    torch.manual_seed(0)
    whole = CharRNN(20, NetworkConfig(cell=cell, hidden=8, num_layers=2, embedding_dim=6, impl=impl))
    stacked = CharRNN(
        20, NetworkConfig(cell=cell, hidden=8, num_layers=2, embedding_dim=6, impl=impl, locked_dropout=True)
    )
    assert isinstance(stacked.rnn, LayerStack)
    weights = whole.state_dict()
    for name in list(weights):  # rnn.weight_ih_l1 -> rnn.layers.1.weight_ih_l0
        if name.startswith("rnn."):
            stem, layer = name.removeprefix("rnn.").rsplit("_l", 1)
            weights[f"rnn.layers.{layer}.{stem}_l0"] = weights.pop(name)
    stacked.load_state_dict(weights)
    ids = torch.randint(0, 20, (3, 7))
    h = torch.randn(2, 3, 8)
    state = (h, torch.randn(2, 3, 8)) if cell == "lstm" else h
    for start in (None, state):
        (logits_a, state_a), (logits_b, state_b) = whole.eval()(ids, start), stacked.eval()(ids, start)
        assert torch.allclose(logits_a, logits_b, atol=1e-5)
        for a, b in zip(*(s if isinstance(s, tuple) else (s,) for s in (state_a, state_b)), strict=True):
            assert a.shape == b.shape == (2, 3, 8) and torch.allclose(a, b, atol=1e-5)


def test_between_layers_the_mask_is_locked_too() -> None:
    net = CharRNN(20, NetworkConfig(hidden=32, embedding_dim=8, dropout=0.5, locked_dropout=True))
    seen = {}

    def keep_input(module: torch.nn.Module, args: tuple, out: object) -> None:
        seen["input"] = args[0]

    net.rnn.layers[1].register_forward_hook(keep_input)
    net.train()(torch.randint(0, 20, (4, 25)))
    dropped = seen["input"] == 0
    assert dropped.any() and torch.equal(dropped, dropped[:, :1].expand_as(dropped))


def test_a_locked_dropout_model_trains_saves_and_writes(tmp_path: Path, text_file: Path) -> None:
    best = train_tiny(
        tmp_path,
        text_file,
        "model.num_layers=2",
        "model.dropout=0.2",
        "model.locked_dropout=true",
        "++trainer.max_steps=30",
    )
    assert best < math.log(len(set(text_file.read_text(encoding="utf-8"))))
    model = load_model(tmp_path / "run")
    assert isinstance(model.net.rnn, LayerStack)
    assert len(generate(model, prompt="En ", length=20, seed=0)[0]) == 23
