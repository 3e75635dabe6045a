"""Corpora, vocabulary, preprocessing and windows: what every run is built on."""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import data_config
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DistributedSampler

from charlm.data.corpora import CensusNames, Download, TextFiles
from charlm.data.datamodule import STAGES, CharDataModule
from charlm.data.preprocess import preprocess
from charlm.data.sampling import EvaluationShare, ShuffledWindows
from charlm.data.vocab import Vocabulary
from charlm.data.windows import StreamBatches, WindowDataset, split_bounds
from charlm.errors import CharLMError


def test_vocabulary_is_sorted_and_round_trips(tmp_path: Path) -> None:
    text = "¡Hola, señor Quijote!\nÑandú 42"
    vocab = Vocabulary.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == torch.uint8 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab


@pytest.mark.parametrize("size, dtype", [(255, torch.uint8), (256, torch.int32), (300, torch.int32)])
def test_ids_use_the_smallest_type_that_fits(size: int, dtype: torch.dtype) -> None:
    text = "".join(chr(c) for c in range(0x400, 0x400 + size))  # Cyrillic and on
    vocab = Vocabulary.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == dtype and ids.tolist() == list(range(size))


def test_encoding_unknown_characters_names_them() -> None:
    vocab = Vocabulary.from_text("abc")
    with pytest.raises(CharLMError, match="'xz'"):
        vocab.encode("axbz")


def test_preprocessing_like_the_quijote_lesson() -> None:
    text = "¡Señor Don QUIJOTE!\n  —dijo Sancho, en 1605 (½ legua_]"
    assert preprocess(text, lowercase=True) == text.lower()
    expected = " señor don quijote dijo sancho en legua "
    assert preprocess(text, lowercase=True, letters_only=True) == expected
    decomposed = unicodedata.normalize("NFD", "Señor")  # n + combining tilde
    assert preprocess(decomposed, letters_only=True) == "Señor"


def test_windows_shift_targets_by_one_and_follow_the_stride() -> None:
    ids = torch.arange(20)
    dataset = WindowDataset(ids, seq_len=5, stride=3)
    assert len(dataset) == (20 - 6) // 3 + 1
    for i in range(len(dataset)):
        x, y = dataset[i]
        assert x.tolist() == list(range(3 * i, 3 * i + 5))
        assert y.tolist() == list(range(3 * i + 1, 3 * i + 6))
    x, y = dataset.__getitems__([2, 0])
    assert torch.equal(x, torch.stack([dataset[2][0], dataset[0][0]]))
    assert torch.equal(y, torch.stack([dataset[2][1], dataset[0][1]]))


def test_windows_are_views_not_copies() -> None:
    ids = torch.zeros(1_000_000, dtype=torch.uint8)
    dataset = WindowDataset(ids, seq_len=100, stride=1)  # 100x overlap
    assert len(dataset) == 1_000_000 - 100
    assert dataset.windows.untyped_storage().data_ptr() == ids.untyped_storage().data_ptr()
    assert dataset.windows.untyped_storage().nbytes() == ids.numel()


def test_split_bounds_are_contiguous_and_validated() -> None:
    assert split_bounds(1000, (0.9, 0.05, 0.05)) == [(0, 900), (900, 950), (950, 1000)]
    with pytest.raises(CharLMError, match="sum to 1"):
        split_bounds(1000, (0.9, 0.2, 0.05))


@pytest.mark.parametrize("stride", [1, 7, 16])
def test_no_window_crosses_a_split_boundary(text_file: Path, stride: int) -> None:
    dm = CharDataModule(data_config(text_file, seq_len=16, stride=stride, splits=(0.8, 0.1, 0.1)))
    dm.setup()
    n = len(text_file.read_text(encoding="utf-8"))
    bounds = dict(zip(STAGES, split_bounds(n, (0.8, 0.1, 0.1)), strict=True))
    for stage, dataset in dm.datasets.items():
        start, end = bounds[stage]
        windows = dataset.windows
        first = windows.storage_offset()
        last_end = first + (len(dataset) - 1) * windows.stride(0) + windows.shape[1]
        assert first == start and last_end <= end < last_end + stride
        assert windows.untyped_storage().nbytes() == n  # every split views the one encoded corpus


