"""The commands that say who may use the status page and the control API, and check the
audit log: ``users``, ``tokens`` and ``audit verify`` (docs/operations.md, "Users, roles
and the audit log"). Each works on the database the configuration names, the daemon
running or not; every change is audited. Exit status 0 when done, 1 when refused or when
the audit log does not check out, 2 on usage and configuration errors."""

from __future__ import annotations

import argparse
import getpass
import sys
import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

from middleware.web.roles import Role

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine

T = TypeVar("T")


def _fail(command: str, message: str, status: int = 1) -> int:
    print(f"lis-middleware {command}: {message}", file=sys.stderr)
    return status


def _engine(args: argparse.Namespace, command: str) -> Engine | None:
    """The configured database at the newest schema; None, said, when the configuration
    is refused or its database is not there."""
    from middleware.cli import _store_settings
    from middleware.store.database import migrate, open_engine

    settings = _store_settings(args, command)
    if settings is None:
        return None
    engine = open_engine(settings.database, settings.database_lock_timeout)
    migrate(engine)
    return engine


def _write(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            return work(conn)


def _read(engine: Engine, work: Callable[[Connection], T]) -> T:
    with engine.connect() as conn, conn.begin():
        return work(conn)


def _password(args: argparse.Namespace, name: str) -> str:
    """The new password: one line of standard input, or typed twice at the terminal
    (not echoed); checked against the policy. Never printed."""
    from middleware.accounts import PasswordRefused, check_password

    if args.password_stdin:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    else:
        # Without a terminal getpass warns and reads standard input, echoed, or fails at
        # its end: said in a line instead.
        with warnings.catch_warnings():
            warnings.simplefilter("error", getpass.GetPassWarning)
            try:
                password = getpass.getpass(f"password for {name}: ")
                if getpass.getpass("again: ") != password:
                    raise PasswordRefused("the two passwords differ")
            except (getpass.GetPassWarning, EOFError):
                raise PasswordRefused(
                    "no terminal to type the password at: give --password-stdin"
                ) from None
    check_password(password, name)
    return password


# ---------------------------------------------------------------------------- users


def _users(args: argparse.Namespace) -> int:
    from middleware.accounts import PasswordRefused, check_name, hash_password
    from middleware.store import users

    command = f"users {args.users_command}"
    if args.users_command != "list":
        try:
            check_name(args.name)
        except ValueError as exc:
            return _fail(command, str(exc), 2)
    password_hash = ""
    if args.users_command in ("add", "passwd"):
        try:
            password_hash = hash_password(_password(args, args.name))
        except PasswordRefused as exc:
            return _fail(command, str(exc))
    engine = _engine(args, command)
    if engine is None:
        return 2
    now = datetime.now(UTC)
    try:
        if args.users_command == "list":
            for user in _read(engine, users.all_users):
                state = "disabled" if user.disabled else "active"
                print(
                    f"{user.name:<24} {user.role.value:<11} {state:<9} "
                    f"created {user.created_at:%Y-%m-%d} by {user.created_by}, "
                    f"password changed {user.password_changed_at:%Y-%m-%d %H:%M}"
                )
            return 0
        name, by = args.name, args.by
        done: object
        if args.users_command == "add":
            role = Role(args.role)
            done = _write(
                engine, lambda conn: users.add_user(conn, name, role, password_hash, by, now)
            )
            if done is None:
                return _fail(command, f"{name}: a user of that name exists (letters' case aside)")
            print(f"user {name} added ({role.value})")
            return 0
        if args.users_command == "passwd":
            done = _write(engine, lambda c: users.set_password(c, name, password_hash, by, now))
            message = f"password of {name} changed; their sessions have ended"
        elif args.users_command == "role":
            role = Role(args.role)
            done = _write(engine, lambda c: users.set_role(c, name, role, by, now))
            message = f"{name} is now {role.value}"
        else:
            disable = args.users_command == "disable"
            done = _write(engine, lambda c: users.set_disabled(c, name, disable, by, now))
            message = f"user {name} {'disabled' if disable else 'enabled'}"
        if not done:
            return _fail(command, f"no user {name}")
        print(message)
        return 0
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- tokens


def _tokens(args: argparse.Namespace) -> int:
    from middleware.accounts import check_name, new_token, token_digest
    from middleware.store import users

    command = f"tokens {args.tokens_command}"
    if args.tokens_command != "list":
        try:
            check_name(args.name, "token name")
        except ValueError as exc:
            return _fail(command, str(exc), 2)
    engine = _engine(args, command)
    if engine is None:
        return 2
    now = datetime.now(UTC)
    try:
        if args.tokens_command == "list":
            for token in _read(engine, users.all_tokens):
                state = "disabled" if token.disabled else "active"
                print(
                    f"{token.name:<24} {token.role.value:<11} {state:<9} "
                    f"created {token.created_at:%Y-%m-%d} by {token.created_by}"
                )
            return 0
        name, by = args.name, args.by
        if args.tokens_command == "add":
            role, secret = Role(args.role), new_token()
            digest = token_digest(secret)
            added = _write(engine, lambda c: users.add_token(c, name, role, digest, by, now))
            if added is None:
                return _fail(command, f"{name}: a token of that name exists")
            print(secret)
            print(
                f"token {name} added ({role.value}); it is shown this once: give it to the "
                "client now (Authorization: Bearer ...)",
                file=sys.stderr,
            )
            return 0
        if not _write(engine, lambda c: users.disable_token(c, name, by, now)):
            return _fail(command, f"no token {name}")
        print(f"token {name} disabled")
        return 0
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------- audit


def _audit_verify(args: argparse.Namespace) -> int:
    from middleware.store.audit import GENESIS, verify_chain

    engine = _engine(args, "audit verify")
    if engine is None:
        return 2
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                checked = verify_chain(conn)
    finally:
        engine.dispose()
    if checked.broken is not None:
        print(
            f"audit log broken at entry {checked.broken.id}: {checked.broken.problem} "
            f"({checked.entries - 1} entries before it check out)"
        )
        return 1
    if not checked.entries:
        print("audit log empty")
        return 0
    print(f"audit log intact: {checked.entries} entries, {checked.first_id} to {checked.last_id}")
    if checked.starts_after != GENESIS:
        print(
            f"entries before {checked.first_id} were purged (their archive holds them); the "
            f"chain is checked from there on: it starts after {checked.starts_after}"
        )
    print(f"head {checked.head}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """The commands, on the ``lis-middleware`` parser's subcommands."""
    config = {"metavar": "FILE", "help": "the daemon's YAML configuration"}
    roles = [role.value for role in Role]
    by = {"default": getpass.getuser(), "help": "who does it (audited; the system user by default)"}

    people = sub.add_parser(
        "users",
        help="the people who may use the status page and the control API",
        description="Add users with a role, change their password or role, disable them "
        "(their sessions stop at their next request), list them. Passwords have at least "
        "10 characters; they are read from the terminal (twice), or from one line of "
        "standard input with --password-stdin. Every change is audited.",
    )
    people_sub = people.add_subparsers(dest="users_command", required=True)
    for name, text in (
        ("add", "add a user with a role"),
        ("passwd", "change a user's password (their sessions end)"),
        ("role", "change a user's role"),
        ("disable", "disable a user (their sessions end at their next request)"),
        ("enable", "enable a disabled user again"),
    ):
        command = people_sub.add_parser(
            name, help=text, description=f"{text[0].upper()}{text[1:]}."
        )
        command.add_argument("name", help="the user's name (letters, digits, . _ @ -)")
        if name in ("add", "role"):
            command.add_argument("--role", required=True, choices=roles)
        if name in ("add", "passwd"):
            command.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from one line of standard input",
            )
        command.add_argument("--by", **by)
        command.add_argument("--config", **config)
        command.set_defaults(handler=_users)
    listing = people_sub.add_parser("list", help="every user, with role and state")
    listing.add_argument("--config", **config)
    listing.set_defaults(handler=_users)

    tokens = sub.add_parser(
        "tokens",
        help="the tokens machines call the control API with",
        description="Each client of the API (a script, the LIS, a monitoring system) gets "
        "a token of its own with a role; it sends it as `Authorization: Bearer TOKEN`. "
        "Only the token's SHA-256 is stored: `tokens add` prints it once. Every change is "
        "audited; the client's actions are audited as token:NAME.",
    )
    tokens_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    add = tokens_sub.add_parser("add", help="make a token with a role and print it once")
    add.add_argument("name", help="the client's name (letters, digits, . _ @ -)")
    add.add_argument("--role", required=True, choices=roles)
    disable = tokens_sub.add_parser("disable", help="refuse a token from its next request")
    disable.add_argument("name")
    for command in (add, disable):
        command.add_argument("--by", **by)
        command.add_argument("--config", **config)
        command.set_defaults(handler=_tokens)
    listing = tokens_sub.add_parser("list", help="every token, with role and state")
    listing.add_argument("--config", **config)
    listing.set_defaults(handler=_tokens)

    audit = sub.add_parser("audit", help="the audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check the audit log's hash chain",
        description="Walk the audit log in order and check that each entry's hash covers "
        "its content and the entry before it: exit status 0, with the number of entries "
        "and the hash of the last (keep it elsewhere: a later rewrite of the whole chain "
        "would change it), or 1 naming the first entry that does not check out. Entries "
        "purged after archiving cannot be checked here: the chain is checked from the "
        "first entry left.",
    )
    verify.add_argument("--config", **config)
    verify.set_defaults(handler=_audit_verify)


__all__ = ["add_parsers"]
