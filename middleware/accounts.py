"""Passwords and API tokens: the policy a password must meet, its argon2 hash, and the
random tokens machines call the API with. No password or token is ever logged or
audited; the store keeps the hash of each."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD = 10
#: Different characters a password needs: "aaaaaaaaaa" and "ababababab" are guessed first.
MIN_DIFFERENT = 5
#: Long enough, and among the first a guesser tries (NIST SP 800-63B asks that such be
#: refused rather than passwords be given rules of composition).
COMMON_PASSWORDS = frozenset({
    "0123456789", "1234567890", "0987654321", "9876543210", "12345678910", "123456789a",
    "1q2w3e4r5t", "1qaz2wsx3edc", "abcdefghij", "administrator", "changeme123",
    "iloveyou12", "laboratory", "letmein123", "passw0rd12", "password1!", "password12",
    "password123", "password1234", "qwerty1234", "qwertyuiop", "welcome123",
})  # fmt: skip
#: Longer passwords are refused rather than hashed: a login form cannot make the
#: daemon hash megabytes.
MAX_PASSWORD = 1024
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}")
TOKEN_PREFIX = "lmw_"

_hasher = PasswordHasher()


@functools.cache
def _decoy() -> str:
    """Verified against when the user name is unknown, so that the answer takes as long
    as for a known one and does not tell which names exist."""
    return _hasher.hash(secrets.token_hex(16))


class PasswordRefused(ValueError):
    """A password the policy refuses; the message says why."""


def check_name(name: str, what: str = "user name") -> str:
    if not NAME.fullmatch(name):
        raise ValueError(
            f"{what} {name!r}: 1 to 100 letters, digits, '.', '_', '@' or '-', "
            "beginning with a letter or digit"
        )
    return name


def check_password(password: str, name: str = "") -> None:
    if len(password) < MIN_PASSWORD:
        raise PasswordRefused(f"a password needs at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordRefused(f"a password has at most {MAX_PASSWORD} characters")
    if name and password.strip().lower() == name.lower():
        raise PasswordRefused("a password cannot be the user name")
    if len(set(password.lower())) < MIN_DIFFERENT:
        raise PasswordRefused(
            f"a password needs at least {MIN_DIFFERENT} different characters (not aaaaaaaaaa)"
        )
    if password.strip().lower() in COMMON_PASSWORDS:
        raise PasswordRefused("this password is one of the first any guesser tries")


def hash_password(password: str) -> str:
    """argon2id with the library's parameters (about 50 ms and 64 MiB each): slow enough
    to make guessing from a stolen database costly."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` is the one hashed; with ``password_hash`` None (no such user)
    a decoy is checked, as long, and False given."""
    if len(password) > MAX_PASSWORD:
        return False
    try:
        return _hasher.verify(password_hash or _decoy(), password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Hashed with parameters weaker than today's: hashed again at the next login."""
    try:
        return _hasher.check_needs_rehash(password_hash)
    except InvalidHashError:
        return False


def new_token() -> str:
    """256 random bits; the prefix lets secret scanners and people recognise one."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """What the store keeps of a token: a random 256-bit token cannot be guessed from its
    SHA-256, so no slow hash is needed, and the lookup is one index read."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


__all__ = [
    "MIN_PASSWORD",
    "PasswordRefused",
    "check_name",
    "check_password",
    "hash_password",
    "needs_rehash",
    "new_token",
    "token_digest",
    "verify_password",
]
