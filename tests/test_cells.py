"""The from-scratch cells compute what torch.nn's fused layers compute, with the same weights."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_model import train_tiny
from torch import nn

from charlm.errors import CharLMError
from charlm.generation import generate
from charlm.models.cells import ScratchRNN
from charlm.models.checkpoints import load_model
from charlm.models.network import CELLS, CharRNN, NetworkConfig

CASES = [(cell, layers) for cell in CELLS for layers in (1, 2)]


def _pair(cell: str, layers: int) -> tuple[nn.Module, ScratchRNN]:
    fused = CELLS[cell](5, 8, layers, batch_first=True)
    return fused, ScratchRNN(cell, 5, 8, layers)


def _state(cell: str, layers: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    h = torch.randn(layers, 3, 8)
    return (h, torch.randn(layers, 3, 8)) if cell == "lstm" else h


def _same(a: torch.Tensor | tuple, b: torch.Tensor | tuple) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cell, layers", CASES)
@pytest.mark.parametrize("direction", ["fused into scratch", "scratch into fused"])
def test_scratch_and_fused_give_the_same_outputs_and_states(cell: str, layers: int, direction: str) -> None:
    torch.manual_seed(0)
    fused, scratch = _pair(cell, layers)
    source, target = (fused, scratch) if direction == "fused into scratch" else (scratch, fused)
    target.load_state_dict(source.state_dict())  # same names, same shapes, same gate order
    x = torch.randn(3, 7, 5)
    for state in (None, _state(cell, layers)):
        fused_out, fused_state = fused(x, state)
        scratch_out, scratch_state = scratch(x, state)
        assert _same(scratch_out, fused_out) and _same(scratch_state, fused_state)


@pytest.mark.parametrize("cell, layers", CASES)
def test_scratch_gradients_match_the_fused_ones(cell: str, layers: int) -> None:
    torch.manual_seed(0)
    fused, scratch = _pair(cell, layers)
    scratch.load_state_dict(fused.state_dict())
    x = torch.randn(3, 7, 5)
    for layer in (fused, scratch):
        output, _ = layer(x)
        output.pow(2).sum().backward()
    grads = dict(fused.named_parameters())
    assert all(torch.allclose(p.grad, grads[name].grad, atol=1e-5) for name, p in scratch.named_parameters())


@pytest.mark.parametrize("stateful", [False, True], ids=["windows", "stateful"])
@pytest.mark.slow
def test_a_scratch_model_trains_as_the_fused_one(tmp_path: Path, text_file: Path, stateful: bool) -> None:
    """Same seed, so the same initial weights (the same draws, in the same order), the same steps;
    stateful, the scratch layers carry the same state from batch to batch."""
    common = ["model.num_layers=2", f"data.stateful={stateful}"]
    fused = train_tiny(tmp_path / "fused", text_file, *common)
    scratch = train_tiny(tmp_path / "scratch", text_file, *common, "model.impl=scratch")
    assert scratch == pytest.approx(fused, rel=1e-4)
    model = load_model(tmp_path / "scratch" / "run")  # and it writes text, one character a step
    assert isinstance(model.net.rnn, ScratchRNN)
    assert len(generate(model, "En un", length=20, seed=0)[0]) == 25


@pytest.mark.parametrize("cell", list(CELLS))
def test_a_compiled_scratch_network_computes_what_the_eager_one_does(cell: str) -> None:
    torch.manual_seed(0)
    net = CharRNN(20, NetworkConfig(cell=cell, hidden=16, num_layers=2, embedding_dim=8, impl="scratch"))
    ids = torch.randint(0, 20, (4, 6))
    eager, _ = net(ids)
    net.compile()
    compiled, _ = net(ids)
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_keras_initialisation() -> None:
    net = CharRNN(
        20, NetworkConfig(hidden=16, num_layers=2, embedding_dim=8, init="keras", unit_forget_bias=True)
    )
    for layer in range(2):
        w_ih, w_hh = getattr(net.rnn, f"weight_ih_l{layer}"), getattr(net.rnn, f"weight_hh_l{layer}")
        fan_in, fan_out = w_ih.shape[1], w_ih.shape[0]
        # glorot-uniform: within its bound, and past torch's 1/sqrt(hidden) = 0.25
        assert 1 / math.sqrt(16) < w_ih.abs().max() <= math.sqrt(6 / (fan_in + fan_out))
        assert torch.allclose(w_hh.T @ w_hh, torch.eye(16), atol=1e-5)  # orthogonal
        bias = getattr(net.rnn, f"bias_ih_l{layer}") + getattr(net.rnn, f"bias_hh_l{layer}")
        assert torch.equal(bias[16:32], torch.ones(16))  # the forget gate, open
        assert torch.equal(torch.cat([bias[:16], bias[32:]]), torch.zeros(48))


def test_torch_initialisation_with_a_unit_forget_bias() -> None:
    net = CharRNN(20, NetworkConfig(hidden=16, num_layers=1, embedding_dim=8, unit_forget_bias=True))
    assert net.rnn.weight_hh_l0.abs().max() <= 1 / math.sqrt(16)  # torch.nn's uniform
    assert torch.equal((net.rnn.bias_ih_l0 + net.rnn.bias_hh_l0)[16:32], torch.ones(16))


def test_tied_weights_share_one_tensor_and_train(tmp_path: Path, text_file: Path) -> None:
    net = CharRNN(20, NetworkConfig(cell="gru", hidden=8, num_layers=1, embedding_dim=8, tie_weights=True))
    assert net.head.weight is net.embedding.weight
    untied = CharRNN(20, NetworkConfig(cell="gru", hidden=8, num_layers=1, embedding_dim=8))
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in untied.parameters()) - 20 * 8
    best = train_tiny(tmp_path, text_file, "model.embedding_dim=16", "model.tie_weights=true")
    assert best < math.log(len(set(text_file.read_text(encoding="utf-8"))))
    model = load_model(tmp_path / "run")
    assert model.net.head.weight is model.net.embedding.weight  # still one tensor after loading
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(model.net.embedding.weight, saved["net.embedding.weight"])  # the trained one


def test_a_state_of_the_wrong_shape_is_refused_as_torch_nn_refuses_it() -> None:
    scratch = ScratchRNN("lstm", 5, 8, num_layers=2)
    state = (torch.zeros(2, 1, 8), torch.zeros(2, 1, 8))  # batch 1 would broadcast over batch 3
    with pytest.raises(CharLMError, match=r"expected a state of shape \(2, 3, 8\), got \(2, 1, 8\)"):
        scratch(torch.randn(3, 7, 5), state)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"bidirectional": True},
            "cannot predict the next character: its backward pass reads the text from the end",
        ),
        ({"tie_weights": True, "embedding_dim": 8}, "needs model.embedding_dim equal to hidden (16), got 8"),
        ({"cell": "gru", "unit_forget_bias": True}, "model.unit_forget_bias is the LSTM's forget gate"),
        ({"impl": "cudnn"}, "unknown model.impl 'cudnn': choose one of fused, scratch"),
        ({"init": "xavier"}, "unknown model.init 'xavier': choose one of torch, keras"),
    ],
)
def test_settings_that_make_no_sense_are_refused_with_the_reason(kwargs: dict, message: str) -> None:
    with pytest.raises(CharLMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        CharRNN(20, NetworkConfig(**{"cell": "lstm", "hidden": 16, **kwargs}))
