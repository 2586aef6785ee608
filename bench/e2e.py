"""End to end: N analysers over TCP through the daemon, with the laboratory's rules, to
the LIS, which answers every result message AA; SQLite (durable) then PostgreSQL.

What runs. The real daemon as its own process (bench/ingest.py's ``start_daemon``), one
``tcp-server`` instrument per analyser, ``rules_dir`` the rules (``rules/`` unless
``--rules``), ``lis:`` the LIS simulator (``python -m simulators lis``), also a process of
its own with its own event loop, recording every message it gets. The analysers run in
this process, one connection each, with bench/ingest_mix.py's mix: a control of every
level before the first patient, after every 20 patient samples and at the end; 30 %
repeat patients (delta checks); controls in control. Every analyser connects before any
of them sends its first ENQ. A run sends ``--samples`` patient samples in all, split
evenly across the analysers, at least 5 each (with 200 analysers, 10 each: a QC before
and after them, no QC in between), so each N sends about the same number of results.
Unpaced by default: each analyser sends its next message as soon as the last is
acknowledged; ``--rate R`` paces them so that together they send about R results/s
(controls included), each a share in proportion to its run's results (a chemistry sample
has 10 tests, an immunoassay one 2), so that they all finish together. SQLite is the
daemon's default: WAL, ``synchronous=FULL``, so each commit is on disk before the
analyser's ACK. Each (database, N) gets a new database.

How it is measured, from the peers' sides:

- For each patient message, the wall-clock time (``time.time()``) its last frame was
  written; specimen ids are unique per run. Latency of a message to the LIS = the
  outbox's ``answered_at`` (when the daemon's sender read the LIS's ACK; it records it
  with the next batch's claim) minus that time, for the specimen of the message. For
  messages released on arrival it is split in three: last frame to the analyser's ACK
  (stored and decided, committed), ACK to the outbox's ``last_sent_at`` (waiting for the
  sender to claim it: a batch is claimed and logged sent in one transaction), claimed to
  ``answered_at`` (the batch's messages before it, then the LIS).
- Waited for QC or released on arrival: from the store's decisions. A message whose
  results' first decision was a hold, and that later went to the LIS, was released by a
  later decision; with no person at work, only a QC does that (the shipped rules hold K
  and NA for the QC that closes their run, ``awaiting-closing-qc``). Every other
  delivered message was released by the decision made when its results arrived. The
  rules model (``load_rules``) then says how many results of a bracketed test still went
  on arrival (a QC received in the second the sample's R.13 names counts as closing it,
  see docs/performance.md).
- After the last analyser's EOT, the bench reads the database until the outbox has no
  pending entry and nothing (entries, outbox log, decisions) has changed for a second
  (``--timeout`` seconds at most). Then: results sent (patient and control, as the
  analysers sent them), delivered (the LIS simulator's record: distinct specimen and
  test among messages answered AA), held (``open_holds``), duplicated (one specimen and
  test under two control ids: must be 0), resent (one control id recorded twice).
  Controls are not sent to the LIS.
- Results/s sustained: patient and control results sent over the time from the first ENQ
  to the last LIS ACK (latest ``answered_at``); ingest: the same results up to the last
  ACK an analyser got. CPU per 1,000 results: the daemon's user and system time from the
  moment all analysers are connected to the last change of the outbox. Peak RSS: the
  daemon's VmHWM once the outbox is quiet; its RSS (VmRSS) is also read at the moment
  the last analyser connects and sampled while all of them stay connected, with its
  file descriptors and the limit.

    .venv/bin/python bench/e2e.py [--analysers 1,10,50,200] [--samples 2000] [--results 10]
        [--rate R] [--postgres postgresql://postgres@127.0.0.1:5432/test]
        [--only sqlite|postgresql] [--rules rules/] [--timeout 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy import text as sql_text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]

from ingest import (  # noqa: E402
    _level,
    cpu_seconds,
    drop_postgres,
    memory_mb,
    ms,
    peak_rss_mb,
    percentile,
    postgres_database,
    print_profile,
    start_daemon,
)
from ingest_mix import ACK, ENQ, EOT, Kind, Patients, Plan, Stream, frames, load, plans, utcnow  # noqa: E402

from middleware.engine.rules import Rules, load_rules  # noqa: E402
from middleware.store.database import open_engine  # noqa: E402
from middleware.store.schema import (  # noqa: E402
    control_results,
    decisions,
    open_holds,
    outbox,
    quarantine,
    results,
)
from middleware.store.sql import utc  # noqa: E402
from simulators.ports import free_port  # noqa: E402

#: Patient samples each analyser sends at least, whatever ``--samples`` gives it.
MIN_SAMPLES_EACH = 5
#: Patient samples between two QC runs of an analyser.
QC_EVERY = 20
#: Share of samples from a patient seen before (delta checks).
REPEAT_PATIENTS = 0.3
#: The outbox counts as quiet after this long without a change.
QUIET_SECONDS = 1.0
#: The LIS simulator, as a process of its own.
LIS_COMMAND = (sys.executable, "-m", "simulators", "lis")
#: The stages of a message released on arrival, from its last frame to the LIS's ACK.
STAGES = (
    "stored (last frame to the analyser's ACK)",
    "waiting for the sender (ACK to claimed)",
    "LIS (claimed to answered, behind its batch)",
)
#: The latency target applies to the load of this many results/s (``--rate``).
TARGET_RATE = 100


# --- the analysers ------------------------------------------------------------------------


@dataclass(slots=True)
class Traffic:
    """What the analysers sent and when, in wall-clock seconds (``time.time()``): the
    daemon's stored times are on the same clock."""

    analysers: int
    last_frame_at: dict[str, float] = field(default_factory=dict)
    """By specimen id: when the last frame of its patient message was written."""
    acked_at: dict[str, float] = field(default_factory=dict)
    """By specimen id: when that frame's ACK came (the message is stored and decided)."""
    first_enq: float = math.inf
    last_ack: float = 0.0
    """The last ACK an analyser got for the frame that ends a message."""
    patient_messages: int = 0
    qc_messages: int = 0
    patient_results: int = 0
    control_results: int = 0
    connected: int = 0

    @property
    def results(self) -> int:
        return self.patient_results + self.control_results


