"""The char-RNN itself: characters in, a distribution over the next character out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.cells import ScratchRNN
from charlm.errors import CharLMError

# torch.nn's fused layers: one cuDNN kernel per layer on GPU.
CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
IMPLS = ("fused", "scratch")
INITS = ("torch", "keras")

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def keras_init(rnn: nn.Module) -> None:
    """Keras's defaults for recurrent layers: glorot-uniform input kernels, orthogonal recurrent
    kernels, zero biases."""
    for layer in range(rnn.num_layers):
        nn.init.xavier_uniform_(getattr(rnn, f"weight_ih_l{layer}"))
        # orthonormal columns: Keras's [hidden, gates x hidden] kernel, transposed, has orthonormal rows
        nn.init.orthogonal_(getattr(rnn, f"weight_hh_l{layer}"))
        nn.init.zeros_(getattr(rnn, f"bias_ih_l{layer}"))
        nn.init.zeros_(getattr(rnn, f"bias_hh_l{layer}"))


def open_forget_gates(rnn: nn.Module) -> None:
    """The LSTM's forget-gate bias (gates i, f, g, o) to 1, counting both of torch's bias vectors."""
    hidden = rnn.hidden_size
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            getattr(rnn, f"bias_ih_l{layer}")[hidden : 2 * hidden] = 1.0
            getattr(rnn, f"bias_hh_l{layer}")[hidden : 2 * hidden] = 0.0


class LockedDropout(nn.Module):
    """Dropout with one mask per sequence, the same at every time step (Gal & Ghahramani 2016,
    AWD-LSTM's "locked" dropout): a unit is dropped for a whole batch of characters, not for one,
    so the network cannot route around the hole a step later. Inputs are batch first."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        mask = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1 - self.p) / (1 - self.p)
        return x * mask


def _layer_state(state: State | None, layer: int) -> State | None:
    """Layer `layer`'s part of a torch.nn multi-layer state, kept 3-D, as a one-layer module takes it."""
    if state is None:
        return None
    part = slice(layer, layer + 1)
    return tuple(s[part] for s in state) if isinstance(state, tuple) else state[part]


class LayerStack(nn.Module):
    """One-layer recurrent modules in a stack, with locked dropout between them: torch.nn's
    multi-layer modules draw a new mask for every character there. The state goes in and out
    as torch.nn's does ([num_layers, batch, hidden], a pair for the LSTM)."""

    def __init__(self, layers: list[nn.Module], dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.drop = LockedDropout(dropout)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        finals = []
        for index, layer in enumerate(self.layers):
            x, final = layer(self.drop(x) if index else x, _layer_state(state, index))
            finals.append(final)
        if isinstance(finals[0], tuple):
            return x, tuple(torch.cat(parts) for parts in zip(*finals, strict=True))
        return x, torch.cat(finals)


class CharRNN(nn.Module):
    """Embedding (or one-hot) -> stacked RNN/LSTM/GRU -> linear head over the vocabulary.

    Dropout, when set, applies to the inputs, between layers and before the head, as in
    pytorch/examples word_language_model. `embedding_dim=None` feeds one-hot vectors instead.
    `impl="scratch"` swaps torch.nn's fused layers for cells written out from their equations
    (`charlm.cells`), with the same weights. `locked_dropout` draws one dropout mask per sequence
    instead of one per character (AWD-LSTM); between layers that takes one module per layer
    (`LayerStack`). `tie_weights` shares the embedding with the head, as
    language models do (Press & Wolf 2017): it needs `embedding_dim == hidden`.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        hidden: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        embedding_dim: int | None = 64,
        locked_dropout: bool = False,
        impl: str = "fused",
        init: str = "torch",
        unit_forget_bias: bool = False,
        tie_weights: bool = False,
        bidirectional: bool = False,
    ):
        super().__init__()
        for name, value, choices in (("cell", cell, CELLS), ("impl", impl, IMPLS), ("init", init, INITS)):
            if value not in choices:
                raise CharLMError(f"unknown model.{name} '{value}': choose one of {', '.join(choices)}")
        for name, value in (("hidden", hidden), ("num_layers", num_layers)):
            if value < 1:
                raise CharLMError(f"{name} must be at least 1, got {value}")
        if not 0 <= dropout < 1:
            raise CharLMError(f"dropout must be in [0, 1), got {dropout}")
        if bidirectional:
            raise CharLMError(
                "model.bidirectional=true cannot predict the next character: its backward pass reads the "
                "text from the end, so at every position it has already seen the character it must "
                "predict (and at generation time there is no text after it to read). Drop it"
            )
        if unit_forget_bias and cell != "lstm":
            raise CharLMError(f"model.unit_forget_bias is the LSTM's forget gate: model={cell} has none")
        if tie_weights and embedding_dim != hidden:
            raise CharLMError(
                f"model.tie_weights shares the embedding with the head, so it needs model.embedding_dim "
                f"equal to hidden ({hidden}), got {embedding_dim}"
            )
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None

        def recurrent(input_size: int, layers: int, between: float) -> nn.Module:
            if impl == "fused":
                return CELLS[cell](input_size, hidden, layers, dropout=between, batch_first=True)
            return ScratchRNN(cell, input_size, hidden, layers, dropout=between)

        input_size = embedding_dim or vocab_size
        if locked_dropout and num_layers > 1:
            sizes = [input_size] + [hidden] * (num_layers - 1)
            layers = [recurrent(size, 1, 0.0) for size in sizes]
            self.rnn = LayerStack(layers, dropout)
        else:
            layers = [recurrent(input_size, num_layers, dropout if num_layers > 1 else 0.0)]
            self.rnn = layers[0]
        for layer in layers:
            if init == "keras":
                keras_init(layer)
            if unit_forget_bias:
                open_forget_gates(layer)
        self.drop = LockedDropout(dropout) if locked_dropout else nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits [batch, time, vocab] for ids [batch, time], and the final recurrent state."""
        ids = ids.long()
        x = self.embedding(ids) if self.embedding is not None else F.one_hot(ids, self.vocab_size)
        out, state = self.rnn(self.drop(x.float()), state)
        return self.head(self.drop(out)), state
