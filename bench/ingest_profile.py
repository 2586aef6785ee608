"""The daemon as ``python -m middleware run`` starts it, measured from inside, for
bench/ingest.py --profile and --timing.

    python bench/ingest_profile.py PREFIX cprofile|timing|collections run --config daemon.yaml

``cprofile``: one profile for the main thread (the event loop: links, pipelines,
decoding, drivers) and one for the store writer's thread (every transaction: the SQL, the
rules engine, the QC state), written as ``PREFIX.loop`` and ``PREFIX.writer``. Each counts
its own thread's CPU time: the two threads take turns at the interpreter lock, and a
wall-clock profile gave a statement the time its thread waited for the lock after the
database call (sqlite3's execute looked ten times slower in the daemon than alone).
cProfile slows Python code down: the profiled run's throughput is not a figure to quote,
only where the time goes.

``timing``: no profiler; the writer thread's time to store each message
(``store_delivery``) and to apply the engine to it (``assess_message``), by kind of
message (patient or QC), elapsed and in the thread's CPU (the first includes the waits
for the interpreter lock the event loop holds), and each transaction's duration (the
work of its batch and the commit) and size, and every SQL statement slower than 50 ms,
written to ``PREFIX.timing.json`` when the daemon stops.

``collections``: no profiler; each run of the garbage collector (when, which generation,
how long it stopped both threads, how many objects start-up had set aside), written to
``PREFIX.collections.json`` when the daemon stops.
"""

from __future__ import annotations

import cProfile
import gc
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from statement_timing import time_statements

from middleware import pipeline
from middleware.cli import main
from middleware.store.writer import StoreWriter

#: Statements slower than this are listed, with their SQL.
SLOW_STATEMENT = 0.05


def with_cprofile(prefix: str, argv: list[str]) -> int:
    unprofiled = StoreWriter._run

    def run(self: StoreWriter) -> None:
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        try:
            unprofiled(self)
        finally:
            profile.disable()
            profile.dump_stats(prefix + ".writer")

    setattr(StoreWriter, "_run", run)  # noqa: B010
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    try:
        return int(main(argv))
    finally:
        profile.disable()
        profile.dump_stats(prefix + ".loop")


def with_timing(prefix: str, argv: list[str]) -> int:
    times: dict[str, list[float]] = {}

    def timed(what: str, function: Callable[..., Any], reading: Callable[..., Any]) -> Any:
        def call(*args: Any) -> Any:
            started, cpu = time.perf_counter(), time.thread_time()
            try:
                return function(*args)
            finally:
                found = reading(*args)
                kind = "qc" if found is not None and found.controls else "patient"
                times.setdefault(f"{kind} {what}", []).append(time.perf_counter() - started)
                times.setdefault(f"{kind} {what} cpu", []).append(time.thread_time() - cpu)

        return call

    pipeline.store_delivery = timed(
        "store", pipeline.store_delivery, lambda _conn, delivery, *_: delivery.reading
    )
    pipeline.assess_message = timed(
        "engine", pipeline.assess_message, lambda _conn, _engine, _stored, reading, *_: reading
    )
    uncommitted = StoreWriter._commit

    def commit(self: StoreWriter, batch: list[Any]) -> None:
        started = time.perf_counter()
        try:
            uncommitted(self, batch)
        finally:
            times.setdefault("transaction", []).append(time.perf_counter() - started)
            times.setdefault("batch", []).append(len(batch))

    setattr(StoreWriter, "_commit", commit)  # noqa: B010
    slow: list[tuple[float, str]] = []

    def told(statement: str, elapsed: float) -> None:
        if elapsed > SLOW_STATEMENT:
            slow.append((elapsed, " ".join(statement.split())[:400]))

    time_statements(told)

    try:
        return int(main(argv))
    finally:
        Path(prefix + ".timing.json").write_text(json.dumps(times | {"slow": slow}))


def with_collections(prefix: str, argv: list[str]) -> int:
    started = time.perf_counter()
    began: list[float] = []
    seen: list[dict[str, Any]] = []

    def collecting(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            seen.append(
                {
                    "at": began[-1] - started,
                    "generation": info["generation"],
                    "ms": 1000 * (time.perf_counter() - began.pop()),
                    "set_aside": gc.get_freeze_count(),
                }
            )

    gc.callbacks.append(collecting)
    try:
        return int(main(argv))
    finally:
        Path(prefix + ".collections.json").write_text(json.dumps(seen))


MODES = {"cprofile": with_cprofile, "timing": with_timing, "collections": with_collections}

if __name__ == "__main__":
    prefix, mode, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    raise SystemExit(MODES[mode](prefix, argv))