@dataclass(slots=True)
class AllConnected:
    """The daemon at the moment the last analyser connected, before the first ENQ."""

    rss_mb: float
    max_rss_mb: float
    """The highest RSS sampled (every 0.2 s) while every analyser stayed connected."""
    daemon_fds: int
    max_daemon_fds: int
    """The most file descriptors sampled meanwhile: a connection counts on the analyser's
    side once the kernel has it, on the daemon's once its loop has accepted it."""
    daemon_fd_limit: str
    bench_fds: int
    daemon_cpu: float
    lis_cpu: float
    bench_cpu: float


def print_collections(seen: list[dict[str, Any]], up: float) -> None:
    """The daemon's full collections once it listened: each stopped both its threads."""
    full = [c for c in seen if c["generation"] == 2 and c["at"] >= up]
    pauses = ", ".join(f"{c['ms']:.1f}" for c in full) or "none"
    set_aside = max((c["set_aside"] for c in seen), default=0)
    print(
        f"  daemon's full garbage collections once listening: {len(full)} ({pauses} ms); "
        f"objects start-up set aside: {set_aside:,}; start-up listened after {up:.1f} s"
    )


async def acknowledged(reader: asyncio.StreamReader, plan: Plan, what: str) -> None:
    reply = await reader.readexactly(1)
    if reply != ACK:
        raise RuntimeError(f"{plan.name}: the daemon answered {reply!r} to {what}")


