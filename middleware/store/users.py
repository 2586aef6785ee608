"""The people who use the status page and the control API, and the tokens of the machines
that call it. Every change is audited in the same transaction.

Each function takes an open ``Connection`` inside a transaction its caller owns; times
are given, never read from the clock here. Passwords come hashed (``middleware.accounts``)
and tokens as their SHA-256: neither is ever written to the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Row, select

from middleware.store.audit import audit
from middleware.store.schema import api_tokens, users
from middleware.store.sql import utc
from middleware.web.roles import Role


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    role: Role
    password_hash: str
    disabled: bool
    created_at: datetime
    created_by: str
    password_changed_at: datetime
    sessions_revoked_at: datetime | None
    """Sessions issued before it (at a logout) no longer count."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    id: int
    name: str
    role: Role
    token_sha256: str
    disabled: bool
    created_at: datetime
    created_by: str


def _user(row: Row[tuple[object, ...]]) -> UserRecord:
    return UserRecord(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        password_hash=row.password_hash,
        disabled=bool(row.disabled),
        created_at=utc(row.created_at) or row.created_at,
        created_by=row.created_by,
        password_changed_at=utc(row.password_changed_at) or row.password_changed_at,
        sessions_revoked_at=utc(row.sessions_revoked_at),
    )


def _token(row: Row[tuple[object, ...]]) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        name=row.name,
        role=Role(row.role),
        token_sha256=row.token_sha256,
        disabled=bool(row.disabled),
        created_at=utc(row.created_at) or row.created_at,
        created_by=row.created_by,
    )


# ---------------------------------------------------------------------------- users


def user(conn: Connection, name: str) -> UserRecord | None:
    """One lookup by the unique index on the name."""
    row = conn.execute(select(users).where(users.c.name == name)).first()
    return None if row is None else _user(row)


def all_users(conn: Connection) -> list[UserRecord]:
    return [_user(row) for row in conn.execute(select(users).order_by(users.c.name))]


def add_user(
    conn: Connection, name: str, role: Role, password_hash: str, by: str, at: datetime
) -> UserRecord | None:
    """The user added; None when the name is taken, in any case of its letters (nothing
    changed): ``bob`` and ``BOB`` would be two people nobody tells apart in the audit log."""
    if any(u.name.casefold() == name.casefold() for u in all_users(conn)):
        return None
    conn.execute(
        users.insert(),
        {
            "name": name,
            "role": role.value,
            "password_hash": password_hash,
            "disabled": False,
            "created_at": at,
            "created_by": by,
            "password_changed_at": at,
        },
    )
    audit(conn, at, by, "user.add", name, {"role": role.value})
    return user(conn, name)


def _change(
    conn: Connection,
    name: str,
    values: dict[str, object],
    by: str,
    at: datetime,
    action: str,
    detail: object = "",
) -> bool:
    changed = conn.execute(users.update().where(users.c.name == name).values(**values)).rowcount
    if changed:
        audit(conn, at, by, action, name, detail)
    return bool(changed)


def set_password(conn: Connection, name: str, password_hash: str, by: str, at: datetime) -> bool:
    """False for an unknown user. The user's sessions end: they were issued before."""
    values = {"password_hash": password_hash, "password_changed_at": at}
    return _change(conn, name, values, by, at, "user.password")


def rehash_password(conn: Connection, name: str, password_hash: str) -> None:
    """The same password hashed with the parameters of today, at a login: no change of
    the user's, not audited, and the sessions stay."""
    conn.execute(users.update().where(users.c.name == name).values(password_hash=password_hash))


def set_disabled(conn: Connection, name: str, disabled: bool, by: str, at: datetime) -> bool:
    """Disable (or enable again) a user; False for an unknown one. A disabled user's
    sessions end at their next request, and do not come back with an enabling: the user
    logs in again."""
    if not disabled:
        return _change(conn, name, {"disabled": False}, by, at, "user.enable")
    values = {"disabled": True, "sessions_revoked_at": at}
    return _change(conn, name, values, by, at, "user.disable")


def set_role(conn: Connection, name: str, role: Role, by: str, at: datetime) -> bool:
    """False for an unknown user; the new role counts from the user's next request."""
    return _change(conn, name, {"role": role.value}, by, at, "user.role", {"role": role.value})


def revoke_sessions(conn: Connection, name: str, at: datetime) -> None:
    """Every session of the user issued until ``at`` ends (a logout)."""
    conn.execute(users.update().where(users.c.name == name).values(sessions_revoked_at=at))


# ---------------------------------------------------------------------------- tokens


def token_by_digest(conn: Connection, digest: str) -> TokenRecord | None:
    """One lookup by the unique index on the token's SHA-256."""
    row = conn.execute(select(api_tokens).where(api_tokens.c.token_sha256 == digest)).first()
    return None if row is None else _token(row)


def token(conn: Connection, name: str) -> TokenRecord | None:
    row = conn.execute(select(api_tokens).where(api_tokens.c.name == name)).first()
    return None if row is None else _token(row)


def all_tokens(conn: Connection) -> list[TokenRecord]:
    return [_token(row) for row in conn.execute(select(api_tokens).order_by(api_tokens.c.name))]


def add_token(
    conn: Connection, name: str, role: Role, digest: str, by: str, at: datetime
) -> TokenRecord | None:
    """The token added; None when the name is taken (nothing changed)."""
    if token(conn, name) is not None:
        return None
    conn.execute(
        api_tokens.insert(),
        {
            "name": name,
            "role": role.value,
            "token_sha256": digest,
            "disabled": False,
            "created_at": at,
            "created_by": by,
        },
    )
    audit(conn, at, by, "token.add", name, {"role": role.value})
    return token(conn, name)


def disable_token(conn: Connection, name: str, by: str, at: datetime) -> bool:
    """False for an unknown token. A disabled token is refused from its next request."""
    changed = conn.execute(
        api_tokens.update().where(api_tokens.c.name == name).values(disabled=True)
    ).rowcount
    if changed:
        audit(conn, at, by, "token.disable", name)
    return bool(changed)


__all__ = [
    "TokenRecord",
    "UserRecord",
    "add_token",
    "add_user",
    "all_tokens",
    "all_users",
    "disable_token",
    "rehash_password",
    "revoke_sessions",
    "set_disabled",
    "set_password",
    "set_role",
    "token",
    "token_by_digest",
    "user",
]
