"""A corpus read in pieces: the same text, the same preprocessing and the same refusals as reading
the file whole, whatever the chunk size, so that a corpus larger than memory is never one string."""

from __future__ import annotations

import codecs
import functools
import hashlib
from pathlib import Path

import pytest

from charlm.data import corpora
from charlm.data.corpora import CensusNames, Download, TextFiles
from charlm.data.decoding import file_pieces
from charlm.data.preprocess import preprocess, preprocess_pieces
from charlm.errors import CharLMError

CHUNKS = (1, 2, 3, 5, 7, 64, 4096)
OPTIONS = (
    {},
    {"normalize": "NFD"},
    {"normalize": "NFKC"},
    {"normalize": "NFKD"},
    {"normalize": None},
    {"lowercase": True},
    {"letters_only": True},
    {"lowercase": True, "letters_only": True, "normalize": "NFD"},
)
SPANISH = "¡Hola, señor! Volverán las oscuras golondrinas\n"
TEXTS = {  # name: (file bytes, encoding)
    "multibyte": ("¡Señor! 日本語 😀 ÿ ½ ﬁn\n" * 3 + "ǅ", "utf-8"),
    "combining": ("cafe\u0301 y café\ne\u0301e\u0301 x\u0301\u0323 \u0301a ´ İ\n" * 3, "utf-8"),
    "hangul": ("\u1100\u1161\u11a8 \u1100\u1161 한국어\n\u1112\u1161\u11ab" * 3, "utf-8"),
    "sigma": ("ΟΔΟΣ ΟΔΟΣΑ ΣΟΦΟΣ. Σ ΑΣ\nΟΔΟΣ, Ο'ΣΑ ΑΣ' ΟΔΟΣ", "utf-8"),
    "punctuation": ("¡¡Hola!!,  señor...   --- 42 ,,, ¿qué?\n\n  ;; fin ;;  \n\n" * 3 + ",,", "utf-8"),
    "no spaces": ("señor" * 200, "utf-8"),
    "bom utf-8": ("\ufeff" + SPANISH * 3, "utf-8"),
    "utf-8-sig": ("\ufeff\ufeff" + SPANISH * 3, "utf-8-sig"),
    "utf-16": (SPANISH * 3, "utf-16"),  # Python writes the byte-order mark first
    "latin-1": (SPANISH * 3, "latin-1"),
}


def _write(tmp_path: Path, content: str | bytes, encoding: str = "utf-8") -> Path:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
    return path


def _whole(path: Path, encoding: str) -> str:
    """The text as reading the whole file gives it."""
    return path.read_bytes().decode(encoding).removeprefix("\ufeff")


@pytest.mark.parametrize("chunk_bytes", CHUNKS)
@pytest.mark.parametrize("name", TEXTS)
def test_pieces_preprocess_to_the_whole_text(tmp_path: Path, name: str, chunk_bytes: int) -> None:
    text, encoding = TEXTS[name]
    path = _write(tmp_path, text, encoding)
    pairs = list(file_pieces(path, encoding, chunk_bytes=chunk_bytes))
    pieces = [piece for piece, _ in pairs]
    assert "".join(pieces) == _whole(path, encoding)
    assert all(piece for piece in pieces) and all(piece[-1] in " \n" for piece in pieces[:-1])
    assert sum(n for _, n in pairs) == path.stat().st_size
    for options in OPTIONS:
        streamed = list(preprocess_pieces(pieces, **options))
        assert "".join(streamed) == preprocess(_whole(path, encoding), **options), options
        assert all(streamed)


def test_the_cases_would_fail_if_pieces_were_cut_anywhere() -> None:
    """What the cut after a space or newline protects: an accent, a final sigma, a run of punctuation."""
    assert "".join(preprocess_pieces(["cafe", "\u0301 "])) != preprocess("cafe\u0301 ") == "café "
    assert "".join(preprocess_pieces(["ΟΔΟΣ", "Α"], lowercase=True)) != "οδοσα"
    assert "".join(preprocess_pieces(["ΟΔΟΣ ", "ΟΔΟΣΑ"], lowercase=True)) == "οδος οδοσα"
    assert "".join(preprocess_pieces(["a,, ", " ", ",; b"], letters_only=True)) == "a b"
    assert list(preprocess_pieces(["a, ", "; ", "b"], letters_only=True)) == ["a ", "b"]
    with pytest.raises(ValueError, match="unknown Unicode form 'nfc'"):
        list(preprocess_pieces([], normalize="nfc"))