async def analyser(
    port: int,
    stream: Stream,
    samples: int,
    per_second: float | None,
    traffic: Traffic,
    everyone_online: asyncio.Event,
    arrived: Callable[[], None],
) -> None:
    """One analyser: connects, waits for the others, then sends its run, one message per
    transfer, paced at ``per_second`` results/s when given."""
    plan = stream.plan
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    traffic.connected += 1
    arrived()
    try:
        await everyone_online.wait()
        due = time.monotonic()
        if per_second is not None:
            # Analysers that start together would send in step: each starts somewhere in
            # its first message's interval.
            due += random.Random(port).uniform(0, len(plan.panel) / per_second)
        run = stream.sequence(samples, utcnow)
        while True:
            if per_second is not None:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            # Made only now, so that its completion time (R.13) is when it is sent.
            sample = next(run, None)
            if sample is None:
                break
            if per_second is not None:
                due += len(sample.values) / per_second
            chunks = frames(sample.records())
            traffic.first_enq = min(traffic.first_enq, time.time())
            writer.write(ENQ)
            await acknowledged(reader, plan, "ENQ")
            for chunk in chunks[:-1]:
                writer.write(chunk)
                await acknowledged(reader, plan, f"a frame of {sample.specimen_id}")
            written = time.time()
            writer.write(chunks[-1])
            await acknowledged(reader, plan, f"the last frame of {sample.specimen_id}")
            acked = time.time()
            traffic.last_ack = max(traffic.last_ack, acked)
            writer.write(EOT)
            if sample.control is None:
                traffic.last_frame_at[sample.specimen_id] = written
                traffic.acked_at[sample.specimen_id] = acked
                traffic.patient_messages += 1
                traffic.patient_results += len(sample.values)
            else:
                traffic.qc_messages += 1
                traffic.control_results += len(sample.values)
        writer.close()
        await writer.wait_closed()
    finally:
        traffic.connected -= 1


def paces(analysers: list[Plan], samples: int, rate: float | None) -> list[float | None]:
    """Results/s of each analyser so that together they send ``rate``: shares in proportion
    to the results of each one's run (an immunoassay analyser sends 2 tests a sample, a
    chemistry one 10), so that all of them finish together and the total stays at
    ``rate`` to the end."""
    if rate is None:
        return [None] * len(analysers)
    qc_runs = 1 + math.ceil(samples / QC_EVERY)
    runs = [len(p.panel) * (samples + qc_runs * len(p.kind.controls)) for p in analysers]
    return [rate * results / sum(runs) for results in runs]


async def everyone(
    ports: list[int],
    streams: list[Stream],
    samples: int,
    paces: list[float | None],
    traffic: Traffic,
    daemon: int,
    lis: int,
) -> AllConnected:
    online = asyncio.Event()
    seen: list[AllConnected] = []

    def arrived() -> None:
        if traffic.connected < traffic.analysers:
            return
        rss = memory_mb(daemon, "VmRSS")
        fds = len(os.listdir(f"/proc/{daemon}/fd"))
        limit = next(
            (
                " ".join(line.split()[3:5])
                for line in Path(f"/proc/{daemon}/limits").read_text().splitlines()
                if line.startswith("Max open files")
            ),
            "?",
        )
        seen.append(
            AllConnected(
                rss,
                rss,
                fds,
                fds,
                limit,
                len(os.listdir("/proc/self/fd")),
                cpu_seconds(daemon),
                cpu_seconds(lis),
                time.process_time(),
            )
        )
        online.set()

    async def sample_daemon() -> None:
        await online.wait()
        while traffic.connected == traffic.analysers:
            now = seen[0]
            now.max_rss_mb = max(now.max_rss_mb, memory_mb(daemon, "VmRSS"))
            now.max_daemon_fds = max(now.max_daemon_fds, len(os.listdir(f"/proc/{daemon}/fd")))
            await asyncio.sleep(0.2)

    sampler = asyncio.create_task(sample_daemon())
    try:
        await asyncio.gather(
            *(
                analyser(port, stream, samples, pace, traffic, online, arrived)
                for port, stream, pace in zip(ports, streams, paces, strict=True)
            )
        )
        await sampler
    finally:
        sampler.cancel()
    return seen[0]


