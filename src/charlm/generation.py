"""Writing text with a trained model, one character at a time.

from charlm import generate, load_model
model = load_model("logs/runs/2026-11-23_10-00-00")        # its best checkpoint
print(generate(model, "En un lugar de la", length=300, temperature=0.5, seed=0)[0])
"""

from __future__ import annotations

import math
import numbers
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch

from charlm.errors import CharLMError, out_of_memory
from charlm.models.lightning_module import CharLM

NEWLINE = "\n"
# what one written character costs: its id (8 bytes) on the device, its copy on the host, its text
BYTES_PER_CHAR = 24


def _whole(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check(length: int, temperature: float, top_k: int | None, num: int, seed: int | None, stop: Any) -> None:
    """One clear line for a setting of the wrong kind or range, which torch would answer with a
    traceback (a nan temperature: "probability tensor contains either inf, nan or element < 0")."""
    if not (_whole(length) and length >= 0 and _whole(num) and num >= 1):
        raise CharLMError(
            f"length ({length!r}) must be a whole number from 0, and num_samples ({num!r}) from 1"
        )
    if not (isinstance(temperature, int | float) and math.isfinite(temperature) and temperature >= 0):
        raise CharLMError(f"temperature must be 0 (greedy) or a positive number, got {temperature!r}")
    if top_k is not None and not (_whole(top_k) and top_k >= 1):
        raise CharLMError(f"top_k must be a whole number from 1 (or null for all characters), got {top_k!r}")
    if seed is not None and not (_whole(seed) and -(2**63) <= seed < 2**64):
        raise CharLMError(f"seed must be a whole number of at most 64 bits (or null), got {seed!r}")
    if not isinstance(stop, bool):
        raise CharLMError(f"stop_at_newline must be true or false, got {stop!r}")


def _fit_prompt(prompt: str, model: CharLM) -> str:
    """The prompt in the vocabulary's terms: without a leading byte-order mark, and in its NFC or NFD
    form when only that one fits (a corpus may be normalised or not: é is one character, or e and a
    combining accent), or one clear line listing the characters the model never saw."""
    prompt = prompt.removeprefix("\ufeff")
    known = set(model.vocab.chars)
    for candidate in (prompt, unicodedata.normalize("NFC", prompt), unicodedata.normalize("NFD", prompt)):
        if set(candidate) <= known:
            return candidate
    unknown = sorted(set(prompt) - known)
    cased = [f(prompt) for f in (str.lower, str.upper) if set(f(prompt)) <= known]
    raise CharLMError(
        f"the prompt has characters this model never saw: {' '.join(map(repr, unknown))}."
        + (f" Try {cased[0]!r}." if cased else "")
        + f" Use only characters of its vocabulary: {''.join(model.vocab.chars)!r}"
    )


def _host_memory_free() -> int | None:
    """Bytes the host can still give (Linux's MemAvailable), or None where that cannot be told."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def _too_big(length: int, num: int, why: str) -> CharLMError:
    return CharLMError(
        f"length={length} with num_samples={num} is too much text for this machine's memory ({why}): "
        "lower length or num_samples"
    )


def _check_memory(length: int, num: int, device: torch.device) -> None:
    """Refuse before allocating: Linux hands out a too-big buffer lazily, and it would fail (or the
    kernel would kill the process) only when filled, hours later."""
    needs = [(BYTES_PER_CHAR * length * num, _host_memory_free(), "free")]
    if device.type == "cuda":
        needs.append((8 * length * num, torch.cuda.mem_get_info(device)[0], f"free on {device}"))
    for need, free, where in needs:
        if free is not None and need > free:
            raise _too_big(length, num, f"about {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB {where}")


@contextmanager
def _allocations_named(length: int, num: int) -> Iterator[None]:
    """torch's allocation errors (CPU: a RuntimeError from DefaultCPUAllocator; CUDA: OutOfMemoryError)
    and Python's MemoryError, as one line that names the settings to lower."""
    try:
        yield
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        raise _too_big(length, num, "an allocation failed") from None


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
    # the likeliest at 0, the others below: a tiny temperature tends to greedy instead of overflowing
    # (and one below the dtype's smallest normal number would be 0 there: 0 / 0 is nan)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    logits = logits / max(temperature, torch.finfo(logits.dtype).tiny)
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
    give the same text. A prompt is taken without a leading byte-order mark, and in its NFC or NFD
    form when only that fits the vocabulary. `stop_at_newline` ends each sample at its first line
    break (excluded), with `length` as the cap: for line-per-item corpora such as names.
    """
    _check(length, temperature, top_k, num_samples, seed, stop_at_newline)
    prompt = _fit_prompt(prompt, model)
    _check_memory(length, num_samples, model.device)
    was_training = model.training
    model.eval()
    try:
        with _allocations_named(length, num_samples):
            start = _start(model, prompt)
            written = _write(model, start, length, temperature, top_k, num_samples, seed, stop_at_newline)
            texts = [model.vocab.decode(row) for row in written.cpu()]
    finally:
        model.train(was_training)
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
