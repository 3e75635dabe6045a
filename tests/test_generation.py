"""Writing text: the sampler, checkpoints found from run directories, and `generate.py` itself."""

from __future__ import annotations

import math
import os
import random
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, SUBPROCESS_ENV, TINY, compose_train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from charlm import CharLMError, find_checkpoint, generate, generation, load_model
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
    os.utime(tmp_path / "0_hidden=8" / "checkpoints", (1, 1))  # the older one
    with pytest.raises(
        CharLMError, match=r"holds 2 runs: choose one \(newest first: 1_hidden=16, 0_hidden=8\)"
    ):
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_any_temperature_from_zero_up_writes_text(run_dir: Path) -> None:
    model = load_model(run_dir)
    greedy = generate(model, "LU", length=30, temperature=0)
    for tiny in (1e-45, 1e-46, 5e-324):  # logits / T overflowed; below 1.4e-45, T is 0 in float32
        assert generate(model, "LU", length=30, temperature=tiny, seed=0) == greedy
        assert generate(model, "LU", length=30, temperature=tiny, top_k=3, seed=0) == greedy
    wild = generate(model, "LU", length=300, temperature=1e300, seed=0)[0]  # every character alike
    assert set(wild) == set(model.vocab.chars)


def test_generate_settings_of_the_wrong_kind_are_one_line(run_dir: Path) -> None:
    model = load_model(run_dir)
    for settings, error in [
        ({"temperature": math.nan}, r"temperature must be 0 \(greedy\) or a positive number, got nan"),
        ({"temperature": math.inf}, "temperature must be .* got inf"),
        ({"temperature": "hot"}, "temperature must be .* got 'hot'"),
        ({"length": 2.5}, r"length \(2.5\) must be a whole number from 0"),
        ({"num_samples": 0}, r"num_samples \(0\) from 1"),
        ({"top_k": 0}, "top_k must be a whole number from 1"),
        ({"seed": 2**70}, "seed must be a whole number of at most 64 bits"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"stop_at_newline": "maybe"}, "stop_at_newline must be true or false, got 'maybe'"),
    ]:
        with pytest.raises(CharLMError, match=error):
            generate(model, "ANA", **{"length": 5, **settings})
    # what torch takes works: a negative seed, a top_k beyond the vocabulary
    assert generate(model, "ANA", 10, 1.0, seed=-1) == generate(model, "ANA", 10, 1.0, seed=-1)
    assert len(generate(model, "ANA", 10, top_k=10_000, seed=0)[0]) == 13