# --- the LIS and the outbox ---------------------------------------------------------------


def start_lis(workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The LIS simulator answering AA, its port, and the file it records messages in."""
    record = workdir / "lis.jsonl"
    with (workdir / "lis.log").open("wb") as log:
        process = subprocess.Popen(
            [*LIS_COMMAND, "--listen", "127.0.0.1:0", "--record", str(record)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        process.kill()
        raise RuntimeError(f"LIS simulator: {line!r} {(workdir / 'lis.log').read_text()}")
    return process, int(line.rsplit(":", 1)[1]), record


_PROBE = sql_text(
    "SELECT (SELECT count(*) FROM outbox WHERE state = 'pending'), "
    "(SELECT count(*) FROM outbox), (SELECT coalesce(max(id), 0) FROM outbox_log), "
    "(SELECT coalesce(max(id), 0) FROM decisions)"
)


def settle(url: str, daemon: int, timeout: float) -> tuple[float, int]:
    """Wait until the outbox has no pending entry and nothing has changed for
    ``QUIET_SECONDS``; the daemon's CPU seconds at the last change, and the entries still
    pending (0 unless ``timeout`` ran out)."""
    engine = open_engine(url)
    deadline = time.monotonic() + timeout
    last: tuple[int, ...] = ()
    changed, cpu = time.monotonic(), cpu_seconds(daemon)
    try:
        while True:
            with engine.connect() as conn:
                state = tuple(int(v) for v in conn.execute(_PROBE).one())
            now = time.monotonic()
            if state != last:
                last, changed, cpu = state, now, cpu_seconds(daemon)
            elif state[0] == 0 and now - changed >= QUIET_SECONDS:
                return cpu, 0
            if now > deadline:
                return cpu, state[0]
            time.sleep(0.1)
    finally:
        engine.dispose()


@dataclass(slots=True)
class Outcome:
    """What became of the run's results, read from the store and the LIS's record."""

    stored_patient: int = 0
    stored_control: int = 0
    quarantined: int = 0
    held: int = 0
    hold_reasons: Counter[str] = field(default_factory=Counter)
    outbox_states: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    """Messages the LIS answered AA, each control id once."""
    refused: int = 0
    resent: int = 0
    delivered: int = 0
    """Distinct specimen and test among the messages answered AA."""
    statuses: Counter[str] = field(default_factory=Counter)
    duplicated: int = 0
    not_recorded: int = 0
    """Entries the daemon marked delivered that the LIS's record does not have."""
    on_arrival: list[float] = field(default_factory=list)
    on_arrival_sent: list[float] = field(default_factory=list)
    """When the last frame of each message in ``on_arrival`` was written."""
    waited: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=lambda: {stage: [] for stage in STAGES})
    """Messages released on arrival: where their time went."""
    waited_reasons: Counter[str] = field(default_factory=Counter)
    bracketed_on_arrival: int = 0
    unknown_specimens: int = 0
    answered: list[float] = field(default_factory=list)
    """When each entry delivered was answered, in seconds since the epoch."""


