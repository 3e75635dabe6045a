"""The model and one training run in-process: real steps on tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from conftest import TINY, compose_train, data_config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm.data.datamodule import CharDataModule
from charlm.errors import CharLMError
from charlm.models.checkpoints import load_model
from charlm.models.lightning_module import CharLM
from charlm.models.metrics import CharScores
from charlm.models.network import CharRNN, NetworkConfig
from charlm.models.optimization import cosine
from charlm.training.run import build, train


def train_tiny(tmp_path: Path, text_file: Path, *overrides: str) -> float:
    cfg = compose_train(
        [
            "data=textfile",
            f"data.path={text_file}",
            f"paths.output_dir={tmp_path / 'run'}",
            "hidden=16",
            *TINY,
            *overrides,
        ]
    )
    return train(cfg)


def scalars(run_dir: Path) -> dict[str, list[float]]:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    return {t: [e.value for e in accumulator.Scalars(t)] for t in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("model", ["rnn", "lstm", "gru"])
def test_each_backbone_trains(tmp_path: Path, text_file: Path, model: str) -> None:
    best_val_loss = train_tiny(tmp_path, text_file, f"model={model}", "++trainer.max_steps=30")
    run = tmp_path / "run"
    logged = scalars(run)
    vocab_size = len(set(text_file.read_text(encoding="utf-8")))
    assert best_val_loss < math.log(vocab_size)  # better than uniform guessing
    assert logged["val/loss"][-1] < logged["val/loss"][0]
    assert min(logged["val/loss"]) == pytest.approx(best_val_loss, rel=1e-6)
    assert logged["val/ppl"][-1] == pytest.approx(math.exp(logged["val/loss"][-1]), rel=1e-5)
    assert logged["val/bpc"][-1] == pytest.approx(logged["val/loss"][-1] / math.log(2), rel=1e-5)
    assert {"train/loss", "train/ppl", "train/bpc", "test/ppl", "test/bpc", "hp_metric"} <= set(logged)
    assert logged["hp_metric"][-1] == pytest.approx(min(logged["val/ppl"]), rel=1e-6)
    assert (run / "vocab.json").exists() and (run / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["optimizer=adamw", "scheduler=cosine", "scheduler.warmup_steps=3"],
        ["optimizer=sgd"],
        ["optimizer=adadelta"],
    ],
)
def test_optimizers_and_schedulers_train(tmp_path: Path, text_file: Path, overrides: list[str]) -> None:
    best_val_loss = train_tiny(tmp_path, text_file, *overrides, "++trainer.max_steps=24")
    logged = scalars(tmp_path / "run")
    assert best_val_loss < math.log(len(set(text_file.read_text(encoding="utf-8"))))
    (lrs,) = (values for tag, values in logged.items() if tag.startswith("lr-"))
    if "scheduler=cosine" in overrides:
        assert lrs[0] < max(lrs) > lrs[-1]  # warmup, then decay
    else:
        assert set(lrs) == {lrs[0]}


def test_plateau_halves_the_lr_when_val_loss_stalls(tmp_path: Path, text_file: Path) -> None:
    # an lr too small to move the loss: every validation after the first is a plateau
    train_tiny(
        tmp_path,
        text_file,
        "scheduler=plateau",
        "scheduler.patience=0",
        "optimizer=sgd",
        "optimizer.momentum=0",
        "optimizer.lr=1e-6",
        "++trainer.limit_train_batches=4",
        "trainer.val_check_interval=1.0",
        "++trainer.max_steps=16",
    )
    lrs = scalars(tmp_path / "run")["lr-SGD"]
    assert lrs[0] == pytest.approx(1e-6, rel=1e-6)
    assert lrs[-1] == pytest.approx(1e-6 / 4, rel=1e-6)  # halved after epochs 2 and 3 (4 is the end)


def test_a_run_shorter_than_an_epoch_still_validates(tmp_path: Path, text_file: Path) -> None:
    best_val_loss = train_tiny(tmp_path, text_file, "++trainer.max_steps=5", "trainer.val_check_interval=1.0")
    logged = scalars(tmp_path / "run")
    assert len(logged["val/loss"]) == 1 and logged["val/loss"][0] == pytest.approx(best_val_loss)
    assert list((tmp_path / "run" / "checkpoints").glob("epoch*-step5-*.ckpt"))


def test_resuming_keeps_the_best_val_perplexity(tmp_path: Path, text_file: Path) -> None:
    train_tiny(tmp_path / "first", text_file)
    checkpoint = tmp_path / "first" / "run" / "checkpoints" / "last.ckpt"
    train_tiny(tmp_path / "resumed", text_file, f"ckpt_path={checkpoint}", "++trainer.max_steps=24")
    before = scalars(tmp_path / "first" / "run")
    after = scalars(tmp_path / "resumed" / "run")
    val_ppl = before["val/ppl"] + after["val/ppl"]
    assert len(after["val/ppl"]) == 2  # steps 18 and 24: the sanity check does not count
    running_best = [min(val_ppl[: i + 1]) for i in range(len(val_ppl))]
    assert after["hp_metric"] == pytest.approx(running_best[len(before["val/ppl"]) :])


def test_resuming_a_finished_run_says_so(tmp_path: Path, text_file: Path) -> None:
    train_tiny(tmp_path / "first", text_file)
    with pytest.raises(CharLMError, match=r"nothing to resume: .* had finished its training \(step 12\)"):
        train_tiny(tmp_path / "again", text_file, f"ckpt_path={tmp_path / 'first' / 'run'}")


@pytest.mark.parametrize(
    "change, error",
    [
        (
            "hidden=32",
            r"it was trained with hidden=16, this run has hidden=32\. Resume with the settings",
        ),
        ("data.seq_len=8", r"trained with data.seq_len=16, data.stride=16, this run has data.seq_len=8"),
        (
            "model.embedding_dim=16 model.tie_weights=true",
            r"trained with embedding_dim=8, tie_weights=False, this run has .*, tie_weights=True",
        ),
        (
            "data.lowercase=true",
            r"another vocabulary \(\d+ characters, this corpus has \d+; new here: '', gone: 'EM'\)",
        ),
    ],
)
def test_resuming_with_another_model_or_vocabulary_says_so(
    tmp_path: Path, text_file: Path, change: str, error: str
) -> None:
    train_tiny(tmp_path / "first", text_file, "++trainer.max_steps=6")
    with pytest.raises(CharLMError, match=error):
        train_tiny(tmp_path / "again", text_file, f"ckpt_path={tmp_path / 'first' / 'run'}", *change.split())


def test_resuming_from_a_missing_or_damaged_checkpoint_says_so(tmp_path: Path, text_file: Path) -> None:
    with pytest.raises(CharLMError, match=r"no checkpoint at .*nowhere: give a .ckpt file or a run dir"):
        train_tiny(tmp_path / "a", text_file, f"ckpt_path={tmp_path / 'nowhere'}")
    train_tiny(tmp_path / "first", text_file, "++trainer.max_steps=6")
    damaged = tmp_path / "half.ckpt"
    whole = (tmp_path / "first" / "run" / "checkpoints" / "last.ckpt").read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])  # as a full disk or a kill mid-copy leaves it
    with pytest.raises(CharLMError, match=r"cannot read checkpoint .*half.ckpt .* it is damaged"):
        train_tiny(tmp_path / "b", text_file, f"ckpt_path={damaged}")
    flipped = bytearray(whole)
    middle = len(whole) // 3
    flipped[middle : middle + 8] = bytes(b ^ 0xFF for b in flipped[middle : middle + 8])  # bad disk or copy
    damaged.write_bytes(flipped)
    with pytest.raises(CharLMError, match=r"cannot read checkpoint .*half.ckpt \(.* fails its checksum\)"):
        train_tiny(tmp_path / "c", text_file, f"ckpt_path={damaged}")


def test_trainer_switches_turn_off_logging_bar_and_checkpoints(tmp_path: Path, text_file: Path) -> None:
    off = ["~logger", "++trainer.enable_progress_bar=false", "++trainer.enable_checkpointing=false"]
    assert train_tiny(tmp_path, text_file, *off) < math.log(len(set(text_file.read_text(encoding="utf-8"))))
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_checkpoint_carries_vocabulary_and_loads_without_config(tmp_path: Path, text_file: Path) -> None:
    train_tiny(tmp_path, text_file, "model=gru", "model.embedding_dim=null")  # one-hot input
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    raw = torch.load(checkpoint, weights_only=True)  # plain data only: safe to load
    assert raw["hyper_parameters"]["vocab"] == sorted(set(text_file.read_text(encoding="utf-8")))
    model = CharLM.load_from_checkpoint(checkpoint, map_location="cpu")
    assert model.net.embedding is None and isinstance(model.net.rnn, torch.nn.GRU)
    logits, state = model(model.vocab.encode("En un lugar").unsqueeze(0))
    assert logits.shape == (1, 11, len(model.vocab)) and state.shape == (1, 1, 16)


def test_same_seed_same_losses_and_seed_zero_counts(tmp_path: Path, text_file: Path) -> None:
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        runs[name] = train_tiny(tmp_path / name, text_file, f"seed={seed}", "model.dropout=0.1")
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]


def test_char_scores_weight_by_characters() -> None:
    scores = CharScores()
    scores.update(torch.tensor(1.0), 10)
    scores.update(torch.tensor(4.0), 30)
    result = scores.compute()
    assert result["loss"].item() == pytest.approx(3.25)
    assert result["ppl"].item() == pytest.approx(math.exp(3.25))
    assert result["bpc"].item() == pytest.approx(3.25 / math.log(2))


def test_cosine_schedule_warms_up_then_decays_to_the_floor() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cosine(optimizer, total_steps=110, warmup_steps=10, min_lr_ratio=0.1)["scheduler"]
    lrs = []
    for _ in range(110):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10:] == sorted(lrs[10:], reverse=True) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden": 0}, "hidden must be at least 1"),
        ({"cell": "transformer"}, "unknown model.cell 'transformer'"),
    ],
)
def test_bad_network_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(CharLMError, match=message):
        CharRNN(10, NetworkConfig(**kwargs))


def test_stateful_validation_reads_each_stream_as_one_sequence(text_file: Path) -> None:
    datamodule = CharDataModule(data_config(text_file, seq_len=16, batch_size=4, stateful=True))
    datamodule.setup()
    model = CharLM(datamodule.vocab.chars, NetworkConfig(hidden=16, embedding_dim=8), stateful=True)
    trainer = pl.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    first = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]
    second = trainer.validate(model, datamodule=datamodule, verbose=False)[0]["val/loss"]
    streams = datamodule.datasets["val"].streams  # the whole split, batch_size rows
    with torch.inference_mode():
        logits, _ = model(streams[:, :-1])
    whole = F.cross_entropy(logits.flatten(0, 1), streams[:, 1:].flatten().long()).item()
    assert first == pytest.approx(whole, rel=1e-5)  # carrying the state = reading it all at once
    assert second == first  # each epoch starts from a zero state


def test_stateful_training_learns(tmp_path: Path, text_file: Path) -> None:
    best_val_loss = train_tiny(tmp_path, text_file, "data.stateful=true", "++trainer.max_steps=30")
    assert best_val_loss < math.log(len(set(text_file.read_text(encoding="utf-8"))))
    raw = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert raw["hyper_parameters"]["stateful"] and raw["datamodule_hyper_parameters"]["stateful"]


class LossRecorder(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, *args) -> None:
        self.losses.append(float(outputs["loss"]))


def test_train_loss_points_are_means_and_the_last_steps_are_written(tmp_path: Path, text_file: Path) -> None:
    cfg = compose_train(
        ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path}", "hidden=16", *TINY]
        + ["++trainer.max_steps=25", "++trainer.log_every_n_steps=10", "data.batch_size=8"]
    )
    datamodule, model, trainer = build(cfg)
    recorder = LossRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(model, datamodule=datamodule)
    accumulator = EventAccumulator(str(tmp_path))
    accumulator.Reload()
    written = [(e.step, e.value) for e in accumulator.Scalars("train/loss")]
    # every point the mean of the steps since the last (all batches are full here), the last 5 too
    steps = [step for step, _ in written]
    assert steps[-1] == 24 and 9 in steps and 19 in steps
    bounds = [-1, *steps]
    for start, (end, value) in zip(bounds, written, strict=False):
        assert value == pytest.approx(sum(recorder.losses[start + 1 : end + 1]) / (end - start), rel=1e-5)


def _cpu_runs_a_bf16_lstm() -> bool:
    """oneDNN's fused LSTM under CPU autocast needs a processor it has a bfloat16 kernel for
    (some AMD EPYC machines have none: "could not create a primitive descriptor")."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.nn.LSTM(4, 4, batch_first=True)(torch.zeros(1, 2, 4))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize(
    "overrides, rel",
    [
        # Dynamo compiles around torch.nn's LSTM, which it does not trace: the same arithmetic
        (["model.compile=true"], 1e-5),
        # CPU autocast: the head's matmuls in bfloat16, so close, not equal
        pytest.param(
            ["trainer.precision=bf16-mixed"],
            1e-2,
            marks=pytest.mark.skipif(
                not _cpu_runs_a_bf16_lstm(), reason="oneDNN has no bf16 LSTM for this CPU"
            ),
        ),
    ],
)
def test_compiled_and_mixed_precision_runs_train_as_the_plain_one(
    tmp_path: Path, text_file: Path, overrides: list[str], rel: float
) -> None:
    plain = train_tiny(tmp_path / "plain", text_file)
    torch._dynamo.utils.counters.clear()
    other = train_tiny(tmp_path / "other", text_file, *overrides)
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compiled if "model.compile=true" in overrides else not compiled
    assert other == pytest.approx(plain, rel=rel)
    if "bf16" in overrides[0]:
        assert other != plain  # autocast did run
    # weights under their plain names and in float32: the checkpoint loads like any other
    checkpoint = torch.load(tmp_path / "other" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    weights = checkpoint["state_dict"]
    assert "net.rnn.weight_hh_l0" in weights and not any("_orig_mod" in name for name in weights)
    assert all(v.dtype == torch.float32 for v in weights.values())
    assert not load_model(tmp_path / "other" / "run").hparams.network[
        "compile"
    ]  # generation does not compile


@pytest.mark.parametrize(
    "patience, every, steps",
    [
        (0, 6, 30),
        # validations at 6 (the first best), 12 and 18 (two without a better one): stopped
        (2, 6, 18),
        # at the ends of epochs (of 15 steps: batches of 64)
        (2, "null", 45),
    ],
)
def test_early_stopping_counts_validations_and_keeps_the_best_checkpoint(
    tmp_path: Path, text_file: Path, patience: int, every: int | str, steps: int, caplog
) -> None:
    """Off by default. On, with no validation after the first counting as better (min_delta=10)."""
    cfg = compose_train(
        ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path}", "hidden=16", *TINY]
        + (
            ["++trainer.max_steps=100", "data.batch_size=64"]
            if every == "null"
            else ["++trainer.max_steps=30"]
        )
        + [f"++trainer.val_check_interval={every}", "callbacks.early_stopping.min_delta=10"]
        + [f"callbacks.early_stopping.patience={patience}"]
    )
    datamodule, model, trainer = build(cfg)
    with caplog.at_level("INFO", logger="charlm"):
        trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == steps
    stopped = f"early stopping at step {steps}: val/loss has not improved for 2 validations"
    assert (stopped in caplog.text) == bool(patience)
    # the best checkpoint is the lowest val loss of the run, whatever early stopping counted as better
    checkpoint = trainer.checkpoint_callback
    assert checkpoint.best_model_score == model.best_val_loss.compute()
    assert Path(checkpoint.best_model_path).exists()


