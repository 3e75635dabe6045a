"""Encode a corpus once; memory-map it in every run, sweep job and DDP rank.

The first run that needs a corpus with given text settings streams it, a few MB at a time and
never as one string, twice: once for its vocabulary, once to write its ids as a flat array of the
smallest integer type the vocabulary allows (uint8 up to 256 characters, else uint16, else uint32):

    <cache_dir>/<corpus>-<key>/ids.bin     the ids, raw
    <cache_dir>/<corpus>-<key>/meta.json   the vocabulary, the ids' type, length and sha256, and
                                           what they were built from

The key hashes the corpus's content (its files' sha256, in order) and the settings that change the
text (encoding, normalize, lowercase, letters_only): a changed file or setting gets a new cache,
never a stale one. Later runs map `ids.bin` (numpy.memmap): the page cache holds the text once
however many processes read it, and the splits, windows and streams are views of the map, so a
run's own memory no longer holds its corpus (charlm.data.sampling keeps the shuffled order in 4
bytes a window). Builders take a file lock, so that two sweep jobs or DDP ranks starting together
build it once; a cache cut short or changed since it was written (its size, or its sha256 when
its modification time changed) is built again.

`cache_dir=None` keeps the ids in memory instead (the same two passes, no files).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from filelock import FileLock, Timeout
from pytorch_lightning.utilities import rank_zero_only
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from charlm.data.corpora import Corpus, Download, TextFiles
from charlm.data.file_hashes import FileHashes, sha256_of_file, stat_signature
from charlm.data.json_files import write_json
from charlm.data.mapped import map_ids
from charlm.data.preprocess import preprocess_pieces
from charlm.data.vocab import Vocabulary, codepoints, mark_seen
from charlm.errors import CharLMError

log = logging.getLogger(__name__)

# bump when ids.bin or meta.json change meaning: older caches are then built again
FORMAT = 1
IDS, META = "ids.bin", "meta.json"
# a corpus at least this large shows a progress bar while it is encoded (prepare always shows one)
_PROGRESS_FROM_BYTES = 64 * 2**20


@dataclass(frozen=True)
class TextSettings:
    """The data settings that change the text, hence its ids (data.<name>)."""

    lowercase: bool = False
    letters_only: bool = False
    normalize: str | None = "NFC"


@dataclass(frozen=True)
class EncodedCorpus:
    """A corpus's vocabulary and ids: a view of the cache's map, or an array in memory."""

    vocab: Vocabulary
    ids: torch.Tensor
    # the cache's folder; None when the ids are in memory (cache_dir=None)
    folder: Path | None
    meta: dict[str, Any]
    # whether this call encoded it (rather than mapping a cache built before)
    built: bool = False


def encode_once(
    corpus: Corpus,
    data_dir: Path,
    settings: TextSettings,
    cache_dir: Path | None,
    progress: bool | None = None,
    verify: bool = False,
) -> EncodedCorpus:
    """The corpus encoded: mapped from its cache in `cache_dir`, built there first if need be.

    `progress`: show a bar while encoding (None: for corpora over 64 MB, on DDP rank 0 only).
    `verify`: check a cache already there against its sha256 (else only when its file changed).
    """
    if cache_dir is None:
        source = _Source.of(corpus, data_dir, None)
        with _bar(corpus, data_dir, progress) as bar:
            vocab, ids, meta = _encode(corpus, data_dir, settings, source, None, bar)
        return EncodedCorpus(vocab, torch.from_numpy(ids), None, meta, built=True)
    cache_dir = Path(cache_dir).expanduser()
    hashes = FileHashes(cache_dir / "file-hashes.json")
    source = _Source.of(corpus, data_dir, hashes)
    hashes.save()
    content = {
        "format": FORMAT,
        "source": source.identity,
        "settings": asdict(settings),
        "unicode": unicodedata.unidata_version,  # NFC, lower() and isalpha() follow it
    }
    key = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    folder = cache_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', corpus.name)}-{key[:16]}"
    meta, problem = check_cache(folder, key, verify)
    built = meta is None
    if built:
        target = _Target(corpus, data_dir, settings, source, folder, key)
        meta, built = _build_under_lock(target, progress, problem, verify)
    return replace(map_cache(folder, meta), built=built)


@dataclass(frozen=True)
class _Target:
    """One cache to build: from what, and where."""

    corpus: Corpus
    data_dir: Path
    settings: TextSettings
    source: _Source
    folder: Path
    key: str


@dataclass(frozen=True)
class _Source:
    """What a corpus's text is made of: its files' sha256 in reading order and their encoding (the
    same files anywhere are the same corpus), or the sha256 of a text built in memory; and the
    files' state when hashed, which an encoding checks it read (else it would file other text
    under this content's key)."""

    identity: dict[str, Any]
    files: tuple[Path, ...] = ()
    signatures: tuple[tuple[int, ...], ...] = ()

    @classmethod
    def of(cls, corpus: Corpus, data_dir: Path, hashes: FileHashes | None) -> _Source:
        files = _source_files(corpus, data_dir)
        if files is None:
            if hashes is None:  # in memory: nothing to key
                return cls({})
            digest = hashlib.sha256()
            for text, _ in _pieces(corpus, data_dir):
                digest.update(text.encode("utf-8", "surrogatepass"))
            return cls({"kind": type(corpus).__name__, "text_sha256": digest.hexdigest()})
        if hashes is None:
            return cls({}, tuple(files), tuple(tuple(_signature(path, corpus)) for path in files))
        looked_up = [hashes.lookup(path) for path in files]
        identity = {
            "kind": "files",
            "encoding": getattr(corpus, "encoding", "utf-8"),
            "sha256": [digest for digest, _ in looked_up],
        }
        return cls(identity, tuple(files), tuple(tuple(signature) for _, signature in looked_up))

    def check_unchanged(self, corpus: Corpus) -> None:
        """Refuse the encoding if a file changed since it was hashed (or since the encoding began)."""
        for path, signature in zip(self.files, self.signatures, strict=True):
            if tuple(_signature(path, corpus)) != signature:
                raise CharLMError(
                    f"{path} changed while corpus '{corpus.name}' was being encoded: "
                    "run again once it is written"
                )


