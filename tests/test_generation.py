"""Writing text: the sampler, checkpoints found from run directories, and `generate.py` itself."""

from __future__ import annotations

import math
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY, compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm import CharLMError, find_checkpoint, generate, load_model
from charlm.training.run import train

NAMES = ["ANA", "LUIS", "EVA", "MARTA", "JOSÉ", "PILAR", "SOL", "IGNACIO"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model trained for 135 steps (3.5 epochs) on names, one a line, logging to TensorBoard."""
    tmp = tmp_path_factory.mktemp("trained")
    corpus = tmp / "names.txt"
    lines = random.Random(0).choices(NAMES, k=2000)  # which name comes next is left to chance
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = compose_train(
        ["data=textfile", f"data.path={corpus}", f"paths.output_dir={tmp / 'run'}", "hidden=32", *TINY]
        + ["++trainer.max_steps=135", "trainer.val_check_interval=1.0", "optimizer.lr=0.02"]
        + ["callbacks.sample_text.length=40"]
    )
    train(cfg)
    return tmp / "run"


def run_generate(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "generate.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)


def test_a_run_directory_means_its_best_checkpoint(run_dir: Path) -> None:
    files = {p.name for p in (run_dir / "checkpoints").glob("*.ckpt")}
    best = find_checkpoint(run_dir)
    assert best.name != "last.ckpt" and best.name in files
    recorded = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    assert any(Path(s.get("best_model_path", "")).name == best.name for s in recorded.values())
    assert find_checkpoint(run_dir, which="last").name == "last.ckpt"
    assert find_checkpoint(best) == best


def test_missing_checkpoints_and_multiruns_are_explained(tmp_path: Path) -> None:
    with pytest.raises(CharLMError, match="no checkpoint at"):
        find_checkpoint(tmp_path / "nowhere")
    (tmp_path / "multirun.yaml").write_text("{}")
    for job in ("0_hidden=8", "1_hidden=16"):
        (tmp_path / job / "checkpoints").mkdir(parents=True)
    with pytest.raises(CharLMError, match=r"holds 2 runs: choose one \(0_hidden=8, 1_hidden=16\)"):
        find_checkpoint(tmp_path)


def test_generation_continues_the_prompt(run_dir: Path) -> None:
    model = load_model(run_dir)
    (text,) = generate(model, "MAR", length=50, temperature=0.8, seed=0)
    assert text.startswith("MAR") and len(text) == 53
    assert set(text) <= set(model.vocab.chars)
    assert not model.training


def test_greedy_is_deterministic_and_equals_rereading_the_whole_text(run_dir: Path) -> None:
    model = load_model(run_dir)
    greedy = generate(model, "LU", length=30, temperature=0, seed=1)[0]
    assert generate(model, "LU", length=30, temperature=0, seed=2)[0] == greedy
    assert generate(model, "LU", length=30, top_k=1, seed=3)[0] == greedy
    # the notebooks' way: feed the whole text again for every new character
    text = "LU"
    with torch.inference_mode():
        for _ in range(30):
            logits, _ = model(model.vocab.encode(text).long().unsqueeze(0))
            text += model.vocab.chars[int(logits[0, -1].argmax())]
    assert greedy == text


def test_the_same_seed_gives_the_same_text(run_dir: Path) -> None:
    model = load_model(run_dir)
    first = generate(model, "E", length=80, temperature=1.0, num_samples=3, seed=7)
    assert generate(model, "E", length=80, temperature=1.0, num_samples=3, seed=7) == first
    assert generate(model, "E", length=80, temperature=1.0, num_samples=3, seed=8) != first
    assert len(set(first)) == 3  # the samples of one call differ from each other


def test_unknown_prompt_characters_are_listed(run_dir: Path) -> None:
    model = load_model(run_dir)
    with pytest.raises(CharLMError, match=r"never saw: '!' 'a' 'x'.*vocabulary: '\\nAC"):
        generate(model, "Axa!", length=5)
    with pytest.raises(CharLMError, match="never saw: 'a' 'n'. Try 'ANA'"):
        generate(model, "ana", length=5)


def test_loading_a_model_leaves_the_random_state_alone(run_dir: Path) -> None:
    torch.manual_seed(1)
    first = generate(load_model(run_dir), "E", length=60, temperature=1.0)[0]
    torch.manual_seed(2)
    second = generate(load_model(run_dir), "E", length=60, temperature=1.0)[0]
    assert first != second  # seed=None: different every time


def test_stop_at_newline_gives_one_line_each(run_dir: Path) -> None:
    model = load_model(run_dir)
    names = generate(model, "", length=30, num_samples=20, seed=0, stop_at_newline=True)
    assert len(names) == 20 and all("\n" not in name and len(name) <= 30 for name in names)
    assert any(len(name) < 30 for name in names)  # lines end before the cap
    assert sum(name in NAMES for name in names) >= 10  # a tiny model mostly recalls its names
    capped = generate(model, "", length=2, num_samples=5, seed=0, stop_at_newline=True)
    assert all(len(name) <= 2 for name in capped)


def _as_if_saved_on_gpu(source: Path, target: Path) -> None:
    """Rewrite a CPU checkpoint's storage locations to 'cuda:0', as torch.save on a GPU writes them."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("data.pkl"):
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")  # BINUNICODE
            zout.writestr(item, data)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks loading on a machine without a GPU")
def test_a_gpu_checkpoint_loads_on_cpu(run_dir: Path, tmp_path: Path) -> None:
    gpu_checkpoint = tmp_path / "gpu.ckpt"
    _as_if_saved_on_gpu(find_checkpoint(run_dir), gpu_checkpoint)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(gpu_checkpoint, weights_only=True)  # what a plain load does without a GPU
    model = load_model(gpu_checkpoint)
    assert next(model.parameters()).device.type == "cpu"
    assert generate(model, "ANA", length=10, temperature=0) == generate(load_model(run_dir), "ANA", 10, 0)


def test_training_writes_samples_to_tensorboard(run_dir: Path) -> None:
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    assert "samples/text_summary" in accumulator.Tags()["tensors"]
    events = accumulator.Tensors("samples/text_summary")
    steps = [e.step for e in events]
    assert steps == [38, 76, 114, 135]  # one sample an epoch (38 steps), and at the end (max_steps)
    text = events[-1].tensor_proto.string_val[0].decode()
    assert text.startswith("    ") and "\n    " in text  # a markdown code block keeps the lines


def test_generate_py_prints_the_prompt_and_its_continuation(run_dir: Path) -> None:
    args = [f"ckpt={run_dir}", "prompt=JOSÉ", "length=40", "temperature=0.5", "seed=0"]
    first = run_generate(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("JOSÉ") and len(first.stdout.rstrip("\n")) >= 4
    assert run_generate(*args).stdout == first.stdout
    names = run_generate(
        "--config-name=generate",
        f"ckpt={run_dir}",
        "stop_at_newline=true",
        "num_samples=5",
        "length=20",
        "seed=0",
    )
    assert names.returncode == 0 and len(names.stdout.splitlines()) == 5


def test_generate_py_errors_are_one_clear_line(run_dir: Path) -> None:
    unknown = run_generate(f"ckpt={run_dir}", "prompt=¿Qué, Sancho?")
    assert unknown.returncode != 0 and "Traceback" not in unknown.stderr
    assert "never saw: ' ' ',' '?' 'Q' 'a' 'c' 'h' 'n' 'o' 'u' '¿' 'é'" in unknown.stderr
    missing = run_generate()
    assert missing.returncode != 0 and "give ckpt=" in missing.stderr and "Traceback" not in missing.stderr


def test_a_model_with_nan_weights_refuses_to_write(run_dir: Path) -> None:
    model = load_model(run_dir)
    with torch.no_grad():
        model.net.head.weight[0, 0] = math.nan  # as a diverged run leaves it
    with pytest.raises(CharLMError, match="not finite .* training diverged"):
        generate(model, "AN", length=20, seed=0)


def test_a_checkpoint_saved_before_network_config_loads_and_writes_alike(
    run_dir: Path, tmp_path: Path
) -> None:
    """Checkpoints from before NetworkConfig keep the network's settings flat beside the vocabulary."""
    saved = torch.load(find_checkpoint(run_dir), weights_only=True)
    settings = saved["hyper_parameters"]
    flat = {k: v for k, v in settings.items() if k != "network"} | settings["network"]
    old = tmp_path / "old.ckpt"
    torch.save({**saved, "hyper_parameters": flat}, old)
    assert generate(load_model(old), "ANA", length=20, temperature=0) == generate(
        load_model(run_dir), "ANA", 20, 0
    )


def test_a_plain_state_dict_is_no_charlm_checkpoint(run_dir: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(load_model(run_dir).state_dict(), weights)
    with pytest.raises(CharLMError, match="is no charlm checkpoint"):
        load_model(weights)
