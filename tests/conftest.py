"""Fixtures shared by the suite: corpus paths and databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"


def _postgres_admin_url() -> str | None:
    url = os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("MIDDLEWARE_TEST_POSTGRES_URL must be set in CI")
    return None


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards (skips without a server)."""
    admin = _postgres_admin_url()
    if admin is None:
        pytest.skip("PostgreSQL tests need MIDDLEWARE_TEST_POSTGRES_URL")
    import psycopg

    name = f"mw_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = admin.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each storage test runs on SQLite and on PostgreSQL, each time on an empty schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'middleware.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    yield url
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


@pytest.fixture
def start_daemon(database_url: str, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts the daemon as a process with one tcp-server instrument on ``port`` (its
    fields given as keywords; ``settings`` for the daemon's), stopped after the test."""
    started: list[DaemonProcess] = []

    def start(port: int, **instrument: Any) -> DaemonProcess:
        settings = instrument.pop("settings", {})
        config = {"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}
        daemon = DaemonProcess(
            tmp_path, [config | instrument], database_url=database_url, **settings
        )
        daemon.start()
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.stop()
