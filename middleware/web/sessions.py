"""Sessions of the people logged in: a cookie signed with a key of the daemon's, and the
limit on failed logins. Nothing here is kept per session on the server: the cookie says
who and since when, the user's row says whether that still counts.

Cookie: ``base64url(JSON).base64url(HMAC-SHA256(key, "lis-session/1." + base64url(JSON)))``
with JSON ``{"u": user, "iat": issued, "seen": last request, "csrf": token}``, times in
milliseconds since the epoch.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from middleware import keyfile

_SESSION = b"lis-session/1."
_LOGIN = b"lis-login/1."


class SessionKeyError(Exception):
    """The session key cannot be read or made; the message names the file."""


def load_key(key_file: Path) -> bytes:
    """The key's bytes, the file made (64 random hex characters, readable by its owner
    only) when missing."""
    try:
        return keyfile.load(key_file, create=True)
    except keyfile.KeyFileError as exc:
        raise SessionKeyError(f"session key {exc}") from None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def mac(key: bytes, purpose: bytes, body: str) -> str:
    """HMAC-SHA256 of ``body`` for one ``purpose``, so that a value signed for one use
    is never taken for another."""
    data = purpose + body.encode("utf-8", "surrogatepass")
    return _b64(hmac.new(key, data, hashlib.sha256).digest())


def _signed(key: bytes, purpose: bytes, payload: object) -> str:
    body = _b64(json.dumps(payload, separators=(",", ":")).encode("utf-8"))
    return f"{body}.{mac(key, purpose, body)}"


def same(given: str, expected: str) -> bool:
    """Whether a secret sent matches, in constant time; any text may be sent (a header or
    cookie with characters beyond ASCII is a wrong value, not a fault)."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _opened(key: bytes, purpose: bytes, value: str) -> object:
    """The payload of a value this key signed for ``purpose``; None otherwise."""
    if len(value) > 4096 or not value.isascii() or value.count(".") != 1:
        return None
    body, given = value.split(".")
    if not same(given, mac(key, purpose, body)):
        return None
    try:
        return json.loads(_unb64(body))
    except (ValueError, binascii.Error):
        return None


@dataclass(frozen=True, slots=True)
class Session:
    user: str
    issued: int
    """Milliseconds since the epoch, at the login."""
    seen: int
    """Milliseconds since the epoch, at the last request."""
    csrf: str
    """What every state-changing request of the session must carry."""


class SessionCodec:
    """Signs sessions into cookie values and reads them back, with the timeouts."""

    def __init__(self, key: bytes, idle_ms: int, lifetime_ms: int) -> None:
        self.key = key
        self.idle_ms = idle_ms
        self.lifetime_ms = lifetime_ms

    def new(self, user: str, now_ms: int) -> Session:
        return Session(user, now_ms, now_ms, secrets.token_urlsafe(32))

    def dump(self, session: Session) -> str:
        payload = {"u": session.user, "iat": session.issued, "seen": session.seen}
        return _signed(self.key, _SESSION, payload | {"csrf": session.csrf})

    def load(self, value: str, now_ms: int) -> Session | None:
        """The session of a cookie, last seen now; None when it is not one of ours, has
        been idle too long, or is too old."""
        payload = _opened(self.key, _SESSION, value)
        if not isinstance(payload, dict):
            return None
        user, issued, seen, csrf = (payload.get(k) for k in ("u", "iat", "seen", "csrf"))
        if not (isinstance(user, str) and isinstance(csrf, str)):
            return None
        if not (isinstance(issued, int) and isinstance(seen, int)):
            return None
        if now_ms - seen > self.idle_ms or now_ms - issued > self.lifetime_ms:
            return None
        if seen < issued or seen > now_ms + 60_000:
            return None  # only a stolen key makes these
        return replace(Session(user, issued, seen, csrf), seen=max(seen, now_ms))

    def login_token(self) -> tuple[str, str]:
        """For the login form, which no session protects yet: a random value for the form
        and its signed copy for a cookie (double submit); a page of another site can set
        neither."""
        token = secrets.token_urlsafe(32)
        return token, _signed(self.key, _LOGIN, token)

    def login_token_matches(self, cookie: str, form: str) -> bool:
        token = _opened(self.key, _LOGIN, cookie)
        return isinstance(token, str) and same(token, form)


class LoginThrottle:
    """After ``limit`` failed logins within ``window`` seconds for one user name or one
    client address, refuses further attempts for either until the oldest of those
    failures is ``window`` old.

    Bounded: at most ``max_keys`` names and addresses are remembered, the least recently
    failing forgotten first, each with its last ``limit`` failures only.
    """

    def __init__(self, limit: int = 5, window: float = 300.0, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def wait(self, keys: Iterable[str], now: float) -> float:
        """Seconds until an attempt for these keys is taken again; 0 when it is now."""
        longest = 0.0
        for key in keys:
            failures = self._failures.get(key)
            if failures is not None and len(failures) >= self.limit:
                longest = max(longest, failures[0] + self.window - now)
        return longest

    def failed(self, keys: Iterable[str], now: float) -> bool:
        """Counts a failure; True when it made one of the keys reach the limit."""
        reached = False
        for key in keys:
            failures = self._failures.pop(key, None) or deque(maxlen=self.limit)
            while failures and failures[0] + self.window <= now:
                failures.popleft()
            failures.append(now)
            self._failures[key] = failures
            reached = reached or len(failures) >= self.limit
        while len(self._failures) > self.max_keys:
            self._failures.popitem(last=False)
        return reached

    def succeeded(self, key: str) -> None:
        self._failures.pop(key, None)

    def forgive(self, keys: Iterable[str]) -> None:
        """Takes back the latest failure counted for these keys: an attempt counted as
        failed before its password was checked, which turned out right."""
        for key in keys:
            failures = self._failures.get(key)
            if failures:
                failures.pop()

    def __len__(self) -> int:
        return len(self._failures)


__all__ = ["LoginThrottle", "Session", "SessionCodec", "SessionKeyError", "load_key"]