def recorded(path: Path) -> list[dict[str, Any]]:
    """The LIS's record, complete lines only."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def bracketed_tests(rules: Rules, instrument: str) -> set[str]:
    return {
        test
        for policy in rules.qc_policies
        if policy.mode == "bracketed" and {"*", instrument} & set(policy.instruments)
        for test in policy.tests
    }


def outcome(url: str, record: Path, traffic: Traffic, rules: Rules) -> Outcome:
    out = Outcome()
    messages: dict[str, dict[str, Any]] = {}
    for entry in recorded(record):
        if entry["answer"] != "AA":
            out.refused += 1
        elif entry["control_id"] in messages:
            out.resent += 1
        else:
            messages[entry["control_id"]] = entry
    out.accepted = len(messages)
    control_ids: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
    for control_id, entry in messages.items():
        for specimen in entry["specimen_ids"]:
            for obx in entry["results"]:
                control_ids[(specimen, obx["test"])].add(control_id)
                out.statuses[obx["status"]] += 1
    out.delivered = len(control_ids)
    out.duplicated = sum(1 for ids in control_ids.values() if len(ids) > 1)

    engine = open_engine(url)
    try:
        with engine.connect() as conn:

            def count(table: Any) -> int:
                return int(conn.execute(select(func.count()).select_from(table)).scalar_one())

            out.stored_patient, out.stored_control = count(results), count(control_results)
            out.quarantined, out.held = count(quarantine), count(open_holds)
            first = (
                select(func.min(decisions.c.id).label("id"))
                .group_by(decisions.c.result_id)
                .subquery()
            )
            firsts = {
                (row.specimen_id, row.test_code): (row.action, row.reasons)
                for row in conn.execute(
                    select(
                        decisions.c.specimen_id,
                        decisions.c.test_code,
                        decisions.c.action,
                        decisions.c.reasons,
                    ).join(first, first.c.id == decisions.c.id)
                )
            }
            latest = (
                select(func.max(decisions.c.id).label("id"))
                .group_by(decisions.c.result_id)
                .subquery()
            )
            for (reasons,) in conn.execute(
                select(decisions.c.reasons)
                .join(latest, latest.c.id == decisions.c.id)
                .where(decisions.c.action == "hold")
            ):
                out.hold_reasons.update(r for r in reasons.split(",") if r)
            entries = conn.execute(
                select(
                    outbox.c.control_id,
                    outbox.c.specimen_id,
                    outbox.c.instrument,
                    outbox.c.state,
                    outbox.c.answered_at,
                    outbox.c.last_sent_at,
                )
            ).all()
    finally:
        engine.dispose()

    for queued in entries:
        out.outbox_states[queued.state] += 1
        if queued.state != "delivered":
            continue
        answered_at = _epoch(queued.answered_at)
        out.answered.append(answered_at)
        sent = traffic.last_frame_at.get(queued.specimen_id)
        message = messages.get(queued.control_id)
        if message is None:
            out.not_recorded += 1
            continue
        if sent is None:
            out.unknown_specimens += 1
            continue
        tests = [obx["test"] for obx in message["results"]]
        first_holds = [
            firsts[(queued.specimen_id, t)]
            for t in tests
            if firsts.get((queued.specimen_id, t), ("", ""))[0] == "hold"
        ]
        if first_holds:
            out.waited.append(answered_at - sent)
            out.waited_reasons.update(r for _, why in first_holds for r in why.split(",") if r)
            continue
        out.on_arrival.append(answered_at - sent)
        out.on_arrival_sent.append(sent)
        bracketed = bracketed_tests(rules, queued.instrument)
        out.bracketed_on_arrival += sum(1 for t in tests if t in bracketed)
        stored, to_lis = traffic.acked_at[queued.specimen_id], _epoch(queued.last_sent_at)
        for stage, seconds in zip(
            STAGES, (stored - sent, to_lis - stored, answered_at - to_lis), strict=True
        ):
            out.stages[stage].append(seconds)
    return out


def _epoch(moment: datetime | None) -> float:
    """A time the store gave back, in seconds since the epoch (SQLite gives it without
    its zone, which is UTC)."""
    at = utc(moment)
    assert at is not None
    return at.timestamp()


# --- one run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One (database, N) line of the final table."""

    database: str
    analysers: int
    rate: float | None
    sustained: float
    ingest: float
    on_arrival: list[float]
    waited: list[float]
    cpu_per_1000: float
    peak_rss_mb: float
    connected_rss_mb: float
    sent: int
    delivered: int
    held: int
    duplicated: int
    load: float


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{ms(percentile(values, 0.5))} / {ms(percentile(values, 0.99))}"


