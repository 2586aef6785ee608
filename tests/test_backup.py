"""Backups (D2): a copy taken while the daemon writes restores to a consistent database
holding every message committed before it; a copy that was altered, or a target that
holds records, is refused. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from middleware.cli import main
from middleware.store import Store
from middleware.store.audit import audit
from middleware.store.backup import BackupError, backup, restore, verify_backup
from middleware.store.database import HEAD, open_engine
from middleware.store.schema import audit_log, instrument_leases
from tests.conftest import fresh_postgres_database
from tests.daemon import DaemonProcess, connect, free_port, query
from tests.messages import three_tests
from tests.peer import EOT, StreamPeer, send_message
from tests.record_store import store_month, write_config

NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)


def message(n: int) -> list[bytes]:
    return three_tests(n, b"BACKUP-TEST")


@contextlib.contextmanager
def empty_target(database_url: str, tmp_path: Path) -> Iterator[str]:
    """A database of the same kind as ``database_url``, not there yet or empty."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored' / 'middleware.db'}"
        return
    with fresh_postgres_database() as url:
        yield url


def test_a_backup_taken_while_the_daemon_writes_restores_every_message_committed_before_it(
    start_daemon: Callable[..., DaemonProcess], database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    daemon = start_daemon(port)
    acknowledged: list[tuple[int, float]] = []  # message, when its last frame was ACKed
    stop = threading.Event()

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        n = 0
        while not stop.is_set():
            await send_message(peer, message(n))
            acknowledged.append((n, time.monotonic()))
            n += 1
        await peer.write(EOT)
        await peer.close()

    writer = threading.Thread(target=asyncio.run, args=(analyser(),))
    writer.start()
    try:
        while len(acknowledged) < 15:
            time.sleep(0.01)
        committed_before = {n for n, _ in acknowledged}
        manifest = backup(database_url, tmp_path / "backup", NOW)
        finished = time.monotonic()
        while len([t for _, t in acknowledged if t > finished]) < 10:
            time.sleep(0.01)  # the stream goes on after the copy
    finally:
        stop.set()
        writer.join(30)
    assert daemon.stop() == 0
    sent_before_end = {n for n, t in acknowledged if t <= finished}
    assert verify_backup(tmp_path / "backup") == []
    assert manifest.revision == HEAD

    with empty_target(database_url, tmp_path) as target:
        done = restore(target, tmp_path / "backup", False, NOW, 15.0)
        assert done.rows == manifest.rows
        rows = query(target, "SELECT specimen_id, count(*) FROM results GROUP BY specimen_id")
        raw = query(target, "SELECT count(*) FROM raw_transmissions WHERE outcome = 'message'")
    restored = {int(specimen[1:]) for specimen, _ in rows}
    # Everything committed before the backup began is there; the copy is one moment's:
    # the messages up to some point, each whole, none after the copy ended (but the one
    # whose ACK was on its way).
    assert committed_before <= restored
    assert restored == set(range(len(restored)))
    assert len(restored) <= max(sent_before_end) + 2
    assert all(results == 3 for _, results in rows)
    assert raw == [(len(restored),)]


def test_restore_refuses_a_target_holding_records_unless_forced(
    database_url: str, tmp_path: Path
) -> None:
    store = Store(database_url)
    store_month(store, datetime(2026, 3, 2, 8, 0, tzinfo=UTC), "MAR")
    store.close()
    manifest = backup(database_url, tmp_path / "backup", NOW)
    assert manifest.rows["results"] == 2
    with pytest.raises(BackupError, match="holds records"):
        restore(database_url, tmp_path / "backup", False, NOW, 15.0)
    done = restore(database_url, tmp_path / "backup", True, NOW, 15.0)
    assert done.rows["results"] == 2
    if database_url.startswith("sqlite"):
        assert done.set_aside is not None and done.set_aside.exists()  # the one replaced
    with pytest.raises(BackupError, match="already holds a backup"):
        backup(database_url, tmp_path / "backup", NOW)
    (tmp_path / "a file").write_text("")
    with pytest.raises(BackupError, match="a file: cannot make the directory: File exists"):
        backup(database_url, tmp_path / "a file", NOW)


def test_restore_refuses_while_a_daemon_runs_on_the_target(
    database_url: str, tmp_path: Path
) -> None:
    backup(database_url, tmp_path / "backup", NOW)
    engine = open_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            instrument_leases.insert().values(
                instrument="an1", owner="node-a/4711", acquired_at=NOW, renewed_at=NOW
            )
        )
    engine.dispose()
    with pytest.raises(BackupError, match="daemon node-a/4711 runs on this database"):
        restore(database_url, tmp_path / "backup", True, NOW, 15.0)


