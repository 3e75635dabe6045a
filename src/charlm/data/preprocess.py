"""Optional text normalisation, as the course notebooks do it before building the vocabulary."""

import re
import unicodedata


def preprocess(text: str, lowercase: bool = False, letters_only: bool = False) -> str:
    """Lowercase and/or keep letters only, collapsing every other run of characters to one space.

    Letters are what `str.isalpha` says (ñ, á, ç, ...), after NFC normalisation so that an accent
    written as a separate combining mark stays on its letter.
    """
    if lowercase:
        text = text.lower()
    if letters_only:
        text = unicodedata.normalize("NFC", text)
        others = sorted(c for c in set(text) if not c.isalpha())  # one pass, then one regex
        if others:
            text = re.sub(f"[{re.escape(''.join(others))}]+", " ", text)
    return text
