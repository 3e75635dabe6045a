"""Text normalisation before the vocabulary is built: Unicode's canonical form by default, and
optionally what the course notebooks do (lowercase, letters only)."""

import re
import unicodedata
from collections.abc import Iterable, Iterator

FORMS = ("NFC", "NFKC", "NFD", "NFKD")


def preprocess(
    text: str, lowercase: bool = False, letters_only: bool = False, normalize: str | None = "NFC"
) -> str:
    """`normalize` the text to a Unicode form (NFC: an accented letter is one character whether the
    file wrote it precomposed or as a letter plus a combining accent; None: as the file has it),
    then lowercase and/or keep letters only, collapsing every other run of characters to one space.

    Letters are what `str.isalpha` says (ñ, á, ç, ...), after NFC normalisation so that an accent
    written as a separate combining mark stays on its letter.
    """
    _check_form(normalize)
    if normalize is not None:
        text = unicodedata.normalize(normalize, text)
    if lowercase:
        text = text.lower()
    if letters_only:
        text = unicodedata.normalize("NFC", text)
        others = sorted(c for c in set(text) if not c.isalpha())  # one pass, then one regex
        if others:
            text = re.sub(f"[{re.escape(''.join(others))}]+", " ", text)
    return text


def preprocess_pieces(
    pieces: Iterable[str], lowercase: bool = False, letters_only: bool = False, normalize: str | None = "NFC"
) -> Iterator[str]:
    """`preprocess` piece by piece, for a corpus larger than memory: the joined output is that of
    the joined pieces when every cut is next to a space or newline (`file_pieces` cuts after one, a
    corpus of files puts a newline between them). No accent combines across such a cut and no Greek
    final sigma looks past it. The one effect that does: letters_only collapses a run of non-letters
    to one space, and a run cut in two would give two, so a piece's leading space goes when the
    previous output ended with one. Never yields ''."""
    _check_form(normalize)
    after_space = False
    for piece in pieces:
        out = preprocess(piece, lowercase, letters_only, normalize)
        if letters_only and after_space:
            out = out.removeprefix(" ")
        if out:
            after_space = out.endswith(" ")
            yield out


def _check_form(normalize: str | None) -> None:
    if normalize is not None and normalize not in FORMS:
        raise ValueError(f"unknown Unicode form {normalize!r}: choose one of {', '.join(FORMS)}")
