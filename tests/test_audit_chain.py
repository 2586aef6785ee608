"""The audit log is a hash chain (D7, D8): each entry hashes the one before it, so an entry
changed, removed or put in by someone with access to the database is found by
``lis-middleware audit verify``; writers at the same time never fork it; a purge of what
an archive holds leaves a chain that still checks out. On SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select, text
from sqlalchemy.exc import DBAPIError

from middleware.archive import archive_month
from middleware.cli import main
from middleware.retention import purge
from middleware.settings import RetentionConfig
from middleware.store import Store
from middleware.store.archives import Month
from middleware.store.audit import GENESIS, ChainCheck, audit, entry_hash, verify_chain
from middleware.store.database import MIGRATIONS, migrate, open_engine
from middleware.store.retention import cutoffs
from middleware.store.schema import audit_log, purge_permit
from tests.record_store import store_month, write_config

AT = datetime(2026, 4, 1, 9, 30, 15, 123456, tzinfo=UTC)
PARIS = timezone(timedelta(hours=2))
Entry = tuple[datetime, str, str, str, object]


def write(engine: Engine, *entries: Entry) -> None:
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            for at, actor, action, subject, detail in entries:
                audit(conn, at, actor, action, subject, detail)


def check(engine: Engine) -> ChainCheck:
    with engine.connect() as conn, conn.begin():
        return verify_chain(conn, batch=3)  # several batches, even for a few entries


def some(n: int, start: int = 0) -> list[Entry]:
    return [
        (AT + timedelta(minutes=i), f"user-{i}", "qc.calibration", "chem-1", {"tests": [i]})
        for i in range(start, start + n)
    ]


@contextlib.contextmanager
def tampering(engine: Engine) -> Iterator[Connection]:
    """A connection of someone who can write the database and lifts the triggers that
    keep the log append-only, then puts them back."""
    postgresql = engine.dialect.name == "postgresql"
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            if postgresql:
                conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only"))
            else:
                conn.execute(text("DROP TRIGGER audit_log_no_update"))
                conn.execute(text("DROP TRIGGER audit_log_no_delete"))
            yield conn
            if postgresql:
                conn.execute(text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only"))
            else:
                conn.execute(
                    text(
                        "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
                        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
                        "WHEN NOT EXISTS (SELECT 1 FROM purge_permit) "
                        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
                    )
                )


def verify_command(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = main(["audit", "verify", "--config", str(write_config(tmp_path, url))])
    return status, capsys.readouterr().out


# --- the chain ---------------------------------------------------------------------------------


def test_each_entry_hashes_the_one_before_it(store: Store) -> None:
    # A time in another zone, and one without a zone (UTC), hash as they are read back.
    write(
        store.engine,
        (AT.astimezone(PARIS), "alice", "rules.load", "rules", {"diff": ["+ 1"]}),
        (AT.replace(tzinfo=None), "bob", "user.add", "carol", 'é \u2603 "quoted"\n'),
        *some(5),
    )
    rows = store.read(lambda c: c.execute(select(audit_log).order_by(audit_log.c.id)).all())
    previous = GENESIS
    for row in rows:
        assert row.prev_hash == previous
        assert row.hash == entry_hash(
            previous, row.at, row.actor, row.action, row.subject, row.detail
        )
        previous = row.hash
    checked = check(store.engine)
    assert checked.broken is None and checked.entries == 7
    assert (checked.starts_after, checked.head) == (GENESIS, previous)
    # Each field counts: the same content in other fields hashes otherwise.
    assert entry_hash(GENESIS, AT, "a", "b", "", "") != entry_hash(GENESIS, AT, "", "a", "b", "")


def test_an_edited_entry_is_named_by_audit_verify(
    store: Store, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(store.engine, *some(6))
    assert verify_command(tmp_path, database_url, capsys) == (
        0,
        f"audit log intact: 6 entries, 1 to 6\nhead {check(store.engine).head}\n",
    )
    # The triggers refuse the change to anyone who does not lift them.
    with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = 3"))

    with tampering(store.engine) as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'mallory' WHERE id = 3"))
    status, out = verify_command(tmp_path, database_url, capsys)
    assert status == 1
    assert out.startswith("audit log broken at entry 3: (2026-04-01T09:32:15.123456Z mallory ")
    assert "was changed after it was written" in out and "2 entries before it check out" in out

    # Rewriting its hash too moves the break to the next entry, which still names it.
    with tampering(store.engine) as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.id == 3)).one()
        forged = entry_hash(row.prev_hash, row.at, row.actor, row.action, row.subject, row.detail)
        conn.execute(text("UPDATE audit_log SET hash = :h WHERE id = 3"), {"h": forged})
    status, out = verify_command(tmp_path, database_url, capsys)
    assert status == 1 and out.startswith("audit log broken at entry 4: ")
    assert "does not follow the entry before it" in out


def test_an_entry_removed_or_put_in_is_found(store: Store) -> None:
    write(store.engine, *some(5))
    with tampering(store.engine) as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id = 2"))
    broken = check(store.engine).broken
    assert broken is not None and broken.id == 3
    assert "an entry was removed, put in or rewritten there" in broken.problem

    with tampering(store.engine) as conn:  # put back, as a forger would, with a new id
        conn.execute(text("DELETE FROM audit_log WHERE id > 1"))
    write(store.engine, *some(2, start=10))
    with store.engine.connect() as conn:  # an entry written straight, bypassing the chain
        conn.execution_options(write=True)
        with conn.begin():
            conn.execute(
                audit_log.insert(),
                {"at": AT, "actor": "mallory", "action": "user.add", "subject": "mallory",
                 "detail": "", "prev_hash": GENESIS, "hash": GENESIS},
            )  # fmt: skip
    broken = check(store.engine).broken
    assert broken is not None and "(2026-04-01T09:30:15.123456Z mallory user.add" in broken.problem


def test_entries_missing_from_the_start_need_a_purge_to_explain_them(store: Store) -> None:
    write(store.engine, *some(4))
    with tampering(store.engine) as conn:
        conn.execute(text("DELETE FROM audit_log WHERE id <= 2"))
    broken = check(store.engine).broken
    assert broken is not None and broken.id == 3
    assert "no purge of the log is recorded" in broken.problem


def test_writers_at_the_same_time_never_fork_the_chain(store: Store) -> None:
    """Each thread its own connection and transactions, as daemons and commands are."""
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(20):
                write(store.engine, (AT, f"writer-{n}", "test", str(i), ""))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    checked = check(store.engine)
    assert checked.broken is None and checked.entries == 80


# --- migrating, purging ------------------------------------------------------------------------


def downgrade(engine: Engine, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def test_the_migration_chains_the_entries_already_written(empty_database_url: str) -> None:
    engine = open_engine(empty_database_url)
    try:
        migrate(engine, "0015")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO audit_log (at, actor, action, subject, detail) "
                    "VALUES (:at, :actor, 'qc.calibration', 'chem-1', :detail)"
                ),
                [
                    {"at": AT + timedelta(seconds=i), "actor": f"tech-{i % 7}", "detail": str(i)}
                    for i in range(2500)  # more than one batch of the migration
                ],
            )
        migrate(engine)
        write(engine, *some(1))  # and the chain goes on
        checked = check(engine)
        assert checked.broken is None and checked.entries == 2501
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET actor = 'x'"))  # append-only again

        downgrade(engine, "0015")  # and back, should a release be withdrawn
        with engine.connect() as conn:
            columns = conn.execute(text("SELECT * FROM audit_log LIMIT 1")).keys()
            assert "hash" not in columns
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text("UPDATE audit_log SET actor = 'x'"))
        migrate(engine)
        assert check(engine).entries == 2501
    finally:
        engine.dispose()


def test_a_purge_leaves_a_chain_that_checks_out_from_the_first_entry_kept(
    store: Store, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, recent = datetime(2015, 3, 2, 8, tzinfo=UTC), datetime(2026, 5, 4, 9, tzinfo=UTC)
    now = datetime(2026, 6, 15, 12, tzinfo=UTC)
    key = b"0123456789abcdef0123456789abcdef"
    store_month(store, old, "OLD")
    store_month(store, recent, "NEW", "5.1")
    archive_month(store.engine, [tmp_path / "a", tmp_path / "b"], Month(2015, 3), key, now, "al")
    done = purge(store.engine, key, cutoffs(RetentionConfig().model_dump(), now), now, "al")
    assert done.deleted["audit_log"] == 1
    checked = check(store.engine)
    assert checked.broken is None and checked.first_id == 2
    assert checked.starts_after != GENESIS
    status, out = verify_command(tmp_path, database_url, capsys)
    assert status == 0
    assert "entries before 2 were purged (their archive holds them)" in out
    # The archive holds the entry purged, with the hash the first one kept follows.
    archived = (tmp_path / "a" / "2015-03" / "audit_log.jsonl").read_text()
    assert checked.starts_after is not None and checked.starts_after in archived

    # Someone able to lift the triggers deletes the oldest entries kept, as a purge does:
    # the chain no longer starts where the purge left it.
    with store.engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            conn.execute(purge_permit.insert().values(granted_at=now))
            conn.execute(audit_log.delete().where(audit_log.c.id.in_([2, 3])))
            conn.execute(purge_permit.delete())
    tampered = check(store.engine)
    assert tampered.broken is not None and tampered.broken.id == 4
    assert "latest purge" in tampered.broken.problem
