"""RNN, LSTM and GRU written out from their equations, as the lessons build them by hand.

Each layer keeps torch.nn's parameter names, shapes and gate order (`weight_ih_l0` is
[gates x hidden, input], LSTM gates i, f, g, o; GRU gates r, z, n), so a state dict moves between
a `ScratchRNN` and the fused `torch.nn.RNN/LSTM/GRU` both ways and both compute the same thing
(tested to 1e-5 in float32). The fused layers run one cuDNN kernel per layer on GPU; these run one
small step per character, in Python: slow, and readable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charlm.errors import CharLMError

State = Tensor | tuple[Tensor, Tensor]


def rnn_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """h' = tanh(x W_xh + h W_hh + b)."""
    return torch.tanh(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))


def lstm_step(
    x: Tensor, state: tuple[Tensor, Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor
) -> tuple[Tensor, Tensor]:
    """Input, forget and output gates decide what enters, stays in and leaves the cell state c."""
    h, c = state
    i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(x: Tensor, h: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor) -> Tensor:
    """The reset gate r picks how much of h the candidate n sees; the update gate z mixes h and n."""
    x_r, x_z, x_n = F.linear(x, w_ih, b_ih).chunk(3, dim=-1)
    h_r, h_z, h_n = F.linear(h, w_hh, b_hh).chunk(3, dim=-1)
    r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


STEPS = {"rnn": rnn_step, "lstm": lstm_step, "gru": gru_step}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


class ScratchRNN(nn.Module):
    """A stack of `num_layers` cells of one kind, with dropout between layers, read batch first:
    the interface of `torch.nn.RNN/LSTM/GRU(batch_first=True)` (no bidirectional, no projections)."""

    def __init__(
        self, cell: str, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0
    ):
        super().__init__()
        self.cell, self.hidden_size, self.num_layers, self.dropout = cell, hidden_size, num_layers, dropout
        self.step = STEPS[cell]
        gates = GATES[cell] * hidden_size
        for layer in range(num_layers):
            inputs = input_size if layer == 0 else hidden_size
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(gates, inputs)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(gates, hidden_size)))
            self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.empty(gates)))
            self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.empty(gates)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torch.nn's: every weight and bias uniform in +-1/sqrt(hidden_size)."""
        bound = 1 / math.sqrt(self.hidden_size)
        for weight in self.parameters():
            nn.init.uniform_(weight, -bound, bound)

    def _layer(self, layer: int) -> list[Tensor]:
        return [
            getattr(self, f"{name}_l{layer}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        ]

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """Outputs [batch, time, hidden] of the last layer, and the final state of every layer
        ([num_layers, batch, hidden]; for the LSTM a pair (h, c)), as torch.nn returns them."""
        batch = x.shape[0]
        if state is None:
            zeros = x.new_zeros(self.num_layers, batch, self.hidden_size)
            state = (zeros, zeros) if self.cell == "lstm" else zeros
        expected = (self.num_layers, batch, self.hidden_size)
        for part in state if isinstance(state, tuple) else (state,):
            if tuple(part.shape) != expected:  # torch.nn checks too; broadcasting would hide it
                raise CharLMError(f"expected a state of shape {expected}, got {tuple(part.shape)}")
        finals = []
        for layer in range(self.num_layers):
            weights = self._layer(layer)
            h = (state[0][layer], state[1][layer]) if self.cell == "lstm" else state[layer]
            outputs = []
            for t in range(x.shape[1]):
                h = self.step(x[:, t], h, *weights)
                outputs.append(h[0] if self.cell == "lstm" else h)
            x = torch.stack(outputs, dim=1)
            if layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, self.training)  # between layers, as torch.nn does
            finals.append(h)
        if self.cell == "lstm":
            return x, (torch.stack([h for h, _ in finals]), torch.stack([c for _, c in finals]))
        return x, torch.stack(finals)
