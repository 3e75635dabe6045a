"""Writing text with a trained model, one character at a time.

from charlm import generate, load_model
model = load_model("logs/runs/2026-11-23_10-00-00")        # its best checkpoint
print(generate(model, "En un lugar de la", length=300, temperature=0.5, seed=0)[0])
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch

from charlm.errors import CharLMError
from charlm.models.lightning_module import CharLM

NEWLINE = "\n"


def _check(prompt: str, model: CharLM, length: int, temperature: float, top_k: int | None, num: int) -> None:
    if length < 0 or num < 1:
        raise CharLMError(f"length ({length}) must be at least 0 and num_samples ({num}) at least 1")
    if temperature < 0:
        raise CharLMError(f"temperature must be 0 (greedy) or more, got {temperature}")
    if top_k is not None and top_k < 1:
        raise CharLMError(f"top_k must be at least 1 (or null for all characters), got {top_k}")
    unknown = sorted(set(prompt) - set(model.vocab.chars))
    if unknown:
        cased = [f(prompt) for f in (str.lower, str.upper) if set(f(prompt)) <= set(model.vocab.chars)]
        raise CharLMError(
            f"the prompt has characters this model never saw: {' '.join(map(repr, unknown))}."
            + (f" Try {cased[0]!r}." if cased else "")
            + f" Use only characters of its vocabulary: {''.join(model.vocab.chars)!r}"
        )


def _start(model: CharLM, prompt: str) -> str:
    """What the model reads before writing: the prompt, or for an empty prompt a line break, so
    that it begins a new line (a new name, a new verse)."""
    if prompt:
        return prompt
    for start in (NEWLINE, " "):
        if start in model.vocab.chars:
            return start
    raise CharLMError("this vocabulary has neither a line break nor a space to start from: give a prompt")


def _pick(
    logits: torch.Tensor, temperature: float, top_k: int | None, rng: torch.Generator | None
) -> torch.Tensor:
    """The next id of each row: argmax for temperature 0, else a draw from softmax(logits / T)."""
    if not torch.isfinite(logits).all():  # a diverged model: nothing to draw from (and CUDA would assert)
        raise CharLMError(
            "the model's outputs are not finite (nan or inf): its training diverged; "
            "use an earlier checkpoint, or train again with a lower optimizer.lr"
        )
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=rng).squeeze(1)


@contextmanager
def _fast_single_steps(device: torch.device) -> Iterator[None]:
    """On CPU, oneDNN's RNN kernel costs about 1 ms a call however short the input: for one-character
    steps torch's own kernels are ten times faster (2x512 LSTM on 2 cores: 4.5 ms -> 0.37 ms a
    character); for long inputs they are slower, so the prompt's pass keeps oneDNN."""
    if device.type != "cpu":
        yield
        return
    with ExitStack() as stack:
        with warnings.catch_warnings():  # switching warns that TF32 needs an Intel GPU: not our concern
            warnings.simplefilter("ignore")
            stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
        yield
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stack.close()


@torch.inference_mode()
def generate(
    model: CharLM,
    prompt: str = "",
    length: int = 500,
    temperature: float = 0.8,
    top_k: int | None = None,
    num_samples: int = 1,
    seed: int | None = None,
    stop_at_newline: bool = False,
) -> list[str]:
    """`num_samples` texts, each the prompt followed by up to `length` new characters.

    The prompt warms the recurrent state in one forward pass; every new character then costs one
    step that carries the state, so the time grows linearly with `length`. `temperature` 0 is
    greedy (argmax); `top_k` keeps only the k likeliest characters; the same `seed` and settings
    give the same text. `stop_at_newline` ends each sample at its first line break (excluded),
    with `length` as the cap: for line-per-item corpora such as names.
    """
    _check(prompt, model, length, temperature, top_k, num_samples)
    was_training = model.training
    model.eval()
    try:
        start = _start(model, prompt)
        written = _write(model, start, length, temperature, top_k, num_samples, seed, stop_at_newline)
    finally:
        model.train(was_training)
    texts = [model.vocab.decode(row) for row in written.cpu()]
    if stop_at_newline:
        texts = [text.split(NEWLINE, 1)[0] for text in texts]
    return [prompt + text for text in texts]


def _write(
    model: CharLM,
    start: str,
    length: int,
    temperature: float,
    top_k: int | None,
    num_samples: int,
    seed: int | None,
    stop_at_newline: bool,
) -> torch.Tensor:
    """The new ids, [num_samples, up to length]: one forward pass over `start`, then one step each."""
    device = model.device
    rng = torch.Generator(device).manual_seed(seed) if seed is not None else None
    context = model.vocab.encode(start).to(device, torch.long)
    logits, state = model(context.expand(num_samples, -1))  # the samples share the prompt
    written = torch.empty(num_samples, length, dtype=torch.long, device=device)
    newline = model.vocab.chars.index(NEWLINE) if NEWLINE in model.vocab.chars else -1
    ended = torch.zeros(num_samples, dtype=torch.bool, device=device)
    with _fast_single_steps(device):
        for step in range(length):
            written[:, step] = _pick(logits[:, -1], temperature, top_k, rng)
            if stop_at_newline:
                ended |= written[:, step] == newline
                if ended.all():
                    return written[:, : step + 1]
            if step + 1 < length:
                logits, state = model(written[:, step : step + 1], state)
    return written
