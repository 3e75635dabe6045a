"""The regularisation large LSTMs need, AWD-LSTM style: locked (per-sequence) dropout, one mask for
every character of a sequence; weight drop (DropConnect on the recurrent weights); embedding dropout."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_model import train_tiny

from charlm.errors import CharLMError
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


def recurrent_weights(net: CharRNN) -> dict[str, torch.Tensor]:
    return {n: w.detach().clone() for n, w in net.rnn.named_parameters() if "weight_hh" in n}


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_weight_drop_masks_the_recurrent_weights_for_one_batch_and_leaves_them_be(cell: str) -> None:
    torch.manual_seed(0)
    config = NetworkConfig(cell=cell, hidden=16, num_layers=2, embedding_dim=8, weight_drop=0.5)
    net = CharRNN(20, config).train()
    plain = CharRNN(20, NetworkConfig(cell=cell, hidden=16, num_layers=2, embedding_dim=8))
    plain.load_state_dict(net.state_dict())
    before = recurrent_weights(net)
    ids = torch.randint(0, 20, (4, 12))
    first, second = net(ids)[0], net(ids)[0]
    assert not torch.equal(first, second)  # a new mask for each batch
    assert all(torch.equal(before[n], w) for n, w in recurrent_weights(net).items())  # not changed in place
    assert torch.equal(net.eval()(ids)[0], plain.eval()(ids)[0])  # no mask at evaluation

    net.train()
    first.sum().backward()  # the gradient reaches the weights through the mask: zero where dropped
    grad = net.rnn.weight_hh_l0.grad
    assert grad is not None and (grad == 0).float().mean() > 0.3


def test_weight_drop_draws_the_same_masks_for_fused_and_scratch_layers() -> None:
    """The scratch cells share the fused layers' weights and equations: with weight drop too."""
    outputs = {}
    for impl in ("fused", "scratch"):
        torch.manual_seed(0)
        config = NetworkConfig(hidden=16, num_layers=2, embedding_dim=8, weight_drop=0.3, impl=impl)
        net = CharRNN(20, config).train()
        outputs[impl] = net(torch.arange(20).view(2, 10))[0]
    torch.testing.assert_close(outputs["fused"], outputs["scratch"])


def test_weight_drop_keeps_the_fused_layer_as_it_is() -> None:
    """One call with stand-in weights: the next call of torch.nn's module runs on its own again."""
    torch.manual_seed(0)
    net = CharRNN(20, NetworkConfig(hidden=16, embedding_dim=8, weight_drop=0.5))
    assert isinstance(net.rnn, torch.nn.LSTM)  # one module, one fused call for both layers
    flat_before = list(net.rnn._flat_weights)
    net.train()(torch.randint(0, 20, (3, 7)))
    net.eval()(torch.randint(0, 20, (3, 7)))
    assert all(a is b for a, b in zip(net.rnn._flat_weights, flat_before, strict=True))


def test_embedding_dropout_drops_whole_characters() -> None:
    torch.manual_seed(0)
    net = CharRNN(20, NetworkConfig(hidden=16, embedding_dim=8, embedding_dropout=0.5)).train()
    seen = {}
    net.rnn.register_forward_hook(lambda module, args, out: seen.update(x=args[0]))
    ids = torch.arange(20).repeat(3, 1)  # each character three times, in three sequences
    net(ids)
    dropped = (seen["x"] == 0).all(dim=-1)  # a zero vector: the character's row dropped
    assert 0 < dropped[0].sum() < 20
    assert torch.equal(dropped, dropped[:1].expand_as(dropped))  # every use of a dropped character
    kept = ~dropped[0]
    torch.testing.assert_close(seen["x"][0, kept], net.embedding.weight[kept] * 2)  # scaled by 1 / (1 - p)
    net.eval()(ids)
    assert torch.equal(seen["x"], net.embedding(ids))


@pytest.mark.parametrize(
    "setting, error",
    [
        ({"weight_drop": 1.0}, "model.weight_drop must be in \\[0, 1\\), got 1.0"),
        ({"embedding_dropout": -0.1}, "model.embedding_dropout must be in"),
        ({"embedding_dropout": 0.1, "embedding_dim": None}, "set an embedding_dim"),
    ],
)
def test_dropout_settings_out_of_range_are_refused(setting: dict, error: str) -> None:
    with pytest.raises(CharLMError, match=error):
        CharRNN(20, NetworkConfig(**setting))


def test_a_weight_dropped_model_trains_saves_and_writes(tmp_path: Path, text_file: Path) -> None:
    best = train_tiny(
        tmp_path,
        text_file,
        "model.num_layers=2",
        "model.weight_drop=0.3",
        "model.embedding_dropout=0.1",
        "++trainer.max_steps=30",
    )
    assert best < math.log(len(set(text_file.read_text(encoding="utf-8"))))
    model = load_model(tmp_path / "run")
    assert model.net.weight_drop == 0.3 and model.net.embedding_dropout == 0.1
    assert len(generate(model, prompt="En ", length=20, seed=0)[0]) == 23
