"""Users and API tokens kept in the store, and the commands that manage them: the password
policy, hashes only, every change audited. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import getpass
import io
import warnings
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, select

from middleware import accounts
from middleware.cli import main
from middleware.store import Store
from middleware.store import users as stored_users
from middleware.store.schema import api_tokens, audit_log, users
from middleware.web.roles import Role
from tests.record_store import write_config

PASSWORD = "correct horse battery"


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> str:
    return str(write_config(tmp_path, database_url))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out = capsys.readouterr()
    return status, out.out, out.err


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))


def audited(store: Store) -> list[tuple[str, str, str, str]]:
    rows = store.read(lambda c: c.execute(select(audit_log).order_by(audit_log.c.id)).all())
    return [(r.actor, r.action, r.subject, r.detail) for r in rows]


def test_passwords_are_kept_as_argon2_hashes_and_checked() -> None:
    hashed = accounts.hash_password(PASSWORD)
    assert hashed.startswith("$argon2id$") and PASSWORD not in hashed
    assert accounts.verify_password(hashed, PASSWORD)
    assert not accounts.verify_password(hashed, PASSWORD + "!")
    assert not accounts.verify_password(None, PASSWORD)  # no such user: a decoy is checked
    assert not accounts.verify_password("not a hash", PASSWORD)
    assert not accounts.needs_rehash(hashed)


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "a password needs at least 10 characters"),
        ("123456789", "a password needs at least 10 characters"),
        ("x" * 1025, "a password has at most 1024 characters"),
        ("Alice.Martin", "a password cannot be the user name"),
        ("aaaaaaaaaa", "at least 5 different characters"),
        ("abababababab", "at least 5 different characters"),
        ("Password12", "one of the first any guesser tries"),
        (" qwertyuiop ", "one of the first any guesser tries"),
    ],
)
def test_the_password_policy(password: str, problem: str) -> None:
    with pytest.raises(accounts.PasswordRefused, match=problem):
        accounts.check_password(password, "alice.martin")
    accounts.check_password("ten chars!", "alice.martin")


def test_tokens_are_random_and_kept_as_their_sha256() -> None:
    first, second = accounts.new_token(), accounts.new_token()
    assert first != second and first.startswith("lmw_") and len(first) > 40
    assert len(accounts.token_digest(first)) == 64


def test_users_in_the_store_and_every_change_audited(store: Store) -> None:
    at = datetime(2026, 5, 1, 9, tzinfo=UTC)

    async def changes() -> None:
        def work(conn: Connection) -> None:
            added = stored_users.add_user(conn, "alice", Role.VALIDATOR, "$argon2id$h", "dr", at)
            assert added is not None and added.role is Role.VALIDATOR
            assert added.created_at == at and added.password_changed_at == at
            assert stored_users.add_user(conn, "alice", Role.VIEWER, "h", "dr", at) is None
            assert stored_users.set_role(conn, "alice", Role.BIOLOGIST, "dr", at)
            assert stored_users.set_password(conn, "alice", "$argon2id$new", "alice", at)
            assert stored_users.set_disabled(conn, "alice", True, "dr", at)
            assert not stored_users.set_disabled(conn, "nobody", True, "dr", at)
            assert stored_users.add_token(conn, "lis", Role.LAB_IT, "ab" * 32, "dr", at)
            assert stored_users.add_token(conn, "lis", Role.LAB_IT, "cd" * 32, "dr", at) is None
            assert stored_users.disable_token(conn, "lis", "dr", at)

        await store.write(work)

    asyncio.run(changes())
    alice = store.read(lambda c: stored_users.user(c, "alice"))
    assert alice is not None and alice.disabled and alice.role is Role.BIOLOGIST
    assert alice.password_hash == "$argon2id$new"
    found = store.read(lambda c: stored_users.token_by_digest(c, "ab" * 32))
    assert found is not None and found.name == "lis" and found.disabled
    assert audited(store) == [
        ("dr", "user.add", "alice", '{"role": "validator"}'),
        ("dr", "user.role", "alice", '{"role": "biologist"}'),
        ("alice", "user.password", "alice", ""),
        ("dr", "user.disable", "alice", ""),
        ("dr", "token.add", "lis", '{"role": "lab-it"}'),
        ("dr", "token.disable", "lis", ""),
    ]


def test_users_from_the_command_line(
    store: Store, config: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, PASSWORD + "\n")
    add = ("users", "add", "alice", "--role", "validator", "--password-stdin")
    assert run(capsys, *add, "--by", "dr-lab", "--config", config) == (
        0,
        "user alice added (validator)\n",
        "",
    )
    stdin(monkeypatch, PASSWORD + "\n")
    status, _, err = run(capsys, *add, "--config", config)
    assert status == 1 and "alice: a user of that name exists" in err
    stdin(monkeypatch, "too short\n")
    status, _, err = run(capsys, "users", "add", "bob", "--role", "viewer", "--password-stdin",
                         "--config", config)  # fmt: skip
    assert status == 1 and "a password needs at least 10 characters" in err
    status, _, err = run(capsys, "users", "add", "b b", "--role", "viewer", "--config", config)
    assert status == 2 and "user name 'b b'" in err

    # The same name in other letters' case is the same person's.
    stdin(monkeypatch, PASSWORD + "\n")
    status, _, err = run(capsys, "users", "add", "ALICE", "--role", "viewer", "--password-stdin",
                         "--config", config)  # fmt: skip
    assert status == 1 and "ALICE: a user of that name exists (letters' case aside)" in err

    # Without a terminal (cron, ssh without one) and without --password-stdin: said so.
    def without_terminal(prompt: str = "") -> str:
        # What getpass does then: warns, then reads standard input, echoed.
        warnings.warn("Can not control echo on the terminal.", getpass.GetPassWarning, 2)
        return input(prompt)

    monkeypatch.setattr("getpass.getpass", without_terminal)
    stdin(monkeypatch, "another long one\n")
    status, _, err = run(capsys, "users", "passwd", "alice", "--config", config)
    assert (status, err) == (
        1, "lis-middleware users passwd: no terminal to type the password at: give "
        "--password-stdin\n",
    )  # fmt: skip

    # At a terminal: typed twice, not echoed.
    typed = iter(["another long one", "another long one"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(typed))
    assert run(capsys, "users", "passwd", "alice", "--config", config)[0] == 0
    typed = iter(["another long one", "a different one"])
    status, _, err = run(capsys, "users", "passwd", "alice", "--config", config)
    assert status == 1 and "the two passwords differ" in err

    assert run(capsys, "users", "role", "alice", "--role", "biologist", "--config", config)[0] == 0
    assert (
        run(capsys, "users", "disable", "alice", "--config", config)[1] == "user alice disabled\n"
    )
    status, out, _ = run(capsys, "users", "list", "--config", config)
    assert status == 0 and out.startswith("alice ") and "biologist" in out and "disabled" in out
    assert run(capsys, "users", "enable", "alice", "--config", config)[0] == 0
    status, _, err = run(capsys, "users", "disable", "nobody", "--config", config)
    assert status == 1 and "no user nobody" in err

    row = store.read(lambda c: c.execute(select(users)).one())
    assert accounts.verify_password(row.password_hash, "another long one")
    actions = [(actor, action) for actor, action, _, _ in audited(store)]
    assert actions[0] == ("dr-lab", "user.add")
    assert [a for _, a in actions] == [
        "user.add", "user.password", "user.role", "user.disable", "user.enable"
    ]  # fmt: skip
    text = " ".join(" ".join(entry) for entry in audited(store))
    assert PASSWORD not in text and "another long one" not in text and "argon2" not in text


def test_tokens_from_the_command_line(
    store: Store, config: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(capsys, "tokens", "add", "lis-bridge", "--role", "lab-it",
                           "--config", config)  # fmt: skip
    assert status == 0 and "shown this once" in err
    secret = out.strip()
    assert secret.startswith("lmw_")
    row = store.read(lambda c: c.execute(select(api_tokens)).one())
    assert row.token_sha256 == accounts.token_digest(secret) and secret not in str(tuple(row))
    status, _, err = run(capsys, "tokens", "add", "lis-bridge", "--role", "viewer",
                         "--config", config)  # fmt: skip
    assert status == 1 and "exists" in err
    status, out, _ = run(capsys, "tokens", "list", "--config", config)
    assert "lis-bridge" in out and "lab-it" in out and "active" in out and secret not in out
    assert run(capsys, "tokens", "disable", "lis-bridge", "--config", config)[0] == 0
    assert "disabled" in run(capsys, "tokens", "list", "--config", config)[1]
    assert run(capsys, "tokens", "disable", "nothing", "--config", config)[0] == 1
    assert [a for _, a, _, _ in audited(store)] == ["token.add", "token.disable"]
    assert secret not in str(audited(store))
