"""Secret keys kept in files (the session key, the archives' signing key): made once,
readable by their owner only, and refused when too short to be a key."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


class KeyFileError(Exception):
    """The key file cannot be read, or holds no usable key; the message names it."""


def load(key_file: Path, create: bool) -> bytes:
    """The key: the file's text without surrounding white space. When ``create`` and the
    file is missing, it is made first: 64 random hex characters, mode 0600."""
    if create and not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it at the same moment: use that one
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
    try:
        key = key_file.read_bytes().strip()
    except OSError as exc:
        raise KeyFileError(f"{key_file}: {exc.strerror}") from None
    if len(key) < 32:
        raise KeyFileError(f"{key_file}: shorter than 32 characters")
    return key
