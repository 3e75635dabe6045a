"""Optional text normalisation, as the course notebooks do it before building the vocabulary."""

import re

# A run of anything that is not a letter (accented letters, ñ and the like count as letters).
_NON_LETTERS = re.compile(r"[\W\d_]+")


def preprocess(text: str, lowercase: bool = False, letters_only: bool = False) -> str:
    """Lowercase and/or keep letters only, collapsing every other run of characters to one space."""
    if lowercase:
        text = text.lower()
    if letters_only:
        text = _NON_LETTERS.sub(" ", text)
    return text