def test_a_size_too_big_for_memory_is_one_line(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = load_model(run_dir)
    with pytest.raises(
        CharLMError, match=r"length=10+ with num_samples=1 is too much text for this machine's "
    ):
        generate(model, "ANA", length=10**12)  # checked before allocating: Linux would allocate lazily
    with pytest.raises(CharLMError, match=r"length=5 with num_samples=10+ .*\(about .* GiB, .* GiB free\)"):
        generate(model, "ANA", length=5, num_samples=10**13)
    # where free memory cannot be told, torch's allocation error (8 PiB) gets the same line
    monkeypatch.setattr(generation, "_host_memory_free", lambda: None)
    with pytest.raises(
        CharLMError, match=r"length=\d+ .*\(an allocation failed\): lower length or num_samples"
    ):
        generate(model, "ANA", length=2**50)


def test_prompts_fit_the_vocabulary_in_nfc_or_nfd_without_a_byte_order_mark(
    run_dir: Path, tmp_path: Path
) -> None:
    model = load_model(run_dir)  # trained on JOSÉ with a precomposed É (NFC)
    composed = generate(model, "JOS\u00c9", length=10, temperature=0)[0]
    assert generate(model, "JOSE\u0301", length=10, temperature=0)[0] == composed  # typed decomposed
    assert generate(model, "\ufeffANA", length=10, temperature=0) == generate(model, "ANA", 10, 0)
    # a model of a decomposed corpus: E and the combining accent in its vocabulary, not É
    saved = torch.load(find_checkpoint(run_dir), weights_only=True)
    vocab = saved["hyper_parameters"]["vocab"]
    assert vocab[-1] == "\u00c9"  # the last in code-point order, as U+0301 would be
    saved["hyper_parameters"]["vocab"] = [*vocab[:-1], "\u0301"]
    torch.save(saved, tmp_path / "nfd.ckpt")
    decomposed = load_model(tmp_path / "nfd.ckpt")
    assert generate(decomposed, "JOS\u00c9", length=10, temperature=0)[0].startswith("JOSE\u0301")
    with pytest.raises(CharLMError, match="never saw: '!'"):
        generate(decomposed, "JOS\u00c9!", length=10)


def _cut(path: Path) -> None:
    """Truncate `path` to half, as a full disk or a kill mid-copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.slow
def test_a_run_whose_last_ckpt_is_truncated_takes_its_best_checkpoint(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = shutil.copytree(run_dir, tmp_path / "run")
    folder = run / "checkpoints"
    best = folder / find_checkpoint(run_dir).name
    _cut(folder / "last.ckpt")
    shutil.copy(best, folder / "epoch009-step999-val_loss9.9999.ckpt")  # newer, but worse
    shutil.copy(best, folder / "epoch000-step1-val_loss0.0001.ckpt")  # the lowest, but damaged
    _cut(folder / "epoch000-step1-val_loss0.0001.ckpt")
    shutil.copy(best, folder / ".last.ckpt.partial")  # a save killed before its rename: never chosen
    capsys.readouterr()
    assert find_checkpoint(run) == best
    said = capsys.readouterr().err
    assert f"cannot read checkpoint {folder / 'last.ckpt'}" in said
    assert f"taking {best.name} instead (the lowest val loss in its name)" in said
    written = run_generate(f"ckpt={run}", "prompt=ANA", "length=10", "temperature=0")
    assert written.returncode == 0, written.stderr
    assert f"taking {best.name} instead" in written.stderr and f"# {best} on cpu" in written.stderr
    assert written.stdout == generate(load_model(run_dir), "ANA", 10, 0)[0] + "\n"
    # no val loss in any name: the newest that reads
    for path in folder.glob("*val_loss*"):
        path.unlink()
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", folder / "epoch003-step135.ckpt")
    assert find_checkpoint(run).name == "epoch003-step135.ckpt"
    assert "(the newest that reads)" in capsys.readouterr().err
    (folder / "epoch003-step135.ckpt").unlink()  # only the hidden leftover is intact: refused
    with pytest.raises(CharLMError, match="cannot read checkpoint .*last.ckpt .* it is damaged"):
        find_checkpoint(run)


def test_a_folder_of_runs_lists_them_newest_first(run_dir: Path, tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    runs = [f"runs/2026-01-0{day}_10-00-00" for day in range(1, 5)]
    runs += [f"multiruns/2026-02-01_09-00-00/{job}_hidden={h}" for job, h in enumerate((8, 16, 32))]
    for age, run in enumerate(runs):  # the later in the list, the newer
        shutil.copytree(run_dir, logs / run)
        os.utime(logs / run / "checkpoints", (1000 + age, 1000 + age))
    newest = "multiruns/2026-02-01_09-00-00/2_hidden=32, multiruns/2026-02-01_09-00-00/1_hidden=16"
    with pytest.raises(
        CharLMError, match=f"logs holds 7 runs: choose one \\(newest first: {newest}, .*, and 2 more\\)"
    ):
        find_checkpoint(logs)
    with pytest.raises(
        CharLMError, match=r"runs holds 4 runs: choose one \(newest first: 2026-01-04_10-00-00,"
    ):
        find_checkpoint(logs / "runs", which="last")  # resuming with ckpt_path=logs/runs


def test_files_that_are_no_charlm_checkpoints_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    model = load_model(run_dir)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save(model, tmp_path / "model.pt")  # a whole pickled module
    saved = torch.load(find_checkpoint(run_dir), weights_only=True)
    torch.save({**saved, "hyper_parameters": {}}, tmp_path / "other.ckpt")  # another program's
    (tmp_path / "notes.txt").write_text("En un lugar de la Mancha\n", encoding="utf-8")
    (tmp_path / "empty.ckpt").touch()
    (tmp_path / "texts" / "more").mkdir(parents=True)
    (tmp_path / "texts" / "more" / "a.txt").write_text("hola\n", encoding="utf-8")
    what_it_is = r"is not a charlm checkpoint \(a checkpoint that train.py wrote: it holds the vocabulary"
    for name, error in [
        ("weights.pt", rf"weights.pt {what_it_is}.*\); it holds only weights \(\d+ tensors, as torch.save\("),
        ("model.pt", f"model.pt {what_it_is}.*: it holds pickled Python objects"),
        (
            "other.ckpt",
            rf"other.ckpt {what_it_is}.*no vocabulary or no weights \(its keys: epoch, global_step",
        ),
        ("notes.txt", f"notes.txt {what_it_is}.*: it is no zip archive"),
        ("empty.ckpt", f"empty.ckpt {what_it_is}.*: it is an empty file"),
        ("texts", "no checkpoints in .*texts, nor runs below it: give a .ckpt file or a run dir"),
    ]:
        with pytest.raises(CharLMError, match=error):
            load_model(tmp_path / name)
    with pytest.raises(CharLMError, match="no checkpoint at /dev/null; it is neither a file nor a directory"):
        load_model("/dev/null")


def test_resuming_from_a_plain_state_dict_says_it_is_no_charlm_checkpoint(
    run_dir: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights.pt"
    torch.save(load_model(run_dir).state_dict(), weights)
    corpus = run_dir.parent / "names.txt"
    cfg = compose_train(
        ["data=textfile", f"data.path={corpus}", f"paths.output_dir={tmp_path / 'run'}", "hidden=32", *TINY]
        + [f"ckpt_path={weights}"]
    )
    with pytest.raises(CharLMError, match=r"weights.pt is not a charlm checkpoint .* it holds only weights"):
        train(cfg)  # it said: "trained on another vocabulary (0 characters ...)"


@pytest.mark.slow
def test_a_checkpoint_folder_without_permission_is_one_line(run_dir: Path, tmp_path: Path) -> None:
    locked = shutil.copytree(run_dir, tmp_path / "locked")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    if as_nobody and not shutil.which("setpriv"):
        pytest.skip("root reads everything, and setpriv is missing to drop that")
    locked.chmod(0)
    try:
        command = [*as_nobody, sys.executable, str(ROOT / "generate.py"), f"ckpt={locked}"]
        refused = subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=120)
    finally:
        locked.chmod(0o755)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "permission denied" in refused.stderr and str(tmp_path) in refused.stderr


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ("temperature=1e-45", None),  # as greedy
        (
            "length=10000000000",
            "length=10000000000 with num_samples=1 is too much text for this machine's memory",
        ),
        ("device=tpu", "device=tpu is no device generate.py knows: use auto, cpu, cuda or cuda:<n>"),
        ("device=cuda:7", r"device=cuda:7, but torch sees (no GPU here|\d GPU\(s\), cuda:0 to)"),
    ],
    ids=["tiny-temperature", "huge-length", "device-tpu", "device-cuda7"],
)
@pytest.mark.slow
def test_generate_py_settings_out_of_range_are_one_line(
    run_dir: Path, setting: str, said: str | None
) -> None:
    result = run_generate(f"ckpt={run_dir}", "prompt=ANA", "length=10", "temperature=0", setting)
    if said is None:
        assert result.returncode == 0, result.stderr
        assert result.stdout == generate(load_model(run_dir), "ANA", 10, 0)[0] + "\n"
        return
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert re.search(said, result.stderr), result.stderr


@pytest.mark.slow
def test_generate_py_piped_into_a_reader_that_stops_early_ends_quietly(run_dir: Path, tmp_path: Path) -> None:
    command = [sys.executable, str(ROOT / "generate.py"), f"ckpt={run_dir}", "length=20"]
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=SUBPROCESS_ENV)
        process.stdout.close()  # as `generate.py ... | head` leaves it once head has its lines
        assert process.wait(timeout=120) == 0
    assert "BrokenPipeError" not in (tmp_path / "stderr").read_text()