def run(
    database: str,
    url: str,
    workdir: Path,
    args: argparse.Namespace,
    rules: Rules,
    kinds: dict[str, Kind],
    n: int,
) -> Row:
    analysers = plans(kinds, n, args.results)
    each = max(MIN_SAMPLES_EACH, math.ceil(args.samples / n))
    patients = Patients(kinds, REPEAT_PATIENTS)
    tag = secrets.token_hex(2).upper()
    streams = [
        Stream(p, patients, random.Random(f"{tag}/{p.index}"), f"S{tag}{p.index:03d}-", QC_EVERY)
        for p in analysers
    ]
    mix = Counter(p.kind.name for p in analysers)
    paced = f"paced at {args.rate:g} results/s in all" if args.rate else "unpaced"
    print(
        f"{database}, {n} analysers ({', '.join(f'{v} {k}' for k, v in mix.items())}), "
        f"{each} patient samples each, {paced}:",
        flush=True,
    )
    traffic = Traffic(n)
    pace = paces(analysers, each, args.rate)
    lis, lis_port, record = start_lis(workdir)
    try:
        ports = [free_port() for _ in analysers]
        lis_section = {"lis": {"host": "127.0.0.1", "port": lis_port}}
        measured = None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            measured = (args.profile / f"{database}-{n}", "cprofile")
        elif args.collections is not None:
            args.collections.mkdir(parents=True, exist_ok=True)
            measured = (args.collections / f"{database}-{n}", "collections")
        daemon, up = start_daemon(
            workdir, analysers, ports, url, args.rules, measured, sections=lis_section
        )
        try:
            started = asyncio.run(
                everyone(ports, streams, each, pace, traffic, daemon.pid, lis.pid)
            )
            sent_cpu = time.process_time() - started.bench_cpu
            daemon_cpu, pending = settle(url, daemon.pid, args.timeout)
            daemon_cpu -= started.daemon_cpu
            peak = peak_rss_mb(daemon.pid)
            lis_cpu = cpu_seconds(lis.pid) - started.lis_cpu
        except BaseException:
            # The temporary directory goes with the exception: say what the daemon said.
            log = (workdir / "daemon.log").read_text(errors="replace").splitlines()
            print("\n".join(["  daemon log, last lines:", *log[-20:]]), file=sys.stderr)
            raise
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(60)
    finally:
        lis.send_signal(signal.SIGTERM)
        lis.wait(30)
    load_average = os.getloadavg()[0]
    got = outcome(url, record, traffic, rules)
    ingest_s = traffic.last_ack - traffic.first_enq
    sustained_s = max(got.answered, default=math.nan) - traffic.first_enq
    meanwhile = sum(1 for at in got.answered if at <= traffic.last_ack)
    messages = traffic.patient_messages + traffic.qc_messages
    print(
        f"  sent {messages:,} messages ({traffic.qc_messages:,} QC): "
        f"{traffic.patient_results:,} patient + {traffic.control_results:,} control results; "
        f"first ENQ to last analyser ACK {ingest_s:.2f} s ({traffic.results / ingest_s:,.0f} "
        f"results/s ingest), to last LIS ACK {sustained_s:.2f} s "
        f"({traffic.results / sustained_s:,.0f} results/s sustained); LIS messages delivered "
        f"while the analysers sent: {meanwhile:,} ({meanwhile / ingest_s:.0f}/s), after: "
        f"{len(got.answered) - meanwhile:,} "
        f"({(len(got.answered) - meanwhile) / max(sustained_s - ingest_s, 1e-9):.0f}/s)"
    )
    print(
        f"  stored {got.stored_patient:,} patient + {got.stored_control:,} control results, "
        f"{got.quarantined} quarantined; outbox {_counts(got.outbox_states)}"
        + (f"; {pending} still pending after {args.timeout:g} s" if pending else "")
    )
    unaccounted = traffic.patient_results - got.delivered - got.held
    print(
        f"  LIS: {got.accepted:,} messages accepted ({got.resent} resent, {got.refused} "
        f"refused), {got.delivered:,} patient results delivered (OBX-11 "
        f"{_counts(got.statuses)}), {got.duplicated} duplicated; held {got.held:,} "
        f"({_counts(got.hold_reasons)}); sent - delivered - held = {unaccounted:,}"
        + (
            f"; {got.not_recorded} delivered but not in the LIS's record"
            if got.not_recorded
            else ""
        )
    )
    print(
        f"  last frame to LIS ACK, ms p50 / p99: on arrival {spread(got.on_arrival)} "
        f"({len(got.on_arrival):,} messages), waited for QC {spread(got.waited)} "
        f"({len(got.waited):,}: {_counts(got.waited_reasons)}); bracketed-test results "
        f"released on arrival: {got.bracketed_on_arrival:,}"
    )
    print(
        "  on arrival, ms p50 / p99: "
        + "; ".join(f"{stage} {spread(values)}" for stage, values in got.stages.items())
    )
    print(
        f"  daemon CPU {daemon_cpu:.1f} s ({100 * daemon_cpu / sustained_s:.0f} % of a core), "
        f"{1000 * daemon_cpu / traffic.results:.2f} s per 1,000 results; peak RSS {peak:.0f} MB; "
        f"LIS simulator CPU {lis_cpu:.1f} s, analysers {sent_cpu:.1f} s; load average "
        f"{load_average:.2f}"
    )
    print(
        f"  all {n} connected: daemon RSS {started.rss_mb:.0f} MB (at most "
        f"{started.max_rss_mb:.0f} MB while they stayed), file descriptors: daemon "
        f"{started.daemon_fds}, at most {started.max_daemon_fds} (limit "
        f"{started.daemon_fd_limit}), bench {started.bench_fds} "
        f"(limit {' '.join(map(str, resource.getrlimit(resource.RLIMIT_NOFILE)))})"
    )
    log = (workdir / "daemon.log").read_text(errors="replace").splitlines()
    if log:
        levels = Counter(_level(line) for line in log)
        print(f"  daemon log: {dict(levels)}; first: {log[0][:300]}")
    if measured is not None:
        for part in ("loop", "writer"):
            if Path(f"{measured[0]}.{part}").exists():
                print_profile(Path(f"{measured[0]}.{part}"), part, top=30)
        collections = Path(f"{measured[0]}.collections.json")
        if collections.exists():
            print_collections(json.loads(collections.read_text()), up)
    if got.unknown_specimens:
        print(f"  {got.unknown_specimens} delivered messages of specimens no analyser sent")
    return Row(
        database,
        n,
        args.rate,
        traffic.results / sustained_s,
        traffic.results / ingest_s,
        got.on_arrival,
        got.waited,
        1000 * daemon_cpu / traffic.results,
        peak,
        started.max_rss_mb,
        traffic.patient_results,
        got.delivered,
        got.held,
        got.duplicated,
        load_average,
    )


