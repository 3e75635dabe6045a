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


class CharRNN(nn.Module):
    """Embedding (or one-hot) -> stacked RNN/LSTM/GRU -> linear head over the vocabulary.

    Dropout, when set, applies to the inputs, between layers and before the head, as in
    pytorch/examples word_language_model. `embedding_dim=None` feeds one-hot vectors instead.
    `impl="scratch"` swaps torch.nn's fused layers for cells written out from their equations
    (`charlm.cells`), with the same weights. `tie_weights` shares the embedding with the head, as
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
        input_size, between = embedding_dim or vocab_size, dropout if num_layers > 1 else 0.0
        if impl == "fused":
            self.rnn = CELLS[cell](input_size, hidden, num_layers, dropout=between, batch_first=True)
        else:
            self.rnn = ScratchRNN(cell, input_size, hidden, num_layers, dropout=between)
        if init == "keras":
            keras_init(self.rnn)
        if unit_forget_bias:
            open_forget_gates(self.rnn)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)
        if tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits [batch, time, vocab] for ids [batch, time], and the final recurrent state."""
        ids = ids.long()
        x = self.embedding(ids) if self.embedding is not None else F.one_hot(ids, self.vocab_size)
        out, state = self.rnn(self.drop(x.float()), state)
        return self.head(self.drop(out)), state
