"""Records in a store as the daemon keeps them, at chosen times: for the tests of
backups, archives and retention."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import Connection, text

import drivers
from middleware.assessment import assess_message
from middleware.astm.records import decode_message
from middleware.engine.engine import Engine
from middleware.engine.rules import load_rules
from middleware.hl7.results import Sender
from middleware.store import Store, audit
from middleware.store.ingest import Delivery, store_delivery
from tests.conftest import ROOT
from tests.messages import patient, qc

ENGINE = Engine(load_rules(ROOT / "rules"))


def store_message(
    store: Store, lines: list[bytes], now: datetime, instrument: str = "chem-1"
) -> None:
    """One analyser message stored and decided at ``now``, as the pipeline does, with the
    released results queued for a LIS."""

    def work(conn: Connection) -> None:
        records = [line.decode() for line in lines]
        reading = drivers.get("generic", None, instrument).read(decode_message(records).records)
        reading = reading.in_timezone(UTC)
        text_ = "\r".join(records)
        delivery = Delivery(
            f"{instrument}/c", instrument, text_.encode(), now, text_, len(records), reading
        )
        assess_message(conn, ENGINE, store_delivery(conn, delivery, now), reading, now, Sender())

    async def run() -> None:
        await store.write(work)

    asyncio.run(run())


def store_month(store: Store, start: datetime, tag: str, level_1: str = "5.2") -> None:
    """A day of a month's work from ``start``: QC in control (``level_1`` tells one
    month's QC message from another's), two patients released (one of whose messages to
    the LIS is delivered), a rules change audited."""
    store_message(store, qc(level_1, "15.6"), start)
    store_message(store, patient(f"{tag}-1", "5.0"), start + timedelta(minutes=1))
    store_message(store, patient(f"{tag}-2", "5.1"), start + timedelta(minutes=2))

    def deliver_first_and_audit(conn: Connection) -> None:
        first = conn.execute(
            text("SELECT min(id) FROM outbox WHERE specimen_id = :s"), {"s": f"{tag}-1"}
        ).scalar_one()
        answered = start + timedelta(minutes=3)
        conn.execute(
            text("UPDATE outbox SET state = 'delivered', answered_at = :at WHERE id = :id"),
            {"at": answered, "id": first},
        )
        conn.execute(
            text(
                "INSERT INTO outbox_log (outbox_id, at, event, data, detail) "
                "VALUES (:id, :at, 'answered', 'MSA|AA', '')"
            ),
            {"id": first, "at": answered},
        )
        audit.audit(conn, start + timedelta(minutes=4), "lab-it", "rules.reload", "qc.yaml")

    asyncio.run(_write(store, deliver_first_and_audit))


async def _write(store: Store, work: Any) -> None:
    await store.write(work)


def count(url_or_store: Store, sql: str, **params: Any) -> int:
    return int(url_or_store.read(lambda conn: conn.execute(text(sql), params).scalar_one()))


def write_config(tmp_path: Path, database_url: str, **settings: Any) -> Path:
    """A daemon configuration naming ``database_url``, its state in ``tmp_path/state``."""
    config = tmp_path / "middleware.yaml"
    body = {"state_dir": str(tmp_path / "state"), "database_url": database_url, **settings}
    config.write_text(yaml.safe_dump(body))
    return config
