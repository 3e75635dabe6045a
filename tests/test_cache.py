"""The corpus cache: encoded once, memory-mapped after, rebuilt when damaged, never stale."""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import time
from multiprocessing.reduction import ForkingPickler
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing  # noqa: F401  (registers torch's shared-memory reductions)
from conftest import ROOT, SUBPROCESS_ENV, TINY, compose_train, data_config, run_train

from charlm.data import cache as cache_module
from charlm.data import file_hashes, mapped
from charlm.data.cache import IDS, META, TextSettings, encode_once
from charlm.data.corpora import TextFiles
from charlm.data.datamodule import CharDataModule, DataConfig
from charlm.data.preprocess import preprocess
from charlm.data.vocab import Vocabulary
from charlm.errors import CharLMError
from charlm.models.lightning_module import CharLM
from charlm.models.network import NetworkConfig
from charlm.training.run import train

PLAIN = TextSettings()
SPANISH = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme; ¡qué señor hidalgo!\n"


def in_memory_reference(text: str, settings: TextSettings = PLAIN) -> tuple[Vocabulary, np.ndarray]:
    """What the whole-text path computes: the vocabulary and ids of the preprocessed text."""
    text = preprocess(text, settings.lowercase, settings.letters_only, settings.normalize)
    vocab = Vocabulary.from_text(text)
    return vocab, np.array([vocab.chars.index(c) for c in text])


def encode(path: Path, cache_dir: Path | None, settings: TextSettings = PLAIN):
    return encode_once(TextFiles(path), path.parent, settings, cache_dir)


def test_the_first_run_writes_the_cache_and_later_ones_map_it(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 50, encoding="utf-8")
    first = encode(path, tmp_path / "cache")
    assert first.built and first.folder.parent == tmp_path / "cache"
    assert sorted(p.name for p in first.folder.iterdir()) == [".lock", IDS, META]
    vocab, ids = in_memory_reference(SPANISH * 50)
    assert first.vocab == vocab and first.ids.dtype == torch.uint8
    assert np.array_equal(first.ids.numpy(), ids)
    assert (first.folder / IDS).stat().st_size == len(ids)  # one byte a character, nothing else

    second = encode(path, tmp_path / "cache")
    assert not second.built and second.folder == first.folder
    assert str((second.folder / IDS).resolve()) in Path("/proc/self/maps").read_text()  # mapped, not read
    assert torch.equal(second.ids, first.ids)


@pytest.mark.parametrize("distinct, dtype", [(300, torch.uint16), (70_000, torch.uint32)])
def test_ids_take_the_smallest_type_the_vocabulary_allows(tmp_path: Path, distinct: int, dtype) -> None:
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + distinct) if chr(c).isprintable()]
    if distinct > 65536:  # CJK, then the supplementary ideographs
        chars = [chr(c) for c in range(0x20000, 0x20000 + distinct)]
    text = " ".join(chars) + "\n"
    path = tmp_path / "wide.txt"
    path.write_text(text, encoding="utf-8")
    encoded = encode(path, tmp_path / "cache", TextSettings(normalize=None))
    assert encoded.ids.dtype == dtype and len(encoded.vocab) == len(set(text))
    assert encoded.vocab.decode(encoded.ids[:20]) == text[:20]