def test_datamodule_batches(text_file: Path) -> None:
    dm = CharDataModule(data_config(text_file, seq_len=16, batch_size=8))
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == y.shape == (8, 16) and x.dtype == torch.uint8
    assert torch.equal(x[:, 1:], y[:, :-1])
    # validation is in order, training is shuffled
    first_val = next(iter(dm.val_dataloader()))[0]
    assert torch.equal(first_val, torch.stack([dm.datasets["val"][i][0] for i in range(8)]))

    # training is shuffled, in an order fixed by the seed and the epoch (so resumes can replay it)
    def first_batch(epoch: int) -> torch.Tensor:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[0]

    assert not torch.equal(first_batch(0), torch.stack([dm.datasets["train"][i][0] for i in range(8)]))
    assert torch.equal(first_batch(0), first_batch(0))
    assert not torch.equal(first_batch(0), first_batch(1))


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False)])
def test_batches_for_a_gpu_are_page_locked(text_file: Path, device: str, pinned: bool) -> None:
    """So that Lightning's copy to the device is asynchronous: from pageable memory the host would
    wait for the device's queue at every batch (not seen on a CPU, hence the loader's setting)."""
    dm = CharDataModule(data_config(text_file, seq_len=16, batch_size=8))
    dm.setup()
    strategy = SimpleNamespace(root_device=torch.device(device), broadcast=lambda value: value)
    dm.trainer = SimpleNamespace(strategy=strategy, global_rank=0, world_size=1, current_epoch=0)
    assert dm.train_dataloader().pin_memory is dm.val_dataloader().pin_memory is pinned


def test_stream_batches_continue_each_other_row_by_row() -> None:
    ids = torch.arange(103)
    batches = StreamBatches(ids, batch_size=4, seq_len=10)  # 4 streams of 25: 3 batches of 10, 10, 4
    assert len(batches) == 3 and [b[0].shape for b in batches] == [(4, 10), (4, 10), (4, 4)]
    inputs = torch.cat([x for x, _ in batches], dim=1)
    targets = torch.cat([y for _, y in batches], dim=1)
    streams = ids[:100].view(4, 25)
    assert torch.equal(inputs, streams[:, :-1]) and torch.equal(targets, streams[:, 1:])
    # row i of batch t+1 starts where row i of batch t stopped
    assert torch.equal(batches[1][0][:, 0], batches[0][1][:, -1])


def test_ddp_ranks_read_their_own_streams_of_the_single_process_layout() -> None:
    """N ranks of batch_size streams each read exactly the streams of one process with N x batch_size."""
    ids = torch.arange(1000)
    whole = StreamBatches(ids, batch_size=6, seq_len=10)
    ranks = [StreamBatches(ids, batch_size=3, seq_len=10, rank=r, world_size=2) for r in range(2)]
    assert all(len(rank) == len(whole) for rank in ranks)
    for i in range(len(whole)):
        inputs, targets = zip(*(rank[i] for rank in ranks), strict=True)
        assert torch.equal(torch.cat(inputs), whole[i][0]) and torch.equal(torch.cat(targets), whole[i][1])


def test_stateful_datamodule_reads_the_streams_in_order(text_file: Path) -> None:
    dm = CharDataModule(data_config(text_file, seq_len=16, batch_size=8, stateful=True))
    dm.setup()
    for stage in STAGES:
        loader = getattr(dm, f"{stage}_dataloader")()
        batches = list(loader)
        assert all(x.shape[0] == 8 for x, _ in batches)
        assert all(torch.equal(b[0][:, 0], a[1][:, -1]) for a, b in itertools.pairwise(batches))
    with pytest.raises(CharLMError, match="val split has .* too few for 500 streams"):
        CharDataModule(data_config(text_file, batch_size=500, stateful=True)).setup()


