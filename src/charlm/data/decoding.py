"""A text file read in pieces, so that a corpus larger than memory is never one Python string.

`file_pieces` decodes a file chunk by chunk and cuts its text right after a space or a newline:
there Unicode normalisation, `str.lower` (whose Greek final sigma looks at its neighbours) and the
letters-only regex give, piece by piece, what they give on the whole text (see `preprocess_pieces`).
It refuses what reading the whole file refused, with the same one-line messages.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from charlm.errors import CharLMError

CHUNK_BYTES = 16 * 2**20  # bytes read at a time: a few times that in memory, whatever the file's size
UTF8 = ("utf-8", "utf-8-sig")
_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE, codecs.BOM_UTF32_BE)  # and UTF-32-LE begins as 16-LE


class _Scan:
    """What the refusals need to know about the whole file, gathered chunk by chunk: its first
    bytes, whether any byte is non-ASCII or NUL, and (when asked) whether it is valid UTF-8."""

    def __init__(self, check_utf8: bool):
        self.head, self.ascii, self.nul = b"", True, False
        self._utf8 = codecs.getincrementaldecoder("utf-8")() if check_utf8 else None
        self.is_utf8 = check_utf8

    def add(self, chunk: bytes, final: bool) -> None:
        self.head = (self.head + chunk[:4])[:4]
        self.ascii = self.ascii and chunk.isascii()
        self.nul = self.nul or b"\x00" in chunk
        if self._utf8 is not None and self.is_utf8:
            try:
                self._utf8.decode(chunk, final)
            except UnicodeDecodeError:
                self.is_utf8 = False


def _where(err: UnicodeError, end: int) -> str:
    """' (byte N is b'\\xNN')', N counted from the file's start. The decoder failed in `err.object`,
    the bytes it still held plus the chunk: they end where the chunk ends, at file offset `end`."""
    if not isinstance(err, UnicodeDecodeError):  # utf-16's "stream does not start with BOM"
        return ""
    return f" (byte {end - len(err.object) + err.start} is {err.object[err.start : err.start + 1]!r})"


def _cannot_read(path: Path, err: OSError) -> CharLMError:
    return CharLMError(f"cannot read {path}: {err.strerror or err}")


def file_pieces(
    path: Path, encoding: str = "utf-8", chunk_bytes: int = CHUNK_BYTES
) -> Iterator[tuple[str, int]]:
    """The file's text as (piece, nbytes) pairs: `nbytes` source bytes were read since the previous
    pair (they sum to the file's size, for a progress bar over bytes; bar a file that is only a
    byte-order mark: it yields nothing). Every piece but the last ends with a space or a newline;
    none is empty. A leading byte-order mark says how the file is encoded, it is no text: dropped.

    Refused in one line naming the file and the data.encoding to try: an unreadable file, an unknown
    encoding, a byte that is not `encoding`, a UTF-16/32 file without a byte-order mark, and a file
    that is valid UTF-8 but read as another encoding (it would decode without a word into the wrong
    characters: accents as `Ã±`, or utf-16 turning every two bytes into one CJK character). That
    last one needs the whole file, so the refusals come at its end: the pieces of a refused file may
    already have been yielded: a caller that keeps nothing of a refused file writes at the end.
    """
    try:
        file = path.open("rb")
    except OSError as err:
        raise _cannot_read(path, err) from None
    with file:
        try:
            b"\x00".decode(encoding)  # LookupError for an unknown codec, and for bytes-to-bytes ones (base64)
        except LookupError:
            raise CharLMError(f"unknown data.encoding {encoding!r}: try utf-8, latin-1 or cp1252") from None
        except UnicodeError:
            pass
        name = codecs.lookup(encoding).name
        decoder = codecs.getincrementaldecoder(encoding)()
        scan = _Scan(check_utf8=name not in UTF8)
        failure: str | None = None  # where the decoder failed: then only the scan goes on
        end = nbytes = 0  # bytes read, and read since the last piece
        held: list[str] = []  # text since the last cut
        first = True  # the next text opens the file
        while True:
            try:
                chunk = file.read(chunk_bytes)
            except OSError as err:
                raise _cannot_read(path, err) from None
            final = not chunk
            end, nbytes = end + len(chunk), nbytes + len(chunk)
            scan.add(chunk, final)
            text = ""
            if failure is None:
                try:
                    text = decoder.decode(chunk, final)
                except UnicodeError as err:  # UnicodeDecodeError, and utf-16's missing byte-order mark
                    failure = _where(err, end)
            if text and first:
                text, first = text.removeprefix("\ufeff"), False
            cut = max(text.rfind(" "), text.rfind("\n")) + 1  # held text has neither
            if cut:
                yield "".join([*held, text[:cut]]), nbytes
                held, nbytes = [text[cut:]], 0
            else:
                held.append(text)
            if final:
                break
    # ASCII read as UTF-16 or -32 is garbage too; their own text of Latin letters has NUL bytes, UTF-8 none
    wide = name.startswith(("utf-16", "utf-32")) and not scan.nul
    if name not in UTF8 and (wide or not scan.ascii) and scan.is_utf8:
        raise CharLMError(
            f"{path} is UTF-8 text, but data.encoding={encoding} would read other characters from it: "
            "set data.encoding=utf-8"
        )
    if name in ("utf-16", "utf-32") and not scan.head.startswith(_BOMS):
        raise CharLMError(
            f"{path} has no byte-order mark, so data.encoding={encoding} cannot tell its byte order: "
            f"give it, data.encoding={encoding}-le (or -be)"
        )
    if failure is not None:
        raise CharLMError(
            f"{path} is not {encoding} text{failure}: if it is Latin-1 or Windows text, set "
            "data.encoding=latin-1 (or cp1252); UTF-16 with a byte-order mark: data.encoding=utf-16; "
            "a binary file is no corpus"
        )
    if last := "".join(held):
        yield last, nbytes
