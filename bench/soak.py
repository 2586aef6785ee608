"""Soak: analysers sending at a steady rate through the daemon to the LIS for half an
hour, to show that memory and latency stay flat while the history grows.

    .venv/bin/python bench/soak.py [--minutes 30] [--analysers 10] [--rate 100]
        [--only sqlite|postgresql] [--window 60]

What runs is bench/e2e.py's run, paced: the real daemon as its own process with the
rules of ``rules/``, the LIS simulator answering AA, ``--analysers`` simulated analysers
over TCP sending together ``--rate`` results/s (a control of every level after every 20
patient samples, 30 % repeat patients), sized so that the stream lasts ``--minutes``.
Every 5 s the daemon's RSS, open file descriptors and CPU time are read from ``/proc``.
After the stream, every result is accounted for as in bench/e2e.py (delivered, held,
none duplicated) and the run is cut in windows of ``--window`` seconds (by when each
message's last frame was written):

- RSS at the end of the window, file descriptors, the daemon's CPU share;
- the ACK of a message's last frame, as the analyser saw it, p50 / p99;
- last frame to the LIS's ACK for messages released on arrival, p50 / p99.

Flat means: after the first ``WARM_UP`` windows (imports, caches, SQLite's page cache
filling), the RSS of the last windows is within ``RSS_GROWTH`` of the first ones, and
their latencies' p99 within ``LATENCY_GROWTH``, both printed with the verdict. SQLite by
default (the daemon's default database); PostgreSQL from ``--postgres`` or
MIDDLEWARE_TEST_POSTGRES_URL with ``--only postgresql`` or ``--both``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import secrets
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from e2e import (  # noqa: E402
    QC_EVERY,
    REPEAT_PATIENTS,
    Traffic,
    everyone,
    outcome,
    paces,
    settle,
    start_lis,
)
from ingest import (  # noqa: E402
    cpu_seconds,
    drop_postgres,
    memory_mb,
    ms,
    percentile,
    postgres_database,
    start_daemon,
)
from ingest_mix import Kind, Patients, Plan, Stream, load, plans  # noqa: E402

from middleware.engine.rules import Rules, load_rules  # noqa: E402
from simulators.ports import free_port  # noqa: E402

#: Seconds between two readings of the daemon's memory and CPU.
SAMPLE_SECONDS = 5.0
#: Windows left out of the comparison at the start.
WARM_UP = 3
#: Windows compared at each end of the run (after the warm-up, and the last ones).
COMPARED = 5
#: Flat memory: the last windows' mean RSS at most this much above the first ones'.
RSS_GROWTH = 0.10
#: Flat latency: the last windows' p99 at most this many times the first ones'.
LATENCY_GROWTH = 1.5


@dataclass(frozen=True, slots=True)
class Reading:
    at: float
    rss_mb: float
    fds: int
    cpu: float


def samples_each(analysers: list[Plan], rate: float, seconds: float) -> int:
    """Patient samples per analyser so that, paced at ``rate`` results/s in all, the
    stream lasts about ``seconds`` (each sample brings its tests, each 20 a control of
    every level)."""
    per_sample = sum(len(p.panel) * (1 + len(p.kind.controls) / QC_EVERY) for p in analysers) / len(
        analysers
    )
    return max(QC_EVERY, math.ceil(rate * seconds / per_sample / len(analysers)))


async def sample_daemon(daemon: int, readings: list[Reading], done: asyncio.Event) -> None:
    while not done.is_set():
        readings.append(
            Reading(
                time.time(),
                memory_mb(daemon, "VmRSS"),
                len(os.listdir(f"/proc/{daemon}/fd")),
                cpu_seconds(daemon),
            )
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SAMPLE_SECONDS)


async def stream_and_sample(
    ports: list[int],
    streams: list[Stream],
    each: int,
    pace: list[float | None],
    traffic: Traffic,
    daemon: int,
    lis: int,
    readings: list[Reading],
) -> None:
    done = asyncio.Event()
    sampler = asyncio.create_task(sample_daemon(daemon, readings, done))
    try:
        await everyone(ports, streams, each, pace, traffic, daemon, lis)
    finally:
        done.set()
        await sampler


@dataclass(frozen=True, slots=True)
class Window:
    start: float
    rss_mb: float
    fds: int
    cpu_share: float
    messages: int
    ack: list[float]
    to_lis: list[float]


def windows(
    traffic: Traffic,
    readings: list[Reading],
    on_arrival: list[tuple[float, float]],
    width: float,
) -> list[Window]:
    start = traffic.first_enq
    # Whole windows only: the stream's last seconds go into the last one.
    count = max(1, int((max(traffic.last_frame_at.values()) - start) / width))
    acks: list[list[float]] = [[] for _ in range(count)]
    for specimen, written in traffic.last_frame_at.items():
        acks[min(count - 1, int((written - start) / width))].append(
            traffic.acked_at[specimen] - written
        )
    lis: list[list[float]] = [[] for _ in range(count)]
    for written, latency in on_arrival:
        lis[min(count - 1, max(0, int((written - start) / width)))].append(latency)
    out = []
    for n in range(count):
        begin, end = start + n * width, start + (n + 1) * width
        inside = [r for r in readings if begin <= r.at < end] or readings[-1:]
        first, last = inside[0], inside[-1]
        share = (last.cpu - first.cpu) / (last.at - first.at) if last.at > first.at else 0.0
        out.append(Window(begin, last.rss_mb, last.fds, share, len(acks[n]), acks[n], lis[n]))
    return out


def verdicts(rows: list[Window]) -> list[str]:
    if len(rows) < WARM_UP + 2 * COMPARED:
        return [
            f"too short to judge: {len(rows)} windows, {WARM_UP + 2 * COMPARED} needed "
            f"({WARM_UP} of warm-up, {COMPARED} at each end)"
        ]
    early, late = rows[WARM_UP : WARM_UP + COMPARED], rows[-COMPARED:]
    out = []
    rss_early = statistics.fmean(w.rss_mb for w in early)
    rss_late = statistics.fmean(w.rss_mb for w in late)
    growth = rss_late / rss_early - 1
    out.append(
        f"memory: RSS {rss_early:.1f} MB in windows {WARM_UP + 1}-{WARM_UP + COMPARED}, "
        f"{rss_late:.1f} MB in the last {COMPARED} ({growth:+.1%}; flat if under "
        f"{RSS_GROWTH:+.0%}): {'flat' if growth < RSS_GROWTH else 'NOT flat'}"
    )
    for name, pick in (("analyser ACK", "ack"), ("to the LIS", "to_lis")):
        before = [v for w in early for v in getattr(w, pick)]
        after = [v for w in late for v in getattr(w, pick)]
        p99_before, p99_after = percentile(before, 0.99), percentile(after, 0.99)
        ratio = p99_after / p99_before if p99_before > 0 else math.nan
        out.append(
            f"latency {name}: p99 {ms(p99_before)} ms early, {ms(p99_after)} ms late "
            f"(x{ratio:.2f}; flat if under x{LATENCY_GROWTH:g}): "
            f"{'flat' if ratio < LATENCY_GROWTH else 'NOT flat'}"
        )
    return out


def soak(
    database: str,
    url: str,
    workdir: Path,
    args: argparse.Namespace,
    rules: Rules,
    kinds: dict[str, Kind],
) -> bool:
    analysers = plans(kinds, args.analysers, 10)
    each = samples_each(analysers, args.rate, args.minutes * 60)
    patients = Patients(kinds, REPEAT_PATIENTS)
    tag = secrets.token_hex(2).upper()
    streams = [
        Stream(p, patients, random.Random(f"{tag}/{p.index}"), f"S{tag}{p.index:03d}-", QC_EVERY)
        for p in analysers
    ]
    print(
        f"{database}: {args.analysers} analysers, {each:,} patient samples each, "
        f"{args.rate:g} results/s in all, about {args.minutes:g} minutes",
        flush=True,
    )
    traffic = Traffic(args.analysers)
    pace = paces(analysers, each, args.rate)
    readings: list[Reading] = []
    lis, lis_port, record = start_lis(workdir)
    try:
        ports = [free_port() for _ in analysers]
        lis_section = {"lis": {"host": "127.0.0.1", "port": lis_port}}
        daemon, started_s = start_daemon(
            workdir, analysers, ports, url, args.rules, sections=lis_section
        )
        try:
            asyncio.run(
                stream_and_sample(
                    ports, streams, each, pace, traffic, daemon.pid, lis.pid, readings
                )
            )
            _, pending = settle(url, daemon.pid, 120)
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    finally:
        lis.send_signal(signal.SIGTERM)
        lis.wait(30)
    got = outcome(url, record, traffic, rules)
    rows = windows(
        traffic,
        readings,
        list(zip(got.on_arrival_sent, got.on_arrival, strict=True)),
        args.window,
    )
    unaccounted = traffic.patient_results - got.delivered - got.held
    print(
        f"  start-up {started_s:.2f} s; sent {traffic.patient_messages + traffic.qc_messages:,}"
        f" messages: {traffic.patient_results:,} patient + {traffic.control_results:,} "
        f"control results in {traffic.last_ack - traffic.first_enq:.0f} s; stored "
        f"{got.stored_patient:,} + {got.stored_control:,}; delivered {got.delivered:,}, held "
        f"{got.held:,}, duplicated {got.duplicated}, unaccounted {unaccounted}"
        + (f", {pending} still pending" if pending else "")
    )
    print(
        "| window | min | messages | RSS MB | fds | daemon CPU | analyser ACK p50 / p99 ms "
        "| to the LIS p50 / p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for n, w in enumerate(rows, 1):
        print(
            f"| {n} | {(w.start - traffic.first_enq) / 60:.1f} | {w.messages:,} | "
            f"{w.rss_mb:.1f} | {w.fds} | {w.cpu_share:.0%} | {ms(percentile(w.ack, 0.5))} / "
            f"{ms(percentile(w.ack, 0.99))} | {ms(percentile(w.to_lis, 0.5))} / "
            f"{ms(percentile(w.to_lis, 0.99))} |"
        )
    judged = verdicts(rows)
    print("\n".join("  " + line for line in judged))
    whole = unaccounted == 0 and got.duplicated == 0 and not pending
    print(f"  every result accounted for: {'yes' if whole else 'NO'}")
    return whole and all("NOT" not in line and "too short" not in line for line in judged)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--analysers", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0, help="results/s in all")
    parser.add_argument("--window", type=float, default=60.0, help="seconds per window")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL"),
        help="server for the PostgreSQL run (a throwaway database is made on it)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only", choices=("sqlite", "postgresql"), default="sqlite")
    which.add_argument("--both", action="store_true", help="SQLite, then PostgreSQL")
    parser.add_argument("--rules", type=Path, default=ROOT / "rules")
    args = parser.parse_args()
    rules, kinds = load_rules(args.rules), load(args.rules)
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}; rules from {args.rules}; windows of {args.window:g} s"
    )
    passed = True
    for database in ("sqlite", "postgresql") if args.both else (args.only,):
        with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
            workdir = Path(tmp)
            if database == "sqlite":
                url = f"sqlite:///{workdir / 'middleware.db'}"
                passed &= soak(database, url, workdir, args, rules, kinds)
                continue
            if not args.postgres:
                print("postgresql skipped: give --postgres URL or MIDDLEWARE_TEST_POSTGRES_URL")
                passed = False
                continue
            url, name = postgres_database(args.postgres)
            try:
                passed &= soak(database, url, workdir, args, rules, kinds)
            finally:
                drop_postgres(args.postgres, name)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