def test_a_large_file_is_read_a_chunk_at_a_time(tmp_path: Path) -> None:
    line = "En un lugar de la Mancha, de cuyo nombre no quiero acordarme, ¡qué señor!\n"
    path = _write(tmp_path, line * (3_000_000 // len(line.encode())))
    chunk = 64 * 1024
    sizes = [(len(piece), n) for piece, n in file_pieces(path, chunk_bytes=chunk)]
    assert len(sizes) > 40 and max(size for size, _ in sizes) <= chunk + len(line)
    assert sum(n for _, n in sizes) == path.stat().st_size


def test_a_file_without_spaces_is_one_growing_piece(tmp_path: Path) -> None:
    path = _write(tmp_path, "ñ" * 1000)
    assert list(file_pieces(path, chunk_bytes=7)) == [("ñ" * 1000, 2000)]
    assert list(file_pieces(_write(tmp_path, b""), "utf-8", chunk_bytes=7)) == []


def _old_decode(path: Path, encoding: str) -> str:
    """The refusal of the whole-file reader that `file_pieces` replaced (its code, shortened)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return f"cannot read {path}: {err.strerror or err}"
    failure = None
    try:
        data.decode(encoding)
        name = codecs.lookup(encoding).name
    except LookupError:
        return f"unknown data.encoding {encoding!r}: try utf-8, latin-1 or cp1252"
    except UnicodeError as err:
        failure, name = err, codecs.lookup(encoding).name
    try:
        data.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    wide = name.startswith(("utf-16", "utf-32")) and b"\x00" not in data
    if name not in ("utf-8", "utf-8-sig") and (wide or not data.isascii()) and utf8:
        return (
            f"{path} is UTF-8 text, but data.encoding={encoding} would read other characters from it: "
            "set data.encoding=utf-8"
        )
    boms = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)
    if name in ("utf-16", "utf-32") and not data.startswith(boms):
        return (
            f"{path} has no byte-order mark, so data.encoding={encoding} cannot tell its byte order: "
            f"give it, data.encoding={encoding}-le (or -be)"
        )
    assert isinstance(failure, UnicodeDecodeError)
    where = f" (byte {failure.start} is {data[failure.start : failure.start + 1]!r})"
    return (
        f"{path} is not {encoding} text{where}: if it is Latin-1 or Windows text, set "
        "data.encoding=latin-1 (or cp1252); UTF-16 with a byte-order mark: data.encoding=utf-16; "
        "a binary file is no corpus"
    )


LATIN = "Volverán las oscuras golondrinas\n".encode("latin-1")  # á is byte 6
REFUSED = {  # name: (file bytes, encoding, what the message says)
    "unknown encoding": (b"hola\n", "klingon", "unknown data.encoding 'klingon'"),
    "bytes-to-bytes codec": (b"hola\n", "base64", "unknown data.encoding 'base64'"),
    "latin-1 as utf-8": (LATIN, "utf-8", r"byte 6 is b'\xe1'"),
    "latin-1 as utf-8, late": (b"ab " * 300 + LATIN, "utf-8", r"byte 906 is b'\xe1'"),
    "truncated utf-8": (b"hola se\xc3", "utf-8", r"byte 7 is b'\xc3'"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00", "utf-8", r"byte 0 is b'\x89'"),
    "cp1252 hole": (b"caf\xe9 " * 100 + b"\x81", "cp1252", r"byte 500 is b'\x81'"),
    "odd utf-16-le": (b"\xe1\x00" * 50 + b"!", "utf-16-le", r"byte 100 is b'!'"),
    "utf-8 as latin-1, late": (b"En un lugar " * 50 + "ñ ".encode(), "latin-1", "is UTF-8 text"),
    "utf-8 as ascii": ("ñ ".encode() + b"En un lugar " * 50, "ascii", "is UTF-8 text"),
    "utf-8 as odd utf-16-le": (b"En un lugar de la Mancha\n" * 3 + b"!", "utf-16-le", "is UTF-8 text"),
    "ascii as utf-16-le": (b"First Citizen: speak, speak.\n" * 4, "utf-16-le", "is UTF-8 text"),
    "utf-8 as utf-16": (SPANISH.encode() * 3, "utf-16", "is UTF-8 text"),
    "empty as utf-16": (b"", "utf-16", "is UTF-8 text"),
    "latin-1 as utf-16": (LATIN * 3, "utf-16", "has no byte-order mark"),
    "latin-1 as utf-32": (LATIN * 4, "utf-32", "has no byte-order mark"),
}


@pytest.mark.parametrize("chunk_bytes", (1, 2, 3, 7, 4096))
@pytest.mark.parametrize("name", REFUSED)
def test_refusals_are_those_of_the_whole_file(tmp_path: Path, name: str, chunk_bytes: int) -> None:
    content, encoding, says = REFUSED[name]
    path = _write(tmp_path, content)
    with pytest.raises(CharLMError) as raised:
        list(file_pieces(path, encoding, chunk_bytes=chunk_bytes))
    message = str(raised.value)
    assert message == _old_decode(path, encoding) and says in message and "\n" not in message


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_an_unreadable_file_is_one_line(tmp_path: Path, where: str) -> None:
    path = tmp_path / "nowhere.txt" if where == "missing" else tmp_path
    with pytest.raises(CharLMError, match=r"^cannot read .*: (No such file|Is a directory)") as raised:
        list(file_pieces(path, chunk_bytes=3))
    assert str(raised.value) == _old_decode(path, "utf-8")


def test_a_bad_byte_after_a_utf8_sig_mark_is_named_by_its_offset(tmp_path: Path) -> None:
    """The whole-file reader counted from after the mark here; the offset is the file's now."""
    path = _write(tmp_path, codecs.BOM_UTF8 + b"abc " * 10 + b"\xff")
    for chunk_bytes in (1, 5, 4096):
        with pytest.raises(CharLMError, match=r"is not utf-8-sig text \(byte 43 is b'\\xff'\)"):
            list(file_pieces(path, "utf-8-sig", chunk_bytes=chunk_bytes))


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpora, "file_pieces", functools.partial(file_pieces, chunk_bytes=3))


@pytest.mark.usefixtures("small_chunks")
def test_a_folder_of_text_files_streams_as_it_reads(tmp_path: Path) -> None:
    files = {
        "a.txt": ("\ufeffΟΔΟΣ", "utf-8"),  # no newline at its end: the separator follows
        "b.txt": ("", "utf-8"),
        "c.txt": ("e\u0301 ¡¡ja,,", "utf-8"),
        "sub/d.txt": (", Σ señor\n", "utf-8"),
    }
    for name, (text, encoding) in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(text, encoding=encoding)
    corpus = TextFiles(tmp_path)
    whole = "\n".join(_whole(tmp_path / name, encoding) for name, (_, encoding) in files.items())
    pairs = list(corpus.pieces(tmp_path))
    assert corpus.read(tmp_path) == "".join(piece for piece, _ in pairs) == whole
    assert (
        sum(n for _, n in pairs) == corpus.nbytes(tmp_path) == sum(p.stat().st_size for p in corpus.files())
    )
    for options in OPTIONS:
        streamed = preprocess_pieces((piece for piece, _ in pairs), **options)
        assert "".join(streamed) == preprocess(whole, **options), options
    (tmp_path / "c.txt").write_bytes(LATIN)
    with pytest.raises(CharLMError, match=r"c.txt is not utf-8 text \(byte 6 is b'\\xe1'\)"):
        corpus.read(tmp_path)


@pytest.mark.usefixtures("small_chunks")
def test_a_download_streams_its_file(tmp_path: Path, text_file: Path) -> None:
    sha256 = hashlib.sha256(text_file.read_bytes()).hexdigest()
    corpus = Download("tiny", text_file.as_uri(), sha256, filename="tiny.txt")
    data_dir = tmp_path / "data"
    pairs = list(corpus.pieces(data_dir))
    assert "".join(piece for piece, _ in pairs) == corpus.read(data_dir) == text_file.read_text("utf-8")
    assert sum(n for _, n in pairs) == corpus.nbytes(data_dir) == text_file.stat().st_size


def test_census_names_are_one_piece() -> None:
    corpus = CensusNames()
    [(text, nbytes)] = corpus.pieces(Path("unused"))
    assert text == corpus.read(Path("unused")) and nbytes == corpus.nbytes(Path("unused")) == len(text)
