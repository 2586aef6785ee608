"""Database server settings under which results may be lost or tables left to grow: the
daemon says which at start, and serves all the same (the server is lab IT's)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from middleware.store import Store
from middleware.store.database import risky_settings
from middleware.zones import host_zone
from tests.daemon import DaemonProcess, free_port


def _for_new_sessions(url: str, setting: str, value: str) -> None:
    """A setting of this test's own database, as ALTER DATABASE gives its next sessions."""
    database = url.rpartition("/")[2]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{database}" SET {setting} = {value}')


def _server_says(url: str, setting: str) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SHOW {setting}").fetchone()
    assert row is not None
    return str(row[0])


def test_the_settings_that_put_results_at_risk_are_named(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        store = Store(database_url)
        try:
            assert store.read(risky_settings) == []  # the daemon sets SQLite's own pragmas
        finally:
            store.close()
        return
    for value, listed in (("off", True), ("on", False)):
        _for_new_sessions(database_url, "synchronous_commit", value)
        store = Store(database_url)
        try:
            found = {s.name: s for s in store.read(risky_settings)}
        finally:
            store.close()
        assert ("synchronous_commit" in found) is listed
        if listed:
            assert found["synchronous_commit"].value == "off"
            assert "crashes" in found["synchronous_commit"].consequence
        # Set for the whole server only: named exactly when the server has it off.
        assert ("autovacuum" in found) is (_server_says(database_url, "autovacuum") == "off")


def _said_at_start(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's log lines up to its saying it runs; the daemon is stopped after."""
    try:
        daemon._wait_for_log('"daemon running"', time.monotonic() + 20)
        text = daemon.log.read_text().splitlines()
    finally:
        assert daemon.stop() == 0
    return [json.loads(line) for line in text if line.startswith("{")]


def test_the_daemon_says_at_start_what_the_server_risks(database_url: str, tmp_path: Path) -> None:
    postgres = database_url.startswith("postgresql")
    if postgres:
        _for_new_sessions(database_url, "synchronous_commit", "off")
    port = free_port()
    instrument = {"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}
    daemon = DaemonProcess(tmp_path, [instrument], database_url=database_url)
    daemon.start()
    lines = _said_at_start(daemon)
    said = [line for line in lines if line["event"] == "database setting puts results at risk"]
    running = next(line for line in lines if line["event"] == "daemon running")
    # And in which zone it reads analysers' times and lots' expiry: the host's, by name.
    assert running["zone"] == str(host_zone())
    settings = {line["setting"]: line for line in said}
    if not postgres:
        assert said == []
        return
    warning = settings["synchronous_commit"]
    assert (warning["level"], warning["value"]) == ("warning", "off")
    assert warning["consequence"]


@pytest.mark.parametrize(("tz", "said"), [("CET-1CEST,M3.5.0,M10.5.0/3", True), ("", False)])
def test_a_host_zone_without_summer_time_is_said(tmp_path: Path, tz: str, said: bool) -> None:
    # A TZ written as a POSIX rule names no zone the daemon can read: the offset in force
    # is all it has, and lab IT is told to name the zone. An empty TZ is UTC, which has
    # no summer time to miss.
    instrument = {"name": "an1", "transport": "tcp-server", "host": "127.0.0.1",
                  "port": free_port()}  # fmt: skip
    daemon = DaemonProcess(tmp_path, [instrument])
    daemon.start(env={"TZ": tz})
    warnings = [line for line in _said_at_start(daemon) if "fixed offset" in line["event"]]
    assert len(warnings) == said
    assert all(w["level"] == "warning" and "timezone" in w["event"] for w in warnings)