def test_a_negative_patience_is_refused(tmp_path: Path, text_file: Path) -> None:
    overrides = ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path}"]
    cfg = compose_train([*overrides, "callbacks.early_stopping.patience=-1"])
    with pytest.raises(CharLMError, match="patience counts validations: 0 \\(off\\) or more, got -1"):
        build(cfg)


def test_a_resumed_run_keeps_the_patience_it_is_given(tmp_path: Path, text_file: Path) -> None:
    """Lightning would take the checkpoint's patience (0: off) over the one on the command line."""
    common = [
        "data=textfile",
        f"data.path={text_file}",
        "hidden=16",
        *TINY,
        "callbacks.early_stopping.min_delta=10",
    ]
    first = compose_train([*common, f"paths.output_dir={tmp_path / 'first'}"])
    datamodule, model, trainer = build(first)
    trainer.fit(model, datamodule=datamodule)  # 12 steps, early stopping off
    resumed = compose_train(
        [*common, f"paths.output_dir={tmp_path / 'resumed'}", "++trainer.max_steps=60"]
        + ["callbacks.early_stopping.patience=2"]
    )
    datamodule, model, trainer = build(resumed)
    trainer.fit(model, datamodule=datamodule, ckpt_path=tmp_path / "first" / "checkpoints" / "last.ckpt")
    assert trainer.global_step == 30  # 18 the first best it saw, 24 and 30 no better: stopped


def test_with_gradient_accumulation_each_write_is_the_mean_of_every_batch_since_the_last(
    tmp_path: Path, text_file: Path
) -> None:
    cfg = compose_train(
        ["data=textfile", f"data.path={text_file}", f"paths.output_dir={tmp_path}", "hidden=16", *TINY]
        + ["++trainer.accumulate_grad_batches=3", "++trainer.log_every_n_steps=5", "++trainer.max_steps=10"]
    )
    datamodule, model, trainer = build(cfg)
    seen, update = [], model.train_scores.update
    model.train_scores.update = lambda loss, chars: (seen.append(float(loss)), update(loss, chars))
    trainer.fit(model, datamodule=datamodule)
    assert len(seen) == 30  # 10 optimizer steps of 3 batches
    written = scalars(tmp_path)["train/loss"]
    assert written == pytest.approx([sum(seen[:15]) / 15, sum(seen[15:]) / 15], rel=1e-5)
