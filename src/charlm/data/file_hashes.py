"""The sha256 of a corpus's files, remembered by their size and change times.

A corpus cache is keyed by its files' content, so a changed file gets a new cache and never a
stale one. Hashing 2 GB of text takes over a second at every run, so each file's hash is kept in
one small JSON file with its size, inode and change times, as git's index does: a file whose
`stat` still matches is not read again. An entry is trusted only for a file last modified (and its
inode changed) more than a second before it was hashed, so that a write in the same clock tick as
the hash is never missed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

from charlm.data.json_files import write_json
from charlm.errors import CharLMError

# a file changed this close to (or after) its hashing is hashed again at the next run
_RACY_NS = 1_000_000_000


def stat_signature(path: Path) -> list[int]:
    """What any write to the file, or its replacement, changes: size, inode, change times."""
    st = path.stat()
    return [st.st_size, st.st_ino, st.st_mtime_ns, st.st_ctime_ns]


def sha256_of_file(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(1 << 20))
    try:
        with open(path, "rb", buffering=0) as file:
            while count := file.readinto(buffer):
                digest.update(buffer[:count])
    except OSError as err:
        raise CharLMError(f"cannot read {path}: {err.strerror or err}") from None
    return digest.hexdigest()


class FileHashes:
    """sha256 of files, remembered in `memo` (a JSON file; None: remember nothing)."""

    def __init__(self, memo: Path | None):
        self.memo = memo
        self._entries: dict[str, list] = {}
        self._changed = False
        if memo is not None:
            try:
                self._entries = json.loads(memo.read_text(encoding="utf-8"))
            except (OSError, ValueError):  # none yet, unreadable or damaged: hash afresh
                self._entries = {}

    def lookup(self, path: Path) -> tuple[str, list[int]]:
        """The file's sha256, and its `stat_signature` as it was when hashed (the caller checks
        that the file it then reads is still that one)."""
        key = str(path.resolve())
        try:
            signature = stat_signature(path)
        except OSError as err:
            raise CharLMError(f"cannot read {path}: {err.strerror or err}") from None
        entry = self._entries.get(key)
        if entry and entry[0] == signature and max(signature[2:]) + _RACY_NS < entry[1]:
            return entry[2], signature
        hashed_at = time.time_ns()
        digest = sha256_of_file(path)
        self._entries[key] = [signature, hashed_at, digest]
        self._changed = True
        return digest, signature

    def save(self) -> None:
        """Write the memo (atomically; a read-only folder just means hashing again next time)."""
        if self.memo is None or not self._changed:
            return
        with contextlib.suppress(OSError):
            self.memo.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.memo, self._entries)
            self._changed = False