def _signature(path: Path, corpus: Corpus) -> list[int]:
    try:
        return stat_signature(path)
    except OSError as err:
        raise CharLMError(f"corpus '{corpus.name}': cannot read {path}: {err.strerror or err}") from None


def _source_files(corpus: Corpus, data_dir: Path) -> list[Path] | None:
    if isinstance(corpus, Download):
        corpus.fetch(data_dir)
        return [corpus.path(data_dir)]
    if isinstance(corpus, TextFiles):
        return corpus.files()
    return None


def _pieces(corpus: Corpus, data_dir: Path) -> Iterator[tuple[str, int]]:
    """The corpus's text piece by piece; a corpus object of one's own may have only `read`."""
    if hasattr(corpus, "pieces"):
        return corpus.pieces(data_dir)
    text = corpus.read(data_dir)
    return iter([(text, len(text.encode("utf-8", "surrogatepass")))])


def _nbytes(corpus: Corpus, data_dir: Path) -> int:
    return corpus.nbytes(data_dir) if hasattr(corpus, "nbytes") else 0


def check_cache(folder: Path, key: str, verify: bool = False) -> tuple[dict[str, Any] | None, str | None]:
    """The cache's meta.json if its ids are whole, else (None, why not; None when never built).

    Its size is checked at every call; its sha256 when its file's modification time differs from
    the one written at build time (a write; a copy that keeps times, cp -a or rsync -a, is trusted)
    or when `verify` asks.
    """
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as err:
        return None, f"its {META} is unreadable ({err})"
    try:
        if meta["format"] != FORMAT or meta["key"] != key:
            return None, f"its {META} is from another charlm version"
        expected = meta["characters"] * np.dtype(meta["dtype"]).itemsize
        stored_time, stored_sha256 = meta["ids_mtime_ns"], meta["sha256"]
    except (KeyError, TypeError) as err:
        return None, f"its {META} lacks {err}"
    ids = folder / IDS
    try:
        size, _, mtime_ns, _ = stat_signature(ids)
    except OSError as err:
        return None, f"its {IDS} is missing ({err.strerror or err})"
    if size != expected:
        return None, f"its {IDS} holds {size:,} bytes, not {expected:,} (cut short?)"
    if verify or mtime_ns != stored_time:
        if sha256_of_file(ids) != stored_sha256:
            return None, f"its {IDS} does not match its sha256 (changed since it was built)"
        if mtime_ns != stored_time:  # the same bytes, touched: remember, or say why it is read again
            try:
                write_json(folder / META, {**meta, "ids_mtime_ns": mtime_ns})
            except OSError:
                log.info("checked %s against its sha256: its modification time changed", ids)
    return meta, None