def _counts(counts: Counter[str]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.most_common()) or "none"


def measure(
    database: str, args: argparse.Namespace, rules: Rules, kinds: dict[str, Kind], n: int
) -> Row:
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        if database == "sqlite":
            url = f"sqlite:///{workdir / 'middleware.db'}"
            return run(database, url, workdir, args, rules, kinds, n)
        url, name = postgres_database(args.postgres)
        try:
            return run(database, url, workdir, args, rules, kinds, n)
        finally:
            drop_postgres(args.postgres, name)


# --- the report ---------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| database | analysers | results/s sustained | ingest results/s | on arrival p50 / p99 "
        "ms | waited for QC p50 / p99 ms | CPU s / 1,000 results | peak RSS MB | patient "
        "results sent / delivered / held / duplicated | load average |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "SQLite" if r.database == "sqlite" else "PostgreSQL"
        lines.append(
            f"| {name} | {r.analysers}{f' at {r.rate:g}/s' if r.rate else ''} | "
            f"{r.sustained:,.0f} | {r.ingest:,.0f} | {spread(r.on_arrival)} | "
            f"{spread(r.waited)} | {r.cpu_per_1000:.2f} | {r.peak_rss_mb:.0f} | "
            f"{r.sent:,} / {r.delivered:,} / {r.held:,} / {r.duplicated} | {r.load:.2f} |"
        )
    return lines


