"""Delivering the outbox to a LIS that answers at once: messages/s and results/s, and the
round trip of each message (send to answer) as the sender sees it.

    .venv/bin/python bench/delivery.py [--messages 2000] [--results 10] [--url URL]

The outbox is filled first with ``--messages`` ORU^R01 of ``--results`` results each
(distinct specimens); then the daemon's sender (``middleware/delivery.py``) delivers them
to a LIS peer on loopback that answers AA to each, in this process. SQLite by default.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Connection, select  # noqa: E402

from middleware.delivery import LisSender  # noqa: E402
from middleware.domain import Measurement, Result  # noqa: E402
from middleware.hl7.results import Reported, new_control_id, oru_r01  # noqa: E402
from middleware.settings import LisConfig  # noqa: E402
from middleware.store import Store, outbox  # noqa: E402
from middleware.store.schema import outbox_log  # noqa: E402
from tests.lis_peer import LisPeer  # noqa: E402

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def fill(conn: Connection, messages: int, results: int) -> None:
    for n in range(messages):
        reported = [
            Reported(
                Result(
                    specimen_id=f"S{n}",
                    test_code=f"T{i}",
                    instrument_test_code=f"T{i}",
                    value=Measurement.parse("5.2"),
                    units="mmol/L",
                    completed_at=AT,
                    instrument="chem-1",
                )
            )
            for i in range(results)
        ]
        control_id = new_control_id()
        message = oru_r01(control_id, AT, f"S{n}", None, reported)
        outbox.enqueue(conn, f"S{n}", "chem-1", control_id, message, AT)


async def deliver(store: Store, messages: int) -> float:
    lis = LisPeer()
    port = await lis.start()
    sender = LisSender(LisConfig(host="127.0.0.1", port=port, ack_timeout=10), store, "bench")
    task = asyncio.create_task(sender.run())
    started = time.perf_counter()
    await lis.wait_for(messages, timeout=3600)
    while store.read(outbox.depth):
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await lis.stop()
    return elapsed


def round_trips(store: Store) -> list[float]:
    rows = store.read(
        lambda conn: conn.execute(
            select(outbox_log.c.outbox_id, outbox_log.c.event, outbox_log.c.at).order_by(
                outbox_log.c.id
            )
        ).all()
    )
    sent: dict[int, datetime] = {}
    out = []
    for entry, event, at in rows:
        if event == "sent":
            sent[entry] = at
        elif event == "answered" and entry in sent:
            out.append((at - sent[entry]).total_seconds() * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--results", type=int, default=10)
    parser.add_argument("--url")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.url or f"sqlite:///{Path(tmp) / 'delivery.db'}")
        try:
            with store.engine.begin() as conn:
                fill(conn, args.messages, args.results)
            elapsed = asyncio.run(deliver(store, args.messages))
            trips = sorted(round_trips(store))
        finally:
            store.close()
    p99 = trips[min(len(trips) - 1, int(len(trips) * 0.99))]
    print(
        f"{args.messages:,} messages of {args.results} results delivered in {elapsed:.2f} s: "
        f"{args.messages / elapsed:,.0f} messages/s, {args.messages * args.results / elapsed:,.0f}"
        f" results/s; send to answer p50 {statistics.median(trips):.1f} ms, p99 {p99:.1f} ms"
    )


if __name__ == "__main__":
    main()
