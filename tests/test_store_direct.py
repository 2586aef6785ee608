"""Statements run on the driver's cursor store exactly what SQLAlchemy would, in the
caller's transaction, and fail as SQLAlchemy's do: on SQLite and on PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import bindparam, exc, select, text

from middleware.store import Store
from middleware.store.direct import Direct
from middleware.store.schema import (
    messages,
    open_holds,
    raw_transmissions,
    results,
    specimens,
)
from middleware.store.sql import new_only
from tests.conftest import fresh_postgres_database

AT = datetime(2026, 12, 2, 9, 30, 15, 123456, tzinfo=UTC)


def _raw_row(n: int) -> dict[str, object]:
    # No "direction": the column's own default ("in") is taken, as SQLAlchemy takes it.
    return {
        "connection": "analyser-1",
        "instrument": "chem-1",
        "received_at": AT,
        "last_received_at": AT,
        "data": bytes([n, 0, 255]),
        "sha256": f"digest-{n}",
        "size": 3,
        "duplicate": n % 2 == 1,
        "outcome": "message",
    }


def _message_row(n: int) -> dict[str, object]:
    return {
        "instrument": "chem-1",
        "connection": "analyser-1",
        "content_sha256": f"content-{n}",
        "record_count": 4,
        "text": f"H|\\^&\rL|{n}",
        "received_at": AT,
    }


def test_rows_are_what_sqlalchemy_stores(store: Store) -> None:
    inserting = Direct(raw_transmissions.insert().returning(raw_transmissions.c.id))
    with store.engine.begin() as conn:
        direct_id = inserting.scalar(conn, _raw_row(1))
        core_id = conn.execute(
            raw_transmissions.insert().returning(raw_transmissions.c.id), _raw_row(1)
        ).scalar_one()
    assert direct_id != core_id
    with store.engine.connect() as conn:
        # Compared as stored, in the database's own form, and as SQLAlchemy reads them.
        stored = conn.execute(
            text(
                "SELECT direction, received_at, data, duplicate FROM raw_transmissions"
                " WHERE id IN (:a, :b) ORDER BY id"
            ),
            {"a": direct_id, "b": core_id},
        ).all()
        read = conn.execute(
            select(raw_transmissions).where(raw_transmissions.c.id.in_([direct_id, core_id]))
        ).all()
    assert stored[0] == stored[1]
    assert stored[0][0] == "in"
    first, second = (dict(row._mapping) for row in read)
    assert {k: v for k, v in first.items() if k != "id"} == {
        k: v for k, v in second.items() if k != "id"
    }
    assert first["duplicate"] is True
    assert first["data"] == bytes([1, 0, 255])
    assert first["received_at"].replace(tzinfo=UTC) == AT


def test_work_belongs_to_the_callers_transaction(store: Store) -> None:
    inserting = Direct(messages.insert().returning(messages.c.id))

    class Abandoned(Exception):
        pass

    with pytest.raises(Abandoned), store.engine.begin() as conn:
        inserting.scalar(conn, _message_row(1))
        raise Abandoned
    with store.engine.connect() as conn:
        assert conn.execute(select(messages.c.id)).all() == []


def test_lists_of_any_length_take_a_bounded_number_of_forms(store: Store) -> None:
    inserting = Direct(messages.insert().returning(messages.c.id))
    settling = Direct(
        messages.update()
        .where(messages.c.id.in_(bindparam("ids", expanding=True)))
        .values(settled_at=bindparam("at"))
    )
    with store.engine.begin() as conn:
        ids = [inserting.scalar(conn, _message_row(n)) for n in range(40)]
        for length in range(1, 34):
            # Each length settles exactly the messages it names, padded or not.
            settling.execute(conn, {"ids": ids[:length], "at": AT})
            settled = conn.execute(
                select(messages.c.id).where(messages.c.settled_at.is_not(None))
            ).scalars()
            assert sorted(settled) == ids[:length]
            conn.execute(messages.update().values(settled_at=None))
    # Lengths 1 to 33 in seven forms: 1, 2, 4, 8, 16, 32 and 64.
    assert len(settling._forms) == 7


def test_a_value_written_into_the_statement_is_passed(store: Store) -> None:
    latest = Direct(
        select(messages.c.id)
        .where(messages.c.instrument == bindparam("instrument"))
        .order_by(messages.c.id.desc())
        .limit(1)
    )
    inserting = Direct(messages.insert().returning(messages.c.id))
    with store.engine.begin() as conn:
        ids = [inserting.scalar(conn, _message_row(n)) for n in range(3)]
        assert latest.execute(conn, {"instrument": "chem-1"}).fetchall() == [(ids[-1],)]
        assert latest.execute(conn, {"instrument": "chem-2"}).fetchall() == []


def test_an_upsert_is_written_for_each_database(store: Store) -> None:
    adding = Direct(lambda database: new_only(database, specimens, "specimen_id"))
    row = {"specimen_id": "S1", "patient_id": "P1", "first_message_id": None}
    with store.engine.begin() as conn:
        message_id = Direct(messages.insert().returning(messages.c.id)).scalar(
            conn, _message_row(1)
        )
        row["first_message_id"] = message_id
        adding.executemany(conn, [row, {**row, "patient_id": "P2"}])
        adding.executemany(conn, [row])
        kept = conn.execute(select(specimens.c.specimen_id, specimens.c.patient_id)).all()
    assert kept == [("S1", "P1")]


def test_a_refused_statement_fails_as_sqlalchemys_and_keeps_nothing(store: Store) -> None:
    holding = Direct(open_holds.insert())
    row = {"result_id": 999_999, "instrument": "chem-1", "test_code": "K", "held_since": AT}
    with pytest.raises(exc.IntegrityError) as raised, store.engine.begin() as conn:
        holding.executemany(conn, [row])
    assert "open_holds" in str(raised.value)
    with store.engine.connect() as conn:
        assert conn.execute(select(open_holds.c.result_id)).all() == []


def test_no_row_where_one_is_expected_is_an_error(store: Store) -> None:
    finding = Direct(select(messages.c.id).where(messages.c.id == bindparam("id")))
    with pytest.raises(exc.NoResultFound), store.engine.connect() as conn:
        finding.scalar(conn, {"id": 1})


def test_a_lost_postgresql_connection_is_invalidated(migrated: dict[str, str]) -> None:
    # A server connection to lose is PostgreSQL's: its backend is terminated mid-work.
    with fresh_postgres_database(migrated.get("postgresql")) as url:
        _lose_the_connection(Store(url))


def _lose_the_connection(store: Store) -> None:
    try:
        inserting = Direct(messages.insert().returning(messages.c.id))
        with store.engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with store.engine.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid)})")
                other.commit()
            with pytest.raises(exc.DBAPIError) as raised:
                inserting.scalar(conn, _message_row(1))
            assert conn.invalidated
        assert raised.value.connection_invalidated
        # The pool then hands out a working connection.
        with store.engine.begin() as conn:
            assert inserting.scalar(conn, _message_row(2)) >= 1
    finally:
        store.close()


def test_rows_read_as_sqlalchemy_reads_them(store: Store) -> None:
    inserting = Direct(raw_transmissions.insert().returning(raw_transmissions.c.id))
    query = select(raw_transmissions).where(
        raw_transmissions.c.id.in_(bindparam("ids", expanding=True))
    )
    with store.engine.begin() as conn:
        ids = [inserting.scalar(conn, _raw_row(n)) for n in (1, 2, 3)]
        direct = Direct(query).rows(conn, {"ids": ids[:2]})
        core = conn.execute(query, {"ids": ids[:2]}).all()
    assert [tuple(row) for row in direct] == [tuple(row) for row in core]
    assert [row._mapping for row in direct] == [dict(row._mapping) for row in core]
    assert [row.duplicate for row in direct] == [True, False]
    assert isinstance(direct[0].received_at, datetime)


def test_numbers_read_as_sqlalchemy_reads_them(store: Store) -> None:
    """PostgreSQL's driver says each column's type; SQLite keeps NUMERIC as a float."""
    query = select(results.c.id, results.c.value_number, results.c.completed_at).where(
        results.c.id.in_(bindparam("ids", expanding=True))
    )
    with store.engine.begin() as conn:
        message_id = Direct(messages.insert().returning(messages.c.id)).scalar(
            conn, _message_row(1)
        )
        adding = Direct(results.insert().returning(results.c.id))
        ids = [
            adding.scalar(
                conn,
                {
                    "message_id": message_id,
                    "test_code": "K",
                    "value_text": text_value,
                    "value_number": number,
                    "completed_at": AT,
                    "stored_at": AT,
                },
            )
            for text_value, number in (("4.25", Decimal("4.25")), ("pos", None))
        ]
        direct = Direct(query).rows(conn, {"ids": ids})
        core = conn.execute(query, {"ids": ids}).all()
    assert [tuple(row) for row in direct] == [tuple(row) for row in core]
    assert direct[0].value_number == Decimal("4.25")
    assert direct[1].value_number is None


def test_a_select_written_as_text_reads_as_sqlalchemy_reads_it(store: Store) -> None:
    """The history lookups are SQL text with their columns' types named: times come back
    as datetimes on SQLite and numbers as Decimal on both databases."""
    query = text(
        "SELECT * FROM (SELECT id, value_number, completed_at FROM results "
        "WHERE test_code = :t0 ORDER BY id DESC LIMIT :k0) AS latest"
    ).columns(results.c.id, results.c.value_number, results.c.completed_at)
    with store.engine.begin() as conn:
        message_id = Direct(messages.insert().returning(messages.c.id)).scalar(
            conn, _message_row(1)
        )
        adding = Direct(results.insert())
        for n in range(3):
            adding.execute(
                conn,
                {"message_id": message_id, "test_code": "K", "value_text": f"4.{n}",
                 "value_number": Decimal(f"4.{n}"), "completed_at": AT, "stored_at": AT},
            )  # fmt: skip
        direct = Direct(query).rows(conn, {"t0": "K", "k0": 2})
        core = conn.execute(query, {"t0": "K", "k0": 2}).all()
    assert [tuple(row) for row in direct] == [tuple(row) for row in core]
    assert [row.value_number for row in direct] == [Decimal("4.2"), Decimal("4.1")]
    assert isinstance(direct[0].completed_at, datetime)  # not SQLite's text