def against_targets(rows: list[Row]) -> list[str]:
    """The product's targets, for the runs that measure them."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    out = []
    for r in rows:
        if r.database == "sqlite" and r.analysers == 10 and r.rate is None:
            out.append(
                f"3,000 results/s end to end, 10 analysers, SQLite: {r.sustained:,.0f} "
                f"sustained: {verdict(r.sustained >= 3000)}"
            )
        if r.rate is not None and abs(r.rate - TARGET_RATE) <= TARGET_RATE * 0.1:
            p99 = percentile(r.on_arrival, 0.99) * 1000
            out.append(
                f"p99 under 50 ms at {r.rate:g} results/s ({r.database}, {r.analysers} "
                f"analysers, released on arrival): {p99:.1f} ms: {verdict(p99 < 50)}"
            )
        if r.analysers >= 200:
            worst = max(r.peak_rss_mb, r.connected_rss_mb)
            out.append(
                f"RSS under 200 MB with {r.analysers} analysers connected ({r.database}): "
                f"peak {r.peak_rss_mb:.0f} MB: {verdict(worst < 200)}"
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--analysers", default="1,10,50,200", help="comma-separated numbers of analysers"
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=2000,
        help=f"patient samples in all per run, split across the analysers (at least "
        f"{MIN_SAMPLES_EACH} each); QC added",
    )
    parser.add_argument(
        "--results", type=int, default=10, help="tests per patient sample, at most the menu"
    )
    parser.add_argument(
        "--rate", type=float, help="results/s the analysers send together (default: unpaced)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL"),
        help="server for the PostgreSQL runs (a throwaway database is made on it for each "
        "run); default MIDDLEWARE_TEST_POSTGRES_URL, skipped without",
    )
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument(
        "--rules", type=Path, default=ROOT / "rules", help="the daemon's rules_dir and the mix's"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the daemon under cProfile (bench/ingest_profile.py), keep the profiles in "
        "this directory and print where the time goes (the figures are then not to be quoted)",
    )
    parser.add_argument(
        "--collections",
        type=Path,
        help="record the daemon's garbage collections (bench/ingest_profile.py) in this "
        "directory and print the full ones made while the analysers sent",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds to wait, after the analysers are done, for the outbox to empty",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.analysers.split(",")]
    rules = load_rules(args.rules)
    kinds = load(args.rules)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.2f}; open files limit {soft} (hard {hard}); rules from "
        f"{args.rules}; daemon, LIS simulator and analysers in three processes; SQLite WAL "
        f"with synchronous=FULL; QC every 20 patient samples; {REPEAT_PATIENTS:.0%} repeat "
        f"patients; {args.samples:,} patient samples per run"
    )
    rows = []
    for database in ("sqlite", "postgresql"):
        if args.only not in (None, database):
            continue
        if database == "postgresql" and not args.postgres:
            print("postgresql skipped: give --postgres URL or MIDDLEWARE_TEST_POSTGRES_URL")
            continue
        for n in counts:
            rows.append(measure(database, args, rules, kinds, n))
    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(against_targets(rows)))


if __name__ == "__main__":
    main()