def test_an_altered_backup_fails_verify_naming_the_file_and_is_not_restored(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, database_url)
    assert main(["backup", str(tmp_path / "backup"), "--config", str(config)]) == 0
    assert main(["backup", "verify", str(tmp_path / "backup")]) == 0
    [entry] = json.loads((tmp_path / "backup" / "MANIFEST.json").read_text())["files"]
    copy = tmp_path / "backup" / entry["name"]
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["backup", "verify", str(tmp_path / "backup")]) == 1
    assert f"{copy}: altered" in capsys.readouterr().out
    with empty_target(database_url, tmp_path) as target:
        other = write_config(tmp_path / "other", target) if _mkdir(tmp_path / "other") else None
        assert other is not None
        assert main(["restore", str(tmp_path / "backup"), "--config", str(other)]) == 1
    assert "backup refused" in capsys.readouterr().err


def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return True


def test_restore_into_a_database_not_there_yet_says_where_and_leaves_no_lease(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = open_engine(database_url)
    with engine.begin() as conn:
        conn.execute(
            instrument_leases.insert().values(
                instrument="an1", owner="node-a/4711", acquired_at=NOW, renewed_at=NOW
            )
        )
    engine.dispose()
    assert (
        main(
            [
                "backup",
                str(tmp_path / "backup"),
                "--config",
                str(write_config(tmp_path, database_url)),
            ]
        )
        == 0
    )
    with empty_target(database_url, tmp_path) as target:
        config = write_config(tmp_path / "other", target) if _mkdir(tmp_path / "other") else None
        assert config is not None
        capsys.readouterr()
        assert main(["restore", str(tmp_path / "backup"), "--config", str(config)]) == 0
        where = target.removeprefix("sqlite:///")
        assert (
            f"from {tmp_path / 'backup'} into {where}; start the daemon" in capsys.readouterr().out
        )
        # The lease of the daemon that ran when the backup was taken would refuse the
        # first start for lease_seconds, in the name of a daemon that is not there.
        assert query(target, "SELECT count(*) FROM instrument_leases") == [(0,)]


def test_a_postgresql_database_not_there_or_not_reachable_is_said_in_a_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with fresh_postgres_database() as url:
        Store(url).close()
        assert (
            main(["backup", str(tmp_path / "backup"), "--config", str(write_config(tmp_path, url))])
            == 0
        )
    base = url.rpartition("/")[0]
    absent = write_config(_at(tmp_path / "absent"), f"{base}/mw_absent")
    capsys.readouterr()
    for command in (["backup", str(tmp_path / "new")], ["restore", str(tmp_path / "backup")]):
        assert main([*command, "--config", str(absent)]) == 1
        assert capsys.readouterr().err == (
            f'lis-middleware {command[0]}: database "mw_absent" does not exist: '
            f"create it (createdb mw_absent) and run {command[0]} again\n"
        )
    away = write_config(_at(tmp_path / "away"), "postgresql://postgres:secret@127.0.0.1:1/mw")
    assert main(["restore", str(tmp_path / "backup"), "--config", str(away)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "lis-middleware restore: cannot reach the database "
        "postgresql://postgres:***@127.0.0.1:1/mw: "
    )
    assert err.count("\n") == 1 and "Connection refused" in err


def _at(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_a_restore_records_the_audit_head_it_replaced(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Entries written after the backup leave the chain with the restore: a head written
    down since is found in the restore's entry, not taken for a rewrite."""
    config = str(write_config(tmp_path, database_url))
    store = Store(database_url)
    store_month(store, datetime(2026, 3, 2, 8, 0, tzinfo=UTC), "MAR")
    store.close()
    assert main(["backup", str(tmp_path / "backup"), "--config", config]) == 0
    engine = open_engine(database_url)
    with engine.begin() as conn:
        audit(conn, NOW, "ana", "rules.load", "/etc/lis-middleware/rules")
        head, entry = conn.execute(
            select(audit_log.c.hash, audit_log.c.id).order_by(audit_log.c.id.desc()).limit(1)
        ).one()
    engine.dispose()
    capsys.readouterr()
    assert main(["restore", str(tmp_path / "backup"), "--force", "--config", config]) == 0
    [(action, detail)] = query(
        database_url,
        "SELECT action, detail FROM audit_log ORDER BY id DESC LIMIT 1",
    )
    assert action == "backup.restore"
    assert json.loads(detail) == {"replaced_head": head, "replaced_entry": entry}
    assert query(database_url, "SELECT count(*) FROM audit_log WHERE hash = :h", h=head) == [(0,)]
