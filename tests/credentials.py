"""Credentials for the tests that call the control API: a token of a role, made straight
in the store (as ``lis-middleware tokens add`` would), or a user with a password."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, make_url

from middleware import accounts
from middleware.store import Store
from middleware.store import users as stored_users
from middleware.store.database import migrate, open_engine
from middleware.web.roles import Role

#: Before any clock a test gives the API: a session is refused when older than the
#: password it was opened with.
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)
PASSWORD = "correct horse battery"
# One argon2 hash for every test user: hashing costs 50 ms each.
_HASHED: dict[str, str] = {}


def _engine(where: Store | str) -> tuple[Engine, bool]:
    if isinstance(where, Store):
        return where.engine, False
    url = make_url(where)
    if url.drivername.startswith("sqlite") and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = open_engine(where)
    migrate(engine)
    return engine, True


def token(where: Store | str, role: Role = Role.BIOLOGIST, name: str = "tester") -> str:
    """A new API token of ``role`` named ``name`` in the store (or database URL) given."""
    secret = accounts.new_token()
    engine, own = _engine(where)
    try:
        with engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                added = stored_users.add_token(
                    conn, name, role, accounts.token_digest(secret), "test", LONG_AGO
                )
                assert added is not None, f"token {name} exists"
    finally:
        if own:
            engine.dispose()
    return secret


def bearer(where: Store | str, role: Role = Role.BIOLOGIST, name: str = "tester") -> dict[str, str]:
    """Headers that authenticate as a new token of ``role``."""
    return {"Authorization": f"Bearer {token(where, role, name)}"}


def user(
    where: Store | str, name: str, role: Role, password: str = PASSWORD, at: datetime = LONG_AGO
) -> None:
    """A user who may log in with ``password``."""
    if password not in _HASHED:
        _HASHED[password] = accounts.hash_password(password)
    engine, own = _engine(where)
    try:
        with engine.connect() as conn:
            conn.execution_options(write=True)
            with conn.begin():
                stored_users.add_user(conn, name, role, _HASHED[password], "test", at)
    finally:
        if own:
            engine.dispose()
