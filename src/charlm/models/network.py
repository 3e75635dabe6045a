"""The char-RNN itself: characters in, a distribution over the next character out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from charlm.errors import CharLMError
from charlm.models.cells import ScratchRNN
from charlm.resumable import resumable

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


@dataclass(kw_only=True)
class NetworkConfig:
    """Every setting of the network (`model.<name>` on the command line), with its default.

    The one definition: `python train.py` composes it (conf/model/ picks the cell), Hydra checks
    overrides against its types, and a checkpoint is refused for resuming when a field marked
    `resume` differs (`charlm.training.resume`).
    """

    # rnn (Elman, tanh), lstm or gru: the files in conf/model/ set it
    cell: str = resumable("lstm")
    hidden: int = resumable(256)
    num_layers: int = resumable(2)
    # on the inputs, between layers and before the head
    dropout: float = 0.0
    # DropConnect on the hidden-to-hidden weights (AWD-LSTM's weight drop): one mask per batch, the
    # same at every character; the fused layer stays one cuDNN kernel
    weight_drop: float = 0.0
    # drops whole characters from the embedding (AWD-LSTM's embedding dropout): every use of a
    # dropped character in a batch gets a zero vector; needs embedding_dim
    embedding_dropout: float = 0.0
    # null feeds one-hot vectors, as some of the lessons do
    embedding_dim: int | None = resumable(64)
    # one dropout mask per sequence, not per character (AWD-LSTM's locked dropout); one module per layer
    locked_dropout: bool = resumable(False)
    # torch.compile the network; around torch.nn's fused RNN/LSTM/GRU only (Dynamo does not trace them)
    compile: bool = False
    # fused: torch.nn's layers (cuDNN on GPU); scratch: the cells written out from their equations
    # (charlm/models/cells.py), same weights, same results in float32, one Python step per character
    impl: str = "fused"
    # torch: torch.nn's uniform +-1/sqrt(hidden); keras: glorot-uniform input, orthogonal recurrent, zero bias
    init: str = "torch"
    # the LSTM's forget-gate bias starts at 1 (Keras's unit_forget_bias)
    unit_forget_bias: bool = False
    # share the embedding and the head's weights; needs embedding_dim == hidden
    tie_weights: bool = resumable(False)
    # refused, with the reason: a next-character model cannot read the text backwards
    bidirectional: bool = False

    def check(self) -> None:
        """One clear line for a value out of range or a combination that cannot work."""
        for name, choices in (("cell", CELLS), ("impl", IMPLS), ("init", INITS)):
            if getattr(self, name) not in choices:
                raise CharLMError(
                    f"unknown model.{name} '{getattr(self, name)}': choose one of {', '.join(choices)}"
                )
        # hidden as typed (`hidden=32` sets every model's)
        for name, value in (("hidden", self.hidden), ("model.num_layers", self.num_layers)):
            if value < 1:
                raise CharLMError(f"{name} must be at least 1, got {value}")
        if self.embedding_dim is not None and self.embedding_dim < 1:
            raise CharLMError(
                f"model.embedding_dim must be at least 1 (null: one-hot inputs), got {self.embedding_dim}"
            )
        for name in ("dropout", "weight_drop", "embedding_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise CharLMError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.embedding_dropout and not self.embedding_dim:
            raise CharLMError(
                "model.embedding_dropout drops rows of the embedding, and model.embedding_dim=null feeds "
                "one-hot vectors instead: set an embedding_dim, or model.dropout for the inputs"
            )
        if self.bidirectional:
            raise CharLMError(
                "model.bidirectional=true cannot predict the next character: its backward pass reads the "
                "text from the end, so at every position it has already seen the character it must "
                "predict (and at generation time there is no text after it to read). Drop it"
            )
        if self.unit_forget_bias and self.cell != "lstm":
            raise CharLMError(f"model.unit_forget_bias is the LSTM's forget gate: model={self.cell} has none")
        if self.tie_weights and self.embedding_dim != self.hidden:
            raise CharLMError(
                f"model.tie_weights shares the embedding with the head, so it needs model.embedding_dim "
                f"equal to hidden ({self.hidden}), got {self.embedding_dim}"
            )


class CharRNN(nn.Module):
    """Embedding (or one-hot) -> stacked RNN/LSTM/GRU -> linear head over the vocabulary.

    Dropout, when set, applies to the inputs, between layers and before the head, as in
    pytorch/examples word_language_model. `embedding_dim=None` feeds one-hot vectors instead.
    `impl="scratch"` swaps torch.nn's fused layers for cells written out from their equations
    (`charlm.models.cells`), with the same weights. `locked_dropout` draws one dropout mask per
    sequence instead of one per character (AWD-LSTM); between layers that takes one module per
    layer (`LayerStack`). `weight_drop` and `embedding_dropout` are AWD-LSTM's DropConnect on the
    recurrent weights and dropout of whole characters' embeddings. `tie_weights` shares the
    embedding with the head, as language models do (Press & Wolf 2017): it needs
    `embedding_dim == hidden`. `compile` is applied by `CharLM`.
    """

    def __init__(self, vocab_size: int, config: NetworkConfig | None = None):
        super().__init__()
        config = config or NetworkConfig()
        config.check()
        self.vocab_size = vocab_size
        cell, hidden, dropout = config.cell, config.hidden, config.dropout
        embedding_dim = config.embedding_dim
        self.embedding = nn.Embedding(vocab_size, embedding_dim) if embedding_dim else None

        def recurrent(input_size: int, layers: int, between: float) -> nn.Module:
            if config.impl == "fused":
                return CELLS[cell](input_size, hidden, layers, dropout=between, batch_first=True)
            return ScratchRNN(cell, input_size, hidden, layers, dropout=between)

        input_size = embedding_dim or vocab_size
        num_layers = config.num_layers
        if config.locked_dropout and num_layers > 1:
            sizes = [input_size] + [hidden] * (num_layers - 1)
            layers = [recurrent(size, 1, 0.0) for size in sizes]
            self.rnn = LayerStack(layers, dropout)
        else:
            layers = [recurrent(input_size, num_layers, dropout if num_layers > 1 else 0.0)]
            self.rnn = layers[0]
        for layer in layers:
            if config.init == "keras":
                keras_init(layer)
            if config.unit_forget_bias:
                open_forget_gates(layer)
        self.drop = LockedDropout(dropout) if config.locked_dropout else nn.Dropout(dropout)
        self.weight_drop, self.embedding_dropout = config.weight_drop, config.embedding_dropout
        self.head = nn.Linear(hidden, vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits [batch, time, vocab] for ids [batch, time], and the final recurrent state."""
        x = self.drop(self._embed(ids.long()))
        if self.training and self.weight_drop:
            out, state = functional_call(self.rnn, self._dropped_recurrent_weights(), (x, state))
        else:
            out, state = self.rnn(x, state)
        return self.head(self.drop(out)), state

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return F.one_hot(ids, self.vocab_size).float()
        if not (self.training and self.embedding_dropout):
            return self.embedding(ids)
        weight = self.embedding.weight  # a character's row kept or dropped whole, scaled to keep the mean
        keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - self.embedding_dropout)
        return F.embedding(ids, weight * keep / (1 - self.embedding_dropout))

    def _dropped_recurrent_weights(self) -> dict[str, torch.Tensor]:
        """The hidden-to-hidden weights with dropout on them, a new mask each batch. They stand in
        for the layers' own for one call (torch.func.functional_call), so that torch.nn's layer
        runs as it is, one fused kernel per layer (cuDNN copies the weights in first), and its
        parameters stay untouched, with the gradient flowing back to them through the mask."""
        return {
            name: F.dropout(weight, self.weight_drop)
            for name, weight in self.rnn.named_parameters()
            if name.rpartition(".")[2].startswith("weight_hh")
        }