def test_a_changed_file_or_setting_gets_a_new_cache_never_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")
    old = encode(path, tmp_path / "cache")
    lowered = encode(path, tmp_path / "cache", TextSettings(lowercase=True))
    assert lowered.folder != old.folder and "E" not in lowered.vocab.chars
    # the same size, and the old modification time put back: the inode's change time still tells
    stat = path.stat()
    path.write_text((SPANISH * 20).replace("Mancha", "Manche"), encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    new = encode(path, tmp_path / "cache")
    assert new.built and new.folder != old.folder
    assert "Manche" in new.vocab.decode(new.ids[:100])


def test_an_unchanged_file_is_not_read_again_to_know_it(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")
    # hashed two seconds after it was written: past the clock tick in which a write could hide
    later = SimpleNamespace(time_ns=lambda: time.time_ns() + 2_000_000_000)
    monkeypatch.setattr(file_hashes, "time", later)
    encode(path, tmp_path / "cache")
    hashed = []
    for module in (file_hashes, cache_module):  # the corpus's files, and the cache's ids
        real = module.sha256_of_file
        monkeypatch.setattr(module, "sha256_of_file", lambda p, real=real: hashed.append(p) or real(p))
    assert not encode(path, tmp_path / "cache").built
    assert hashed == []
    path.write_text(SPANISH * 20, encoding="utf-8")  # rewritten: read again, the same content
    assert not encode(path, tmp_path / "cache").built
    assert hashed == [path]


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda folder: (folder / IDS).write_bytes((folder / IDS).read_bytes()[:-10]), "cut short"),
        (lambda folder: (folder / IDS).write_bytes(b"\x00" + (folder / IDS).read_bytes()[1:]), "sha256"),
        (lambda folder: (folder / META).write_text("{not json"), "unreadable"),
        (lambda folder: (folder / IDS).unlink(), "missing"),
    ],
    ids=["truncated", "overwritten", "meta damaged", "ids deleted"],
)
def test_a_damaged_cache_is_detected_and_built_again(tmp_path: Path, caplog, damage, why: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")
    good = encode(path, tmp_path / "cache")
    expected = good.ids.clone()
    del good  # its map closed
    damage(next((tmp_path / "cache").glob("textfile-*")))
    again = encode(path, tmp_path / "cache")
    assert again.built and torch.equal(again.ids, expected)
    assert why in caplog.text and "Building it again" in caplog.text


def test_a_cache_that_cannot_be_written_says_where_to_put_it(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")
    (tmp_path / "afile").write_text("")
    with pytest.raises(
        CharLMError, match=r"cannot write the corpus cache in .*afile.*paths.cache_dir"
    ) as err:
        encode(path, tmp_path / "afile" / "cache")
    assert "\n" not in str(err.value)
    in_memory = encode(path, None)  # the way out it names, paths.cache_dir=null
    assert in_memory.folder is None and in_memory.built


def test_a_folder_of_many_files_streams_file_by_file(tmp_path: Path) -> None:
    folder = tmp_path / "poems"
    for i in range(1200):
        sub = folder / f"{i // 100:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:04d}.txt").write_text(f"Poema {i}: {SPANISH}", encoding="utf-8")
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.txt")))
    encoded = encode_once(TextFiles(folder), tmp_path, TextSettings(), tmp_path / "cache")
    vocab, ids = in_memory_reference(text)
    assert encoded.vocab == vocab and np.array_equal(encoded.ids.numpy(), ids)
    assert len(encoded.meta["source"]["sha256"]) == 1200


CONCURRENT = """
import sys, time
from pathlib import Path
from charlm.data.cache import TextSettings, encode_once
from charlm.data.corpora import TextFiles
go = Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.01)
encoded = encode_once(TextFiles(sys.argv[1]), Path(sys.argv[1]).parent, TextSettings(), Path(sys.argv[2]))
print(f"built={encoded.built} sha256={encoded.meta['sha256']}", flush=True)
"""


@pytest.mark.slow
def test_concurrent_builders_build_the_cache_once(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 60_000, encoding="utf-8")  # 5 MB: half a second or more to encode
    go = tmp_path / "go"
    command = [sys.executable, "-c", CONCURRENT, str(path), str(tmp_path / "cache"), str(go)]
    procs = [
        subprocess.Popen(
            command, env=SUBPROCESS_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    go.touch()
    results = [proc.communicate(timeout=120) for proc in procs]
    assert all(proc.returncode == 0 for proc in procs), results
    lines = [out.strip() for out, _ in results]
    assert sorted(line.split()[0] for line in lines) == ["built=False", "built=False", "built=True"]
    assert len({line.split()[1] for line in lines}) == 1
    assert len(list((tmp_path / "cache").glob("textfile-*"))) == 1


def test_the_datamodule_reads_its_splits_from_the_map(tmp_path: Path, text_file: Path) -> None:
    config = DataConfig(path=str(text_file), cache_dir=str(tmp_path / "cache"), seq_len=16, batch_size=8)
    CharDataModule(config).setup()  # builds
    mapped = CharDataModule(config)
    mapped.setup()
    kept = CharDataModule(DataConfig(path=str(text_file), cache_dir=None, seq_len=16, batch_size=8))
    kept.setup()
    for stage in ("train", "val", "test"):
        assert torch.equal(mapped.ids[stage], kept.ids[stage])
    x, y = next(iter(mapped.train_dataloader()))
    assert x.shape == (8, 16) and torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.slow
def test_the_cache_gives_the_in_memory_losses_to_the_last_digit(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SPANISH * 300, encoding="utf-8")
    losses = {}
    for name, cache_dir in [
        ("memory", "null"),
        ("built", str(tmp_path / "cache")),
        ("mapped", str(tmp_path / "cache")),
    ]:
        cfg = compose_train(
            [
                "data=textfile",
                f"data.path={corpus}",
                f"paths.cache_dir={cache_dir}",
                f"paths.output_dir={tmp_path / name}",
                "hidden=16",
                *TINY,
            ]
        )
        losses[name] = train(cfg)
    assert losses["memory"] == losses["built"] == losses["mapped"]
    assert len(list((tmp_path / "cache").glob("textfile-*"))) == 1


def run_prepare(*overrides: str) -> subprocess.CompletedProcess:
    """`python -m charlm.prepare OVERRIDES`, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "charlm.prepare", *overrides],
        env=SUBPROCESS_ENV,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


@pytest.mark.slow
def test_prepare_encodes_ahead_and_reports_the_cache(tmp_path: Path, text_file: Path) -> None:
    overrides = ["data=textfile", f"data.path={text_file}", f"paths.cache_dir={tmp_path / 'cache'}"]
    first = run_prepare(*overrides)
    assert first.returncode == 0, first.stderr
    (folder,) = (tmp_path / "cache").glob("textfile-*")
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    assert str(folder) in first.stdout and "built in" in first.stdout
    assert (
        f"{meta['characters']:,} characters" in first.stdout
        and f"vocabulary: {len(meta['chars'])}" in first.stdout
    )
    assert "train 14,760 / val 820 / test 820" in first.stdout
    second = run_prepare(*overrides)
    assert second.returncode == 0 and "already built; checked" in second.stdout
    # a run then maps it: no second cache
    result = run_train(
        [
            "data=textfile",
            f"data.path={text_file}",
            f"paths.cache_dir={tmp_path / 'cache'}",
            "hidden=16",
            *TINY,
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "cache").glob("textfile-*"))) == 1


@pytest.mark.slow
def test_prepare_and_train_refuse_an_unwritable_cache_in_one_line(tmp_path: Path, text_file: Path) -> None:
    (tmp_path / "afile").write_text("")
    where = f"paths.cache_dir={tmp_path / 'afile' / 'cache'}"
    prepared = run_prepare("data=textfile", f"data.path={text_file}", where)
    assert prepared.returncode == 1 and prepared.stderr.count("\n") == 1
    assert "cannot write the corpus cache" in prepared.stderr and "paths.cache_dir" in prepared.stderr
    trained = run_train(["data=textfile", f"data.path={text_file}", where, *TINY], cwd=tmp_path)
    assert trained.returncode == 1 and "Traceback" not in trained.stderr
    assert "cannot write the corpus cache" in trained.stderr
    assert not (tmp_path / "logs" / "runs").exists() or not any((tmp_path / "logs" / "runs").iterdir())


def test_a_build_cut_short_leaves_no_cache_that_looks_whole(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "write_json", disk_full)
    with pytest.raises(CharLMError, match="No space left on device"):
        encode(path, tmp_path / "cache")
    (folder,) = (tmp_path / "cache").glob("textfile-*")
    assert not (folder / META).exists() and not list(folder.glob(".*.partial"))
    monkeypatch.undo()
    assert encode(path, tmp_path / "cache").built  # and the next run builds it whole


def test_verify_reads_a_cache_whose_damage_kept_its_file_time(tmp_path: Path) -> None:
    """charlm.prepare's check: the sha256 even when the file's time says it is unchanged."""
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")
    good = encode(path, tmp_path / "cache")
    expected, ids = good.ids.clone(), good.folder / IDS
    del good
    stat = ids.stat()
    ids.write_bytes(b"\x00" + ids.read_bytes()[1:])
    os.utime(ids, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert not encode(path, tmp_path / "cache").built  # trusted by its time, as designed
    checked = encode_once(TextFiles(path), tmp_path, PLAIN, tmp_path / "cache", verify=True)
    assert checked.built and torch.equal(checked.ids, expected)


def test_a_file_changed_after_it_was_hashed_is_never_filed_under_its_old_content(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 20, encoding="utf-8")
    real = file_hashes.FileHashes.lookup

    def hashed_then_edited(self, file: Path):
        found = real(self, file)
        file.write_text("otro texto\n" * 20, encoding="utf-8")
        return found

    monkeypatch.setattr(file_hashes.FileHashes, "lookup", hashed_then_edited)
    with pytest.raises(CharLMError, match=r"corpus.txt changed while corpus 'textfile' was being encoded"):
        encode(path, tmp_path / "cache")
    assert not list((tmp_path / "cache").glob(f"*/{META}"))  # nothing filed
    monkeypatch.undo()
    again = encode(path, tmp_path / "cache")
    assert again.vocab.decode(again.ids[:11]) == "otro texto\n"


def test_wide_vocabularies_reach_the_model_as_int32_batches(tmp_path: Path) -> None:
    # 33,000 characters: ids past 32,767, which the datasets read through a signed 16-bit view
    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 33_000)]
    text = "".join(chars) + "\n"
    path = tmp_path / "wide.txt"
    path.write_text(text * 3, encoding="utf-8")
    for stateful in (False, True):
        datamodule = CharDataModule(
            data_config(path, seq_len=16, batch_size=4, normalize=None, stateful=stateful)
        )
        datamodule.setup()
        assert datamodule.ids["train"].dtype == torch.uint16
        batches = list(datamodule.train_dataloader())
        assert max(int(x.max()) for x, _ in batches) > 32_767
        x, y = batches[0]
        assert x.dtype == y.dtype == torch.int32 and torch.equal(x[:, 1:], y[:, :-1])
        assert all(datamodule.vocab.decode(row) in text * 3 for row in x)
        model = CharLM(datamodule.vocab.chars, NetworkConfig(hidden=8, embedding_dim=4))
        logits, _ = model(x)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten().long())
        loss.backward()
        assert torch.isfinite(loss)


WIDE = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 300)) + "\n"


@pytest.mark.parametrize("text", [SPANISH * 2000, WIDE * 100], ids=["uint8", "uint16"])
def test_datasets_over_the_map_pickle_as_its_file_name_not_its_bytes(tmp_path: Path, text: str) -> None:
    """A spawned DataLoader worker or ddp_spawn rank maps the file itself instead of receiving a
    shared-memory copy of the corpus."""
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    for stateful in (False, True):
        datamodule = CharDataModule(data_config(path, seq_len=16, batch_size=4, stateful=stateful))
        datamodule.setup()
        dataset = datamodule._dataset("train")
        payload = io.BytesIO()
        ForkingPickler(payload).dump(dataset)
        tensor = next(v for v in vars(dataset).values() if isinstance(v, torch.Tensor))
        assert not tensor.is_shared()  # torch's pickler would have copied it into shared memory
        copy = pickle.loads(payload.getvalue())
        copied = next(v for v in vars(copy).values() if isinstance(v, torch.Tensor))
        assert str(path.parent / "cache") in str(mapped._MAPS[copied.untyped_storage().data_ptr()][0])
        assert len(copy) == len(dataset)
        for index in (0, len(dataset) - 1):
            assert all(torch.equal(a, b) for a, b in zip(copy[index], dataset[index], strict=True))


def test_a_set_up_datamodule_pickles_its_splits_as_the_files_name(tmp_path: Path) -> None:
    """What a ddp_spawn rank receives: Lightning pickles the datamodule after build() set it up."""
    path = tmp_path / "corpus.txt"
    path.write_text(SPANISH * 2000, encoding="utf-8")
    datamodule = CharDataModule(data_config(path, seq_len=16, batch_size=4))
    datamodule.setup()
    payload = io.BytesIO()
    ForkingPickler(payload).dump(datamodule)
    assert not any(ids.is_shared() for ids in datamodule.ids.values())
    copy = pickle.loads(payload.getvalue())
    for stage, ids in copy.ids.items():
        assert ids.untyped_storage().data_ptr() in mapped._MAPS
        assert torch.equal(ids, datamodule.ids[stage])
    assert all(
        torch.equal(a, b) for a, b in zip(copy.datasets["val"][3], datamodule.datasets["val"][3], strict=True)
    )


@pytest.mark.slow
def test_a_spawned_loader_worker_reads_the_same_batches(tmp_path: Path, text_file: Path) -> None:
    config = data_config(text_file, seq_len=16, batch_size=8, num_workers=1)
    datamodule = CharDataModule(config)
    datamodule.setup()
    loader = datamodule.train_dataloader()
    here = [batch for batch in datamodule.train_dataloader()]
    spawned = torch.utils.data.DataLoader(
        loader.dataset,
        batch_size=8,
        sampler=loader.sampler,
        num_workers=1,
        multiprocessing_context="spawn",
        collate_fn=torch.utils.data.default_convert,
    )
    for (x, y), (x2, y2) in zip(here, spawned, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


def test_a_corpus_object_of_ones_own_needs_only_read(tmp_path: Path) -> None:
    class Poems:
        name = "poems"

        def fetch(self, data_dir: Path) -> None:
            pass

        def read(self, data_dir: Path) -> str:
            return SPANISH * 10

    encoded = encode_once(Poems(), tmp_path, PLAIN, tmp_path / "cache")
    assert encoded.built and encoded.vocab.decode(encoded.ids[:20]) == SPANISH[:20]
    assert not encode_once(Poems(), tmp_path, PLAIN, tmp_path / "cache").built


@pytest.mark.slow
def test_prepare_refuses_bad_splits_before_encoding(tmp_path: Path, text_file: Path) -> None:
    result = run_prepare(
        "data=textfile",
        f"data.path={text_file}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "data.splits=[0.5,0.5,0.5]",
    )
    assert result.returncode == 1 and "must be non-negative and sum to 1" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "cache").exists()
