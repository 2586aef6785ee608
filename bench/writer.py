"""The store writer's path alone: the ingest bench's mix stored and decided in one
process, without links, sockets or the event loop, with the time each SQL statement took.

It says what the writer thread could do if it had the interpreter to itself, and how much
of that is the database's own work: the difference to bench/ingest.py's figures is what
the event loop (links, decoding, drivers) takes from the same core.

    .venv/bin/python bench/writer.py [--url sqlite:///PATH | postgresql://...]
        [--analysers 10] [--messages 100] [--batch 8]

Messages are read by the drivers first (not timed), controls recognised by their lot as
the ingest bench configures them; then each is stored and decided
(``store_delivery`` and ``assess_message``) through the daemon's store writer, ``--batch``
messages waiting at a time, as ten analysers keep it busy.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest_mix import Patients, Stream, control_pattern, load, plans, utcnow  # noqa: E402
from sqlalchemy import Connection  # noqa: E402
from statement_timing import time_statements  # noqa: E402

import drivers  # noqa: E402
from middleware.assessment import assess_message  # noqa: E402
from middleware.astm.records import decode_message  # noqa: E402
from middleware.domain import InstrumentMessage  # noqa: E402
from middleware.engine.engine import Engine  # noqa: E402
from middleware.engine.rules import load_rules  # noqa: E402
from middleware.store import Store  # noqa: E402
from middleware.store.ingest import Delivery, store_delivery  # noqa: E402


def messages(analysers: int, samples: int) -> list[tuple[str, list[str], InstrumentMessage]]:
    kinds = load(ROOT / "rules")
    patients = Patients(kinds, 0.3)
    out = []
    for i, plan in enumerate(plans(kinds, analysers, 10)):
        stream = Stream(plan, patients, random.Random(i), f"W{i:02d}-")
        options = drivers.DriverOptions(control_pattern=control_pattern(plan))
        driver = drivers.get("generic", options, plan.name)
        for sample in stream.sequence(samples, utcnow):
            records = sample.records()
            reading = driver.read(decode_message(records).records).in_timezone(UTC)
            out.append((plan.name, records, reading))
    random.Random(3).shuffle(out)
    return out


def unit(
    engine: Engine, instrument: str, records: list[str], reading: InstrumentMessage
) -> Callable[[Connection], None]:
    def work(conn: Connection) -> None:
        now = datetime.now(UTC)
        text = "\r".join(records)
        delivery = Delivery("bench", instrument, text.encode(), now, text, len(records), reading)
        stored = store_delivery(conn, delivery, now)
        assess_message(conn, engine, stored, reading, now)

    return work


async def run(store: Store, engine: Engine, todo: list[Any], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(todo), batch):
        await asyncio.gather(
            *(store.write_soon(unit(engine, *item)) for item in todo[i : i + batch])
        )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url")
    parser.add_argument("--analysers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    todo = messages(args.analysers, args.messages)
    results = sum(len(r.results) + len(r.controls) for _, _, r in todo)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(args.url or f"sqlite:///{Path(tmp) / 'writer.db'}")
        timings: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

        def told(statement: str, elapsed: float) -> None:
            spent = timings[" ".join(statement.split())[:90]]
            spent[0] += 1
            spent[1] += elapsed

        time_statements(told)

        cpu = time.process_time()
        try:
            elapsed = asyncio.run(run(store, Engine(load_rules(ROOT / "rules")), todo, args.batch))
        finally:
            store.close()
        cpu = time.process_time() - cpu
    sql = sum(seconds for _, seconds in timings.values())
    print(
        f"{len(todo):,} messages, {results:,} results in {elapsed:.2f} s: "
        f"{results / elapsed:,.0f} results/s; CPU {cpu:.2f} s; in SQL statements "
        f"(the database's own work and the driver's) {sql:.2f} s, {100 * sql / elapsed:.0f} %"
    )
    for statement, (count, seconds) in sorted(timings.items(), key=lambda kv: -kv[1][1])[:10]:
        print(
            f"  {seconds * 1000:7.0f} ms {count:6,} x {seconds / count * 1e6:5.0f} us  {statement}"
        )


if __name__ == "__main__":
    main()
