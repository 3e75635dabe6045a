"""Text normalisation before the vocabulary is built: Unicode's canonical form by default, and
optionally what the course notebooks do (lowercase, letters only)."""

import re
import unicodedata

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
    if normalize is not None:
        if normalize not in FORMS:
            raise ValueError(f"unknown Unicode form {normalize!r}: choose one of {', '.join(FORMS)}")
        text = unicodedata.normalize(normalize, text)
    if lowercase:
        text = text.lower()
    if letters_only:
        text = unicodedata.normalize("NFC", text)
        others = sorted(c for c in set(text) if not c.isalpha())  # one pass, then one regex
        if others:
            text = re.sub(f"[{re.escape(''.join(others))}]+", " ", text)
    return text
