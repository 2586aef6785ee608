"""Retention (D9): what is past the time it must be kept is listed, and deleted only once
a verified archive holds it; what is still needed stays. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Row, text
from sqlalchemy.exc import DBAPIError

from middleware.archive import archive_month
from middleware.cli import main
from middleware.retention import PurgeRefused, purge
from middleware.settings import RetentionConfig
from middleware.store import Store, audit
from middleware.store.archives import Month
from middleware.store.retention import cutoffs, overdue, years_before
from tests.messages import patient
from tests.record_store import count, store_message, store_month, write_config

OLD = datetime(2015, 3, 2, 8, 0, tzinfo=UTC)  # past every retention
MIDDLE = datetime(2020, 3, 2, 8, 0, tzinfo=UTC)  # past 5 years, not 10
RECENT = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
NOW = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
LIMITS = cutoffs(RetentionConfig().model_dump(), NOW)
KEY = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    opened = Store(database_url)
    store_month(opened, OLD, "OLD")
    # Held for ever: no QC ever comes for this analyser.
    store_message(opened, patient("OLD-HELD", "5.0"), OLD + timedelta(minutes=5), "chem-2")
    store_month(opened, MIDDLE, "MID", "5.3")
    store_month(opened, RECENT, "NEW", "5.1")
    yield opened
    opened.close()


def _specimens(store: Store, table: str = "results") -> set[str]:
    rows = store.read(lambda conn: conn.execute(text(f"SELECT specimen_id FROM {table}")).all())
    return {row[0] for row in rows}


def _archive(store: Store, tmp_path: Path, month: Month) -> None:
    archive_month(store.engine, [tmp_path / "a", tmp_path / "b"], month, KEY, NOW, "alice")


def test_the_defaults_are_the_regulations(tmp_path: Path) -> None:
    retention = RetentionConfig()
    assert (retention.patient_results, retention.chronological_register) == (5, 10)
    assert (retention.qc, retention.audit) == (5, 10)
    assert LIMITS["patient_results"] == datetime(2021, 6, 15, 12, 0, tzinfo=UTC)
    assert LIMITS["chronological_register"] == datetime(2016, 6, 15, 12, 0, tzinfo=UTC)
    assert years_before(datetime(2028, 2, 29, tzinfo=UTC), 5) == datetime(2023, 2, 28, tzinfo=UTC)
    with pytest.raises(ValueError, match="at least as long as the longest"):
        RetentionConfig(audit=6)
    with pytest.raises(ValueError):
        RetentionConfig(patient_results=2)


def test_dry_run_lists_per_kind_what_is_past_retention(
    store: Store, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    found = {o.name: o for o in store.read(lambda conn: overdue(conn, LIMITS, []))}
    results = found["results"]
    assert (results.kind, results.rows, results.archived) == ("patient_results", 5, 0)
    assert results.oldest == OLD + timedelta(minutes=1) and results.newest < MIDDLE + timedelta(1)
    messages = found["messages"]  # ten years: only the oldest month's
    assert (messages.kind, messages.rows) == ("chronological_register", 4)
    assert found["qc_evaluations"].rows == 4 and found["audit_log"].rows == 1
    assert found["outbox"].rows == 1  # delivered; the one pending has no time yet

    config = write_config(tmp_path, database_url)
    assert main(["purge", "--dry-run", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "patient_results: kept until" in out
    assert "results" in out and "2015-03-02 .. 2020-03-02" in out
    assert count(store, "SELECT count(*) FROM results") == 7  # nothing deleted


def test_purge_deletes_only_what_a_verified_archive_holds(store: Store, tmp_path: Path) -> None:
    before = {t: count(store, f"SELECT count(*) FROM {t}") for t in ("results", "messages")}
    assert purge(store.engine, KEY, LIMITS, NOW, "alice").total == 0  # nothing archived
    assert {t: count(store, f"SELECT count(*) FROM {t}") for t in before} == before

    _archive(store, tmp_path, Month(2015, 3))

    def late_entry(conn: Connection) -> None:  # in the month archived, written after it was
        audit.audit(conn, OLD + timedelta(days=3), "lab-it", "late")

    asyncio.run(_write(store, late_entry))
    done = purge(store.engine, KEY, LIMITS, NOW, "alice")
    assert done.archives == ["2015-03"] and done.deleted["results"] == 2
    # The oldest month's records are gone, except what is still needed.
    assert _specimens(store) == {"OLD-HELD", "MID-1", "MID-2", "NEW-1", "NEW-2"}
    assert _specimens(store, "specimens") == {"OLD-HELD", "MID-1", "MID-2", "NEW-1", "NEW-2"}
    assert count(store, "SELECT count(*) FROM open_holds") == 1
    assert count(store, "SELECT count(*) FROM messages WHERE received_at < :t", t=MIDDLE) == 1
    assert (
        count(store, "SELECT count(*) FROM raw_transmissions WHERE received_at < :t", t=MIDDLE) == 0
    )
    assert count(store, "SELECT count(*) FROM control_results WHERE stored_at < :t", t=MIDDLE) == 0
    # The month not archived keeps everything, though its results are past retention.
    assert count(store, "SELECT count(*) FROM results WHERE specimen_id LIKE 'MID-%'") == 2
    # The audit entry written after the archive is not in it: it stays.
    assert [r[0] for r in store.read(_audit_before(MIDDLE))] == ["late"]
    assert count(store, "SELECT count(*) FROM audit_log WHERE action = 'retention.purge'") == 2

    _archive(store, tmp_path, Month(2020, 3))
    done = purge(store.engine, KEY, LIMITS, NOW, "alice")
    assert _specimens(store) == {"OLD-HELD", "NEW-1", "NEW-2"}
    # Five years for results and QC; ten for the register: its messages stay.
    assert count(store, "SELECT count(*) FROM messages WHERE text LIKE '%MID-%'") == 2
    assert count(store, "SELECT count(*) FROM control_results") == 2  # the recent month's
    assert count(store, "SELECT count(*) FROM outbox WHERE specimen_id = 'MID-1'") == 1

    # Outside a purge the evidence stays append-only.
    for statement in ("DELETE FROM raw_transmissions", "DELETE FROM audit_log"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))


def test_held_results_and_undelivered_messages_are_never_purged(
    store: Store, tmp_path: Path
) -> None:
    _archive(store, tmp_path, Month(2015, 3))
    far = cutoffs(RetentionConfig().model_dump(), datetime(2060, 1, 1, tzinfo=UTC))
    purge(store.engine, KEY, far, NOW, "alice")
    assert _specimens(store) >= {"OLD-HELD"} and "OLD-1" not in _specimens(store)
    held = "SELECT count(*) FROM decisions WHERE specimen_id = 'OLD-HELD'"
    assert count(store, held) == 1
    outbox = store.read(
        lambda conn: conn.execute(
            text("SELECT specimen_id, state FROM outbox WHERE created_at < :t"), {"t": MIDDLE}
        ).all()
    )
    assert [tuple(row) for row in outbox] == [("OLD-2", "pending")]


def test_an_altered_archive_stops_the_purge_before_anything_is_deleted(
    store: Store, tmp_path: Path
) -> None:
    _archive(store, tmp_path, Month(2015, 3))
    altered = tmp_path / "b" / "2015-03" / "results.jsonl"
    altered.write_bytes(altered.read_bytes() + b"\n")
    with pytest.raises(PurgeRefused, match=r"results\.jsonl: altered"):
        purge(store.engine, KEY, LIMITS, NOW, "alice")
    assert count(store, "SELECT count(*) FROM results") == 7


def test_purge_from_the_command_line(
    store: Store, database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, database_url)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["archive", a, b, "--period", "2015-03", "--config", str(config)]) == 0
    with pytest.raises(SystemExit):  # deleting records says who does it
        main(["purge", "--config", str(config)])
    assert main(["purge", "--by", "alice", "--config", str(config)]) == 0
    assert "row(s) deleted, from archives 2015-03" in capsys.readouterr().out
    assert "OLD-1" not in _specimens(store) and "MID-1" in _specimens(store)


def _audit_before(moment: datetime) -> Callable[[Connection], Sequence[Row[Any]]]:
    return lambda conn: conn.execute(
        text("SELECT action FROM audit_log WHERE at < :t ORDER BY id"), {"t": moment}
    ).all()


async def _write(store: Store, work: Callable[[Connection], None]) -> None:
    await store.write(work)