def test_a_split_shorter_than_one_window_is_refused(text_file: Path) -> None:
    dm = CharDataModule(data_config(text_file, seq_len=16, splits=(0.999, 0.001, 0.0)))
    with pytest.raises(CharLMError, match="val split has .* fewer than one window"):
        dm.setup()


def test_census_names_need_no_network() -> None:
    text = CensusNames().read(Path("unused"))
    names = text.splitlines()
    assert len(names) > 80_000 and len(set(names)) == len(names)
    assert {"MARY", "JAMES", "SMITH"} <= set(names)
    assert all(name.isalpha() for name in names)
    assert CensusNames().read(Path("unused")) == text  # same order every time


def test_textfiles_reads_a_folder_of_txt_files_in_order(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("segundo", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("tercero", encoding="utf-8")
    (tmp_path / "a.txt").write_text("primero", encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert TextFiles(tmp_path).read(tmp_path) == "primero\nsegundo\ntercero"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_checks_the_hash_and_caches(tmp_path: Path, text_file: Path) -> None:
    data_dir = tmp_path / "data"
    corpus = Download("tiny", text_file.as_uri(), _sha256(text_file), filename="tiny.txt")
    assert corpus.read(data_dir) == text_file.read_text(encoding="utf-8")
    # a cached file with the right hash is used as is: this URL would fail if it were fetched
    offline = Download("tiny", "http://127.0.0.1:9/tiny.txt", _sha256(text_file), "tiny.txt")
    assert offline.read(data_dir) == text_file.read_text(encoding="utf-8")


def test_download_hash_mismatch_is_clear_and_leaves_no_file(tmp_path: Path, text_file: Path) -> None:
    data_dir = tmp_path / "data"
    corpus = Download("tiny", text_file.as_uri(), "0" * 64, filename="tiny.txt")
    with pytest.raises(CharLMError) as raised:
        corpus.fetch(data_dir)
    message = str(raised.value)
    assert "could not get corpus 'tiny'" in message and f"sha256 is {_sha256(text_file)}" in message
    assert str(data_dir / "tiny.txt") in message and "0" * 64 in message
    assert "\n" not in message
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


@pytest.mark.parametrize("where", ["cut", "refused"])
def test_a_broken_download_is_one_line_and_leaves_no_file(
    tmp_path: Path, http_server: tuple[str, Path], where: str
) -> None:
    url, served = http_server
    (served / "quijote.txt").write_text("En un lugar de la Mancha\n" * 40_000, encoding="utf-8")  # 1 MB
    if where == "cut":  # the connection drops half way
        source, why = f"{url}/quijote.txt.cut", "Connection broken"
    else:  # nothing listens there: no network
        source, why = "http://127.0.0.1:9/quijote.txt", "cannot connect to 127.0.0.1 (no network?)"
    data_dir = tmp_path / "data"
    corpus = Download("quijote", source, _sha256(served / "quijote.txt"), filename="quijote.txt")
    with pytest.raises(CharLMError) as raised:
        corpus.fetch(data_dir)
    message = str(raised.value)
    assert message.startswith(f"could not get corpus 'quijote' from {source}: ") and why in message
    assert "\n" not in message and f"Download it by hand to {data_dir / 'quijote.txt'}" in message
    assert not data_dir.exists() or list(data_dir.iterdir()) == []  # no partial file to be used later


def test_a_file_put_by_hand_with_the_wrong_hash_is_named_and_kept(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "tiny.txt").write_text("another edition", encoding="utf-8")
    corpus = Download("tiny", "http://127.0.0.1:9/tiny.txt", "0" * 64)
    with pytest.raises(CharLMError, match="tiny.txt is there, but its sha256 is .* delete it"):
        corpus.fetch(data_dir)
    assert (data_dir / "tiny.txt").read_text(encoding="utf-8") == "another edition"


def test_stride_zero_is_refused(text_file: Path) -> None:
    dm = CharDataModule(data_config(text_file, seq_len=16, stride=0))
    with pytest.raises(CharLMError, match="stride"):
        dm.setup()


def test_download_without_network_is_clear_and_leaves_no_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    corpus = Download("tiny", "http://127.0.0.1:9/tiny.txt", "0" * 64)
    with pytest.raises(CharLMError, match="could not get corpus 'tiny'.*by hand"):
        corpus.fetch(data_dir)
    assert not data_dir.exists() or list(data_dir.iterdir()) == []


def test_a_latin1_file_is_named_with_its_byte_and_reads_with_data_encoding(tmp_path: Path) -> None:
    path = tmp_path / "poemas.txt"
    path.write_bytes("Volverán las oscuras golondrinas\n".encode("latin-1") * 50)
    expected = r"is not utf-8 text \(byte 6 is b'\\xe1'\): .* data.encoding=latin-1"  # 'á' in Latin-1
    with pytest.raises(CharLMError, match=expected):
        CharDataModule(data_config(path, seq_len=8)).setup()
    datamodule = CharDataModule(data_config(path, seq_len=8, encoding="latin-1"))
    datamodule.setup()
    assert "á" in datamodule.vocab.chars
    with pytest.raises(CharLMError, match="unknown data.encoding 'klingon'"):
        CharDataModule(data_config(path, encoding="klingon")).setup()


@pytest.mark.parametrize(
    "name, content, error",
    [
        ("nowhere.txt", None, r"data.path .*nowhere.txt does not exist"),
        ("", None, r"no .txt files in folder"),
        ("empty.txt", b"", r"corpus 'textfile' is empty"),
        ("image.txt", b"\x89PNG\r\n\x1a\n\x00", r"byte 0 is b'\\x89'"),
        ("short.txt", b"hola\n" * 10, r"fewer than one window"),
        ("/dev/null", None, r"data.path /dev/null is not a regular file"),
    ],
)
def test_unusable_text_files_get_one_clear_line(
    tmp_path: Path, name: str, content: bytes | None, error: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CharLMError, match=error) as raised:
        CharDataModule(data_config(path, seq_len=100)).setup()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "encoding, content, error",
    [
        # no byte-order mark: Python's utf-16 codec raises a UnicodeError that is no UnicodeDecodeError
        ("utf-16", "¡Hola, señor!\n".encode() * 40, r"is UTF-8 text, but data.encoding=utf-16"),
        (
            "utf-16",
            "¡Hola, señor!\n".encode("latin-1") * 40,
            r"has no byte-order mark, so data.encoding=utf-16",
        ),
        # would decode silently, two bytes to one CJK character each
        ("utf-16-le", b"En un lugar de la Mancha\n" * 40 + "ñ".encode(), r"is UTF-8 text"),
        ("latin-1", "¡Hola, señor!\n".encode() * 40, r"is UTF-8 text, but data.encoding=latin-1"),
        # ASCII is UTF-8 too: as utf-16-le it would be one CJK character per two letters
        ("utf-16-le", b"First Citizen: speak, speak.\n" * 40, r"is UTF-8 text, but data.encoding=utf-16-le"),
    ],
)
def test_a_file_read_in_the_wrong_encoding_is_refused(
    tmp_path: Path, encoding: str, content: bytes, error: str
) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(CharLMError, match=error) as raised:
        CharDataModule(data_config(path, seq_len=8, encoding=encoding)).setup()
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-8-sig"])
def test_a_file_in_the_encoding_it_is_given_reads(tmp_path: Path, encoding: str) -> None:
    path = tmp_path / "corpus.txt"
    path.write_bytes(("First Citizen: ¡speak, señor!\n" * 40).encode(encoding))
    datamodule = CharDataModule(data_config(path, seq_len=8, encoding=encoding))
    datamodule.setup()
    assert "ñ" in datamodule.vocab.chars and "\ufeff" not in datamodule.vocab.chars


def test_utf16_with_its_byte_order_mark_reads_and_the_mark_is_no_character(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("¡Hola, señor!\n" * 40, encoding="utf-16")  # Python writes the mark first
    for encoding, file in (("utf-16", path), ("utf-8", tmp_path / "bom8.txt")):
        if encoding == "utf-8":
            file.write_text("\ufeff" + "¡Hola, señor!\n" * 40, encoding="utf-8")  # as quijote.txt opens
        datamodule = CharDataModule(data_config(file, seq_len=8, encoding=encoding))
        datamodule.setup()
        assert "\ufeff" not in datamodule.vocab.chars and "ñ" in datamodule.vocab.chars


def test_text_is_nfc_normalised_unless_told_not_to(tmp_path: Path) -> None:
    """An accent written as a combining mark (e + U+0301) and a precomposed é are one character."""
    path = tmp_path / "corpus.txt"
    path.write_text(("cafe\u0301 y café\n") * 40, encoding="utf-8")
    nfc = CharDataModule(data_config(path, seq_len=8))
    nfc.setup()
    assert "é" in nfc.vocab.chars and "\u0301" not in nfc.vocab.chars
    kept = CharDataModule(data_config(path, seq_len=8, normalize=None))
    kept.setup()
    assert {"é", "\u0301", "e"} <= set(kept.vocab.chars)
    with pytest.raises(CharLMError, match="data.normalize must be one of NFC"):
        CharDataModule(data_config(path, normalize="nfc"))


def test_a_corpus_without_letters_names_letters_only(tmp_path: Path) -> None:
    path = tmp_path / "numbers.txt"
    path.write_text("3.14159 2.71828\n" * 50, encoding="utf-8")
    with pytest.raises(CharLMError, match="has no letters: data.letters_only=true leaves nothing"):
        CharDataModule(data_config(path, seq_len=8, letters_only=True)).setup()


def test_a_stride_longer_than_the_window_warns_how_much_is_skipped(
    text_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    CharDataModule(data_config(text_file, seq_len=10, stride=40)).setup()
    assert "data.stride=40 is longer than data.seq_len=10: the windows skip 75% of the text" in caplog.text


def test_asking_for_a_test_split_that_is_not_there_is_one_line(text_file: Path) -> None:
    datamodule = CharDataModule(data_config(text_file, seq_len=8, splits=[0.9, 0.1, 0]))
    datamodule.setup()
    with pytest.raises(CharLMError, match=r"there is no test split: data.splits=\[0.9, 0.1, 0\]"):
        datamodule.test_dataloader()


@pytest.mark.parametrize("windows", [1, 7, 100, 1001, 2**20 + 3])
@pytest.mark.parametrize("replicas", [1, 2, 3])
@pytest.mark.parametrize("shuffle, drop_last", [(True, False), (False, False), (True, True)])
def test_shuffled_windows_deal_torchs_order_without_its_list(
    windows: int, replicas: int, shuffle: bool, drop_last: bool
) -> None:
    """The same indices, in the same order, for every rank and epoch: runs and resumes keep the
    order they had with torch's DistributedSampler, whose list cost 36 bytes a window."""
    dataset = range(windows)
    for rank, epoch in itertools.product(range(replicas), (0, 3)):
        ours = ShuffledWindows(dataset, replicas, rank, shuffle=shuffle, seed=1234, drop_last=drop_last)
        torchs = DistributedSampler(dataset, replicas, rank, shuffle=shuffle, seed=1234, drop_last=drop_last)
        ours.set_epoch(epoch)
        torchs.set_epoch(epoch)
        assert list(ours) == list(torchs) and len(ours) == len(torchs)


@pytest.mark.parametrize("windows, replicas", [(1, 1), (7, 2), (1001, 3), (10, 4)])
def test_evaluation_shares_are_lightnings_without_its_list(windows: int, replicas: int) -> None:
    for rank in range(replicas):
        ours = EvaluationShare(range(windows), replicas, rank, shuffle=False)
        lightnings = UnrepeatedDistributedSampler(range(windows), replicas, rank, shuffle=False)
        assert list(ours) == list(lightnings) and len(ours) == len(lightnings)
