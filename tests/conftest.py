"""Fixtures shared by the suite: corpus paths and databases (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from middleware.store import Store
from simulators.ports import use_share
from tests.daemon import DaemonProcess

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"

# Parallel workers (pytest -n) each pick their ports from a slice of their own.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "")
if _worker.startswith("gw"):
    use_share(int(_worker[2:]), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def _postgres_admin_url() -> str | None:
    url = os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL")
    if url:
        return url
    if os.environ.get("CI"):
        pytest.fail("MIDDLEWARE_TEST_POSTGRES_URL must be set in CI")
    return None


@contextlib.contextmanager
def fresh_postgres_database(template: str | None = None) -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards (skips without a server): empty, or
    a copy of the database ``template`` names."""
    admin = _postgres_admin_url()
    if admin is None:
        pytest.skip("PostgreSQL tests need MIDDLEWARE_TEST_POSTGRES_URL")
    import psycopg

    name = f"mw_test_{uuid.uuid4().hex[:10]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"{copy}')
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


@pytest.fixture(scope="session")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Databases the migrations ran on once, for each test to start from a copy of: the
    migrations run on every fresh database would cost most of the suite's time. The
    migrations themselves are tested on empty databases (``empty_database_url``)."""
    from middleware.store import Store

    sqlite = tmp_path_factory.mktemp("migrated") / "middleware.db"
    Store(f"sqlite:///{sqlite}").close()
    templates = {"sqlite": str(sqlite)}
    if _postgres_admin_url() is None:
        yield templates
        return
    with fresh_postgres_database() as url:
        Store(url).close()
        templates["postgresql"] = url.rpartition("/")[2]
        yield templates


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, migrated: dict[str, str]
) -> Iterator[str]:
    """Each storage test runs on SQLite and on PostgreSQL, each time on a database of its
    own, at the newest schema and holding nothing."""
    if request.param == "sqlite":
        path = tmp_path / "middleware.db"
        shutil.copyfile(migrated["sqlite"], path)
        yield f"sqlite:///{path}"
        return
    with fresh_postgres_database(migrated.get("postgresql")) as url:
        yield url


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """The store of ``database_url``, closed after the test."""
    opened = Store(database_url)
    yield opened
    opened.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLite and PostgreSQL, empty: for the migrations themselves."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'middleware.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


def issue_certificates(
    directory: Path, trusted: Sequence[str], untrusted: Sequence[str] = ()
) -> dict[str, Path]:
    """The lab's CA (``ca``) and a stranger's (``stranger_ca``), and for each name a
    certificate for 127.0.0.1 (``<name>_cert``, ``<name>_key``): from the lab's CA for
    ``trusted``, from the stranger's for ``untrusted``."""
    import trustme

    ca, stranger = trustme.CA(), trustme.CA()
    files = {"ca": directory / "ca.pem", "stranger_ca": directory / "stranger.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    stranger.cert_pem.write_to_path(str(files["stranger_ca"]))
    issuers = [(name, ca) for name in trusted] + [(name, stranger) for name in untrusted]
    for name, authority in issuers:
        issued = authority.issue_cert("127.0.0.1", "localhost")
        files[f"{name}_cert"] = directory / f"{name}.pem"
        files[f"{name}_key"] = directory / f"{name}.key"
        issued.cert_chain_pems[0].write_to_path(str(files[f"{name}_cert"]))
        issued.private_key_pem.write_to_path(str(files[f"{name}_key"]))
    return files


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
