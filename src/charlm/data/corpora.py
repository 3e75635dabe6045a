"""Where corpus text comes from: a pinned download, local files, or a package that ships it.

Each corpus is a small object with `fetch` (get the bytes onto disk, once), `pieces` (its text a
piece at a time, for a corpus larger than memory), `nbytes` (their source bytes) and `read` (the
text as one string). Hydra builds them from `conf/data/*.yaml` (`corpus_of`), so a new corpus is a
new YAML file.
"""

from __future__ import annotations

import random
import re
import shutil
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

import pooch
import requests

from charlm.data.decoding import file_pieces
from charlm.errors import CharLMError, instantiate


class Corpus(Protocol):
    name: str

    def fetch(self, data_dir: Path) -> None:
        """Make the text available offline (download into `data_dir`); a no-op when it already is."""

    def pieces(self, data_dir: Path) -> Iterator[tuple[str, int]]:
        """The text as (piece, source bytes) pairs, cut after a space or newline: a corpus larger
        than memory is streamed, never one string."""

    def nbytes(self, data_dir: Path) -> int:
        """The source bytes `pieces` reads in all: the total of a progress bar while streaming."""

    def read(self, data_dir: Path) -> str:
        """The whole corpus as one string."""


def _copy_file_url(url: str, output_file: str, pooch_obj: object = None) -> None:
    """pooch downloader for file:// URLs (a corpus on a shared drive)."""
    shutil.copyfile(unquote(urlparse(url).path), output_file)


def _why_download_failed(err: Exception, url: str) -> str:
    """One short clause for the usual failures, instead of pooch's and requests' paragraphs."""
    if got := re.search(r"but got (\w+)", str(err)):
        return f"its sha256 is {got.group(1)}, not the pinned one"
    if isinstance(err, requests.ConnectionError):
        return f"cannot connect to {urlparse(url).hostname} (no network?)"
    if isinstance(err, FileNotFoundError):
        return f"no such file {err.filename}"
    return (str(err).splitlines() or [type(err).__name__])[0][:200]


def _decode(path: Path, encoding: str = "utf-8") -> str:
    """The whole file's text, refused as `file_pieces` refuses it: for files that fit in memory."""
    return "".join(text for text, _ in file_pieces(path, encoding))


class Download:
    """A text file fetched once with pooch into the data directory and checked against its sha256."""

    def __init__(self, name: str, url: str, sha256: str, filename: str | None = None):
        self.name, self.url, self.sha256 = name, url, sha256
        self.filename = filename or Path(urlparse(url).path).name
        self._verified: set[Path] = set()  # files whose hash this process has checked

    def path(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.filename

    def fetch(self, data_dir: Path) -> None:
        target = self.path(data_dir)
        if target in self._verified:
            return
        if target.exists():  # downloaded before, or put there by hand: never overwritten
            try:
                actual = pooch.file_hash(str(target))
            except OSError as err:
                raise CharLMError(f"cannot read {target}: {err.strerror or err}") from None
            if actual != self.sha256:
                raise CharLMError(
                    f"{target} is there, but its sha256 is {actual}, not the pinned {self.sha256}: "
                    "replace it with the right file, or delete it to download it again"
                )
            self._verified.add(target)
            return
        downloader = _copy_file_url if self.url.startswith("file:") else None
        try:
            pooch.retrieve(
                self.url,
                known_hash=f"sha256:{self.sha256}",
                fname=self.filename,
                path=Path(data_dir),
                downloader=downloader,
                progressbar=downloader is None,
            )
        except Exception as err:  # network, HTTP, hash mismatch: pooch has deleted the partial file
            raise CharLMError(
                f"could not get corpus '{self.name}' from {self.url}: "
                f"{_why_download_failed(err, self.url)}. "
                f"Download it by hand to {target} (sha256 {self.sha256})."
            ) from None
        self._verified.add(target)

    def pieces(self, data_dir: Path) -> Iterator[tuple[str, int]]:
        self.fetch(data_dir)
        yield from file_pieces(self.path(data_dir))

    def nbytes(self, data_dir: Path) -> int:
        self.fetch(data_dir)
        return self.path(data_dir).stat().st_size

    def read(self, data_dir: Path) -> str:
        return "".join(piece for piece, _ in self.pieces(data_dir))


class TextFiles:
    """A local text file, or every *.txt file under a folder (sorted by path, joined by newlines),
    in `encoding` (UTF-8 unless told)."""

    name = "textfile"

    def __init__(self, path: str | Path, encoding: str = "utf-8"):
        self.root = Path(path).expanduser()
        self.encoding = encoding

    def files(self) -> list[Path]:
        if self.root.is_file():
            return [self.root]
        if self.root.exists() and not self.root.is_dir():
            raise CharLMError(
                f"data.path {self.root} is not a regular file (a device or pipe?): give a text file"
            )
        if self.root.is_dir():
            found = sorted(p for p in self.root.rglob("*.txt") if p.is_file())
            if not found:
                raise CharLMError(f"no .txt files in folder {self.root}")
            return found
        raise CharLMError(f"data.path {self.root} does not exist: give a text file or a folder of .txt files")

    def fetch(self, data_dir: Path) -> None:
        self.files()

    def pieces(self, data_dir: Path) -> Iterator[tuple[str, int]]:
        for i, path in enumerate(self.files()):
            if i:
                yield "\n", 0  # the files' separator: a newline is a safe cut
            yield from file_pieces(path, self.encoding)

    def nbytes(self, data_dir: Path) -> int:
        return sum(path.stat().st_size for path in self.files())

    def read(self, data_dir: Path) -> str:
        return "".join(piece for piece, _ in self.pieces(data_dir))


class CensusNames:
    """US census first and last names, one a line, from the `names` package: needs no network.

    The package lists names by frequency; they are de-duplicated and shuffled with a fixed seed so
    that the contiguous train/val/test split gives three samples of the same kind of names.
    """

    name = "names"
    _FILES = ("dist.female.first", "dist.male.first", "dist.all.last")

    def fetch(self, data_dir: Path) -> None:
        pass

    def pieces(self, data_dir: Path) -> Iterator[tuple[str, int]]:
        text = self.read(data_dir)  # a few hundred kB, built in memory: one piece
        yield text, len(text.encode())

    def nbytes(self, data_dir: Path) -> int:
        return len(self.read(data_dir).encode())

    def read(self, data_dir: Path) -> str:
        package = resources.files("names")
        names = {
            line.split()[0]
            for filename in self._FILES
            for line in package.joinpath(filename).read_text().splitlines()
            if line.strip()
        }
        ordered = sorted(names)
        random.Random(0).shuffle(ordered)
        return "\n".join(ordered) + "\n"


def corpus_of(config: Any) -> Corpus:
    """The corpus a DataConfig names: its `corpus` (a `_target_` node, or a Corpus) or its `path`."""
    if config.corpus is None and config.path is None:
        raise CharLMError(
            "no corpus: give data.path=<UTF-8 file or folder of .txt files> with data=textfile, "
            "or choose a corpus (data=quijote, tinyshakespeare, names)"
        )
    if config.path is None:
        return instantiate(config.corpus) if isinstance(config.corpus, Mapping) else config.corpus
    if config.corpus is not None:
        name = config.corpus.get("name") if isinstance(config.corpus, Mapping) else config.corpus.name
        raise CharLMError(f"data.path is set but so is corpus '{name}': use data=textfile")
    return TextFiles(config.path, config.encoding)