def map_cache(folder: Path, meta: dict[str, Any]) -> EncodedCorpus:
    """The cache's ids, over a map of ids.bin (charlm.data.mapped)."""
    ids = map_ids(folder / IDS, meta["dtype"], meta["characters"])
    return EncodedCorpus(Vocabulary(tuple(meta["chars"])), ids, folder, meta)


def _build_under_lock(
    target: _Target, progress: bool | None, problem: str | None, verify: bool
) -> tuple[dict[str, Any], bool]:
    """The cache's meta.json, built under the cache's lock unless another process built it while
    this one waited; and whether this one built it."""
    corpus, folder = target.corpus, target.folder
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".lock").touch()  # a read-only folder says so here, before a lock could wait on it
        lock = FileLock(folder / ".lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            log.info("waiting for another process to finish encoding corpus %s into %s", corpus.name, folder)
            lock.acquire()
    except OSError as err:
        raise _cannot_write(folder.parent, corpus, target.data_dir, err) from None
    try:
        meta, problem_now = check_cache(folder, target.key, verify)  # built by the one we waited for?
        if meta is not None:
            return meta, False
        if problem or problem_now:
            log.warning("the cache %s is damaged: %s. Building it again", folder, problem_now or problem)
        return _build(target, progress), True
    finally:
        lock.release()


def _build(target: _Target, progress: bool | None) -> dict[str, Any]:
    """Encode into a partial file beside the cache's, flush it to disk, rename it into place, and
    write meta.json last: a build cut short (killed, disk full, power lost) leaves no cache that
    looks whole."""
    corpus, folder = target.corpus, target.folder
    target.source.check_unchanged(corpus)  # e.g. while this process waited for the lock
    partial = folder / f".{IDS}.{os.getpid()}.partial"
    log.info("encoding corpus %s once, into %s: later runs map it", corpus.name, folder)
    started = time.perf_counter()
    try:
        for abandoned in folder.glob(f".{IDS}.*.partial"):  # under the lock: its builder died
            abandoned.unlink()
        with open(partial, "wb") as sink, _bar(corpus, target.data_dir, progress) as bar:
            vocab, _, meta = _encode(corpus, target.data_dir, target.settings, target.source, sink, bar)
            sink.flush()
            os.fsync(sink.fileno())
        (folder / META).unlink(missing_ok=True)  # never an old meta.json over the new ids
        os.replace(partial, folder / IDS)
        meta = {
            "format": FORMAT,
            "key": target.key,
            "corpus": corpus.name,
            "source": target.source.identity,
            "settings": asdict(target.settings),
            **meta,
            "ids_mtime_ns": stat_signature(folder / IDS)[2],
            "build_seconds": round(time.perf_counter() - started, 1),
        }
        write_json(folder / META, meta)
    except OSError as err:
        raise _cannot_write(folder.parent, corpus, target.data_dir, err) from None
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    log.info(
        "corpus %s encoded in %.1f s: %s characters, vocabulary %d, %s",
        corpus.name,
        meta["build_seconds"],
        f"{meta['characters']:,}",
        len(vocab),
        meta["dtype"],
    )
    return meta


def _encode(
    corpus: Corpus,
    data_dir: Path,
    settings: TextSettings,
    source: _Source,
    sink: BinaryIO | None,
    bar: _Bar | None,
) -> tuple[Vocabulary, np.ndarray | None, dict[str, Any]]:
    """Two streaming passes: the vocabulary (every character seen), then the ids, written to
    `sink` or, with no sink, into one array in memory. Returns the vocabulary, that array (None
    with a sink) and the figures for meta.json."""
    seen = np.zeros(0x110000, dtype=bool)
    characters = raw_characters = 0
    for text in _texts(corpus, data_dir, settings, bar, "vocabulary", counter := [0]):
        mark_seen(seen, codepoints(text))
        characters += len(text)
    raw_characters = counter[0]
    if not raw_characters:
        raise CharLMError(f"corpus '{corpus.name}' is empty")
    vocab = Vocabulary(tuple(chr(c) for c in np.flatnonzero(seen)))
    if settings.letters_only and set(vocab.chars) <= {" "}:
        raise CharLMError(
            f"corpus '{corpus.name}' has no letters: data.letters_only=true leaves nothing of it; "
            "drop data.letters_only"
        )
    dtype = np.dtype(np.uint8 if len(vocab) <= 2**8 else np.uint16 if len(vocab) <= 2**16 else np.uint32)
    table = np.zeros(0x110000, dtype=dtype)  # code point -> id
    table[[ord(c) for c in vocab.chars]] = np.arange(len(vocab))
    out = None if sink is not None else np.empty(characters, dtype=dtype)
    digest = hashlib.sha256()
    written = 0
    for text in _texts(corpus, data_dir, settings, bar, "ids", [0]):
        ids = table[codepoints(text)]
        if written + len(ids) > characters:
            break
        if out is None:
            sink.write(memoryview(ids))
            digest.update(memoryview(ids))
        else:
            out[written : written + len(ids)] = ids
        written += len(ids)
    source.check_unchanged(corpus)  # the two passes read the same text (and the one hashed)
    if written != characters:
        raise CharLMError(f"corpus '{corpus.name}' changed while it was being encoded: run again")
    meta = {"chars": list(vocab.chars), "dtype": dtype.name, "characters": characters}
    if out is None:
        meta["sha256"] = digest.hexdigest()
    return vocab, out, meta


def _texts(
    corpus: Corpus, data_dir: Path, settings: TextSettings, bar: _Bar | None, stage: str, counter: list[int]
) -> Iterator[str]:
    """The corpus's text after its settings, piece by piece; counts the raw characters in `counter`."""

    def raw() -> Iterator[str]:
        for text, nbytes in _pieces(corpus, data_dir):
            if bar is not None:
                bar.advance(stage, nbytes)
            counter[0] += len(text)
            yield text

    return preprocess_pieces(raw(), settings.lowercase, settings.letters_only, settings.normalize)


class _Bar:
    """Two progress bars over the corpus's bytes, one for each pass."""

    def __init__(self, progress: Progress, total: int, name: str):
        self.progress = progress
        self.tasks: dict[str, TaskID] = {
            stage: progress.add_task(f"{name}: {stage}", total=total) for stage in ("vocabulary", "ids")
        }

    def advance(self, stage: str, nbytes: int) -> None:
        self.progress.advance(self.tasks[stage], nbytes)


@contextlib.contextmanager
def _bar(corpus: Corpus, data_dir: Path, progress: bool | None) -> Iterator[_Bar | None]:
    total = _nbytes(corpus, data_dir)
    show = total >= _PROGRESS_FROM_BYTES if progress is None else progress
    if not show or rank_zero_only.rank != 0:  # one bar, not one per DDP rank
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress_bar:
        yield _Bar(progress_bar, total, corpus.name)


def _cannot_write(cache_dir: Path, corpus: Corpus, data_dir: Path, err: OSError) -> CharLMError:
    """One line naming the folder, the system's reason and the two ways out."""
    try:
        free = f", {_bytes(shutil.disk_usage(cache_dir).free)} free" if cache_dir.is_dir() else ""
    except OSError:
        free = ""
    return CharLMError(
        f"cannot write the corpus cache in {cache_dir}: {err.strerror or err}{free}. The ids of "
        f"corpus '{corpus.name}' take up to {_bytes(_nbytes(corpus, data_dir))} (a byte a character; "
        "2 or 4 past 256 or 65,536 distinct characters): set paths.cache_dir to a folder you can "
        "write to, or paths.cache_dir=null to keep them in memory"
    )


def _bytes(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"
