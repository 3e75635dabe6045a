"""The char-RNN itself: characters in, a distribution over the next character out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from charlm.errors import CharLMError

# torch.nn's fused layers: one cuDNN kernel per layer on GPU.
CELLS: dict[str, type[nn.RNNBase]] = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}

State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class CharRNN(nn.Module):
    """Embedding (or one-hot) -> stacked RNN/LSTM/GRU -> linear head over the vocabulary.

    Dropout, when set, applies to the inputs, between layers and before the head, as in
    pytorch/examples word_language_model. `embedding_dim=None` feeds one-hot vectors instead.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        hidden: int = 256,
        num_layers: int = 2,
        dropout: float = 0.0,
        embedding_dim: int | None = 64,
    ):
        super().__init__()
        if cell not in CELLS:
            raise CharLMError(f"unknown cell '{cell}': choose one of {', '.join(CELLS)}")
        for name, value in (("hidden", hidden), ("num_layers", num_layers)):
            if value < 1:
                raise CharLMError(f"{name} must be at least 1, got {value}")
        if not 0 <= dropout < 1:
            raise CharLMError(f"dropout must be in [0, 1), got {dropout}")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None
        self.rnn = CELLS[cell](
            input_size=embedding_dim or vocab_size,
            hidden_size=hidden,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits [batch, time, vocab] for ids [batch, time], and the final recurrent state."""
        ids = ids.long()
        x = self.embedding(ids) if self.embedding is not None else F.one_hot(ids, self.vocab_size)
        out, state = self.rnn(self.drop(x.float()), state)
        return self.head(self.drop(out)), state
