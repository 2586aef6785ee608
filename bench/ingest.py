"""Ingest throughput: N analysers over TCP into the daemon's store, SQLite and PostgreSQL,
with a laboratory's mix of patient and control samples and, optionally, a database that
already holds history.

Runs the real daemon as a separate process (its own core) and N simulated analysers in
this one; each analyser sends its samples, one message per transfer, as fast as the link
lets it. The mix (bench/ingest_mix.py) comes from the rules directory: analysers of each
kind the control materials define (chemistry, haematology, immunoassay), the tests their
QC policies cover, one control of every required level before the first patient and after
every 20 patient samples, values around the reference ranges, a share of repeat patients
(delta checks), controls in control. ``--prefill N`` first writes N patient results of
the same mix straight into the database (bench/ingest_prefill.py; SQLite files are cached
in the temp directory for 12 hours); several comma-separated values run one after the
other.

Prints, per database: start-up time of the daemon (process start to all its ports
listening), results/s, the ACK latency of the frame that ends a message (p50, p99; patient
and QC messages apart), the ACK of an ordinary frame, the daemon's peak RSS (VmHWM before
it is stopped), the CPU used during the run; then what the daemon stored and decided
(decisions by action, top hold reasons, QC evaluations, delta checks), read back from the
database. ``--timing`` adds the writer's time per patient and QC message, measured inside
the daemon; ``--profile DIR`` runs the daemon under cProfile instead (bench/ingest_profile.py).

    .venv/bin/python bench/ingest.py [--analysers 10] [--messages 100] [--results 10]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--only sqlite|postgresql]
        [--rules rules/] [--prefill 0,100000,1000000] [--per-day 10000] [--repeat 0.3]
        [--fresh] [--timing | --profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import text as sql_text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))

from ingest_mix import (  # noqa: E402
    ACK,
    ENQ,
    EOT,
    Kind,
    Patients,
    Plan,
    Stream,
    control_pattern,
    frames,
    load,
    plans,
    utcnow,
)
from ingest_prefill import Prefilled, prefill  # noqa: E402

from middleware.engine.rules import load_rules  # noqa: E402
from middleware.store import Store  # noqa: E402
from middleware.store.database import MIGRATIONS, open_engine  # noqa: E402
from simulators.ports import free_port  # noqa: E402

CACHE = Path(tempfile.gettempdir()) / "lis-middleware-bench"
CACHE_HOURS = 12


@dataclass(slots=True)
class Timings:
    frame_ack: list[float] = field(default_factory=list)
    patient_end: list[float] = field(default_factory=list)
    qc_end: list[float] = field(default_factory=list)
    patient_messages: int = 0
    qc_messages: int = 0
    patient_results: int = 0
    control_results: int = 0


async def analyser(port: int, stream: Stream, patients: int, timings: Timings) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for sample in stream.sequence(patients, utcnow):
        data = frames(sample.records())
        writer.write(ENQ)
        assert await reader.readexactly(1) == ACK
        last = len(data) - 1
        for i, chunk in enumerate(data):
            started = time.perf_counter()
            writer.write(chunk)
            reply = await reader.readexactly(1)
            elapsed = time.perf_counter() - started
            assert reply == ACK, reply
            if i < last:
                timings.frame_ack.append(elapsed)
            elif sample.control is None:
                timings.patient_end.append(elapsed)
            else:
                timings.qc_end.append(elapsed)
        writer.write(EOT)
        if sample.control is None:
            timings.patient_messages += 1
            timings.patient_results += len(sample.values)
        else:
            timings.qc_messages += 1
            timings.control_results += len(sample.values)
    writer.close()
    await writer.wait_closed()


def start_daemon(
    workdir: Path,
    analysers: list[Plan],
    ports: list[int],
    database_url: str,
    rules: Path | None,
    measured: tuple[Path, str] | None = None,
    sections: dict[str, Any] | None = None,
) -> tuple[subprocess.Popen[bytes], float]:
    """The daemon, and the seconds from its start until every port accepts connections.
    ``sections`` are added to its configuration as they are (bench/e2e.py's ``lis:``)."""
    config: dict[str, Any] = {
        "state_dir": str(workdir / "state"),
        "database_url": database_url,
        "log": {"level": "warning"},
        "instruments": [
            {
                "name": plan.name,
                "driver": "generic",
                "transport": "tcp-server",
                "host": "127.0.0.1",
                "port": port,
                "timezone": "UTC",
                "control_pattern": control_pattern(plan),
            }
            for plan, port in zip(analysers, ports, strict=True)
        ],
    }
    if rules is not None:
        config["rules_dir"] = str(rules.resolve())
    config.update(sections or {})
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    command = [sys.executable, "-m", "middleware"]
    if measured is not None:
        prefix, mode = measured
        command = [sys.executable, str(BENCH / "ingest_profile.py"), str(prefix), mode]
    started = time.perf_counter()
    process = subprocess.Popen(
        [*command, "run", "--config", str(path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "daemon.log").open("wb"),
    )
    deadline = time.monotonic() + 300
    waiting = set(ports)
    while waiting:
        # Read from the kernel's table, not by connecting: a probe would be a connection
        # the daemon has to serve.
        waiting -= listening()
        if waiting:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((workdir / "daemon.log").read_text())
            time.sleep(0.005)
    return process, time.perf_counter() - started


def listening() -> set[int]:
    """Ports of IPv4 sockets in the LISTEN state."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A":
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def cpu_seconds(pid: int) -> float:
    """User and system time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    return memory_mb(pid, "VmHWM")


def memory_mb(pid: int, key: str) -> float:
    """A memory figure of ``/proc/PID/status`` (VmHWM the peak RSS, VmRSS the RSS now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


# --- the database before the run ----------------------------------------------------------

TABLES = (
    "messages",
    "raw_transmissions",
    "results",
    "control_results",
    "decisions",
    "qc_evaluations",
    "quarantine",
    "corrective_actions",
)


def high_water(url: str) -> dict[str, int]:
    engine = open_engine(url)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {t}").scalar_one())
                for t in TABLES
            }
    finally:
        engine.dispose()


def cache_key(args: argparse.Namespace, analysers: list[Plan], results: int) -> str:
    """Whatever changes the prefilled file: the mix, the bench's code, rules, migrations."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps(
            [
                results,
                args.per_day,
                args.repeat,
                [(p.name, p.kind.name, [t.code for t in p.panel]) for p in analysers],
            ]
        ).encode()
    )
    for path in sorted(
        [
            BENCH / "ingest_mix.py",
            BENCH / "ingest_prefill.py",
            *args.mix_rules.glob("*.yaml"),
            *(MIGRATIONS / "versions").glob("*.py"),
        ]
    ):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def sqlite_prefilled(
    path: Path, args: argparse.Namespace, analysers: list[Plan], kinds: dict[str, Kind], n: int
) -> Prefilled:
    """The prefilled file at ``path``: copied from the cache, or made (and cached)."""
    CACHE.mkdir(exist_ok=True)
    key = cache_key(args, analysers, n)
    cached, meta = CACHE / f"ingest-{n}-{key}.db", CACHE / f"ingest-{n}-{key}.json"
    if not args.fresh and cached.exists() and meta.exists():
        made = json.loads(meta.read_text())
        age = time.time() - made["made_at"]
        if age < CACHE_HOURS * 3600:
            started = time.perf_counter()
            shutil.copyfile(cached, path)
            on_disk(path)
            info = Prefilled(**made["counts"])
            print(
                f"  prefill: {info.results:,} patient and {info.controls:,} control results "
                f"over {info.span_days:.1f} days, made in {info.seconds:.1f} s "
                f"{age / 60:.0f} min ago (cached; copied in {time.perf_counter() - started:.1f} s)"
            )
            return info
    for old in CACHE.glob(f"ingest-{n}-*"):
        old.unlink()
    patients = Patients(kinds, args.repeat)
    info = prefill(
        f"sqlite:///{path}", analysers, kinds, args.rules_model, patients, n, args.per_day
    )
    on_disk(path)
    shutil.copyfile(path, cached)
    counts = dataclasses.asdict(info)
    meta.write_text(json.dumps({"made_at": time.time(), "counts": counts}))
    return info


def on_disk(path: Path) -> None:
    """Flush a file just written or copied: otherwise the daemon's first checkpoint would
    pay for writing the whole prefilled database out (hundreds of milliseconds at 1M)."""
    with path.open("rb+") as file:
        os.fsync(file.fileno())


def postgres_database(admin_url: str) -> tuple[str, str]:
    import psycopg

    name = f"mw_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rpartition("/")[0] + "/" + name, name


def drop_postgres(admin_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- one run --------------------------------------------------------------------------------


def run(
    name: str,
    url: str,
    workdir: Path,
    args: argparse.Namespace,
    analysers: list[Plan],
    kinds: dict[str, Kind],
    n: int,
) -> None:
    label = f"{name}, prefill {n:,}"
    print(f"{label}:")
    if n == 0:
        Store(url).close()  # start-up then measures a restart, not the first migration
        patients = Patients(kinds, args.repeat)
    elif name == "sqlite":
        info = sqlite_prefilled(Path(url.removeprefix("sqlite:///")), args, analysers, kinds, n)
        patients = Patients(kinds, args.repeat, info.next_patients)
    else:
        patients = Patients(kinds, args.repeat)
        prefill(url, analysers, kinds, args.rules_model, patients, n, args.per_day)
        patients = Patients(kinds, args.repeat, patients.next)
    base = high_water(url)
    ports = [free_port() for _ in analysers]
    measured: tuple[Path, str] | None = None
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        measured = (args.profile / f"{name}-{n}", "cprofile")
    elif args.timing:
        measured = (workdir / "daemon", "timing")
    daemon, startup = start_daemon(workdir, analysers, ports, url, args.rules, measured)
    tag = secrets.token_hex(2).upper()
    streams = [
        Stream(p, patients, random.Random(f"{tag}/{p.index}"), f"S{tag}{p.index:02d}-")
        for p in analysers
    ]
    timings = Timings()
    cpu: list[float] = []

    async def everyone() -> float:
        started = time.perf_counter()
        cpu[:] = [cpu_seconds(daemon.pid), time.process_time()]
        await asyncio.gather(
            *(
                analyser(port, stream, args.messages, timings)
                for port, stream in zip(ports, streams, strict=True)
            )
        )
        return time.perf_counter() - started

    try:
        elapsed = asyncio.run(everyone())
        daemon_cpu = cpu_seconds(daemon.pid) - cpu[0]
        own_cpu = time.process_time() - cpu[1]
        rss = peak_rss_mb(daemon.pid)
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)
    messages = timings.patient_messages + timings.qc_messages
    results = timings.patient_results + timings.control_results
    everything = timings.patient_end + timings.qc_end
    print(
        f"  start-up {startup:.2f} s; {len(analysers)} analysers: {messages:,} messages "
        f"({timings.qc_messages:,} QC), {timings.patient_results:,} patient + "
        f"{timings.control_results:,} control results in {elapsed:.2f} s: "
        f"{results / elapsed:,.0f} results/s, {messages / elapsed:.0f} messages/s; "
        f"daemon peak RSS {rss:.0f} MB"
    )
    print(
        f"  ACK of a message's last frame: p50 {ms(statistics.median(everything))} ms, "
        f"p99 {ms(percentile(everything, 0.99))} ms (patient p50 "
        f"{ms(statistics.median(timings.patient_end))} / p99 "
        f"{ms(percentile(timings.patient_end, 0.99))} ms; QC p50 "
        f"{ms(statistics.median(timings.qc_end))} / p99 {ms(percentile(timings.qc_end, 0.99))}"
        f" ms); of an ordinary frame: p50 {ms(statistics.median(timings.frame_ack))} ms"
    )
    print(
        f"  CPU during the run: daemon {daemon_cpu:.1f} s ({100 * daemon_cpu / elapsed:.0f} % of "
        f"a core), analysers {own_cpu:.1f} s ({100 * own_cpu / elapsed:.0f} %); load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    for line in decided(url, base, args):
        print("  " + line)
    if measured is not None and measured[1] == "cprofile":
        for part in ("loop", "writer"):
            if Path(f"{measured[0]}.{part}").exists():
                print_profile(Path(f"{measured[0]}.{part}"), part)
    elif measured is not None:
        print_timing(Path(f"{measured[0]}.timing.json"))
    log = (workdir / "daemon.log").read_text(errors="replace").splitlines()
    if log:
        levels = Counter(_level(line) for line in log)
        print(f"  daemon log: {dict(levels)}; first: {log[0][:200]}")


def print_profile(path: Path, part: str, top: int = 18) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    total = stats.total_tt  # type: ignore[attr-defined]
    print(f"  profile of the {part} thread ({path}): {total:.2f} s in Python functions")
    rows = sorted(
        stats.stats.items(),  # type: ignore[attr-defined]
        key=lambda item: item[1][3],
        reverse=True,
    )
    for (file, line, function), (_, calls, own, cumulative, _) in rows[:top]:
        where = f"{Path(file).name}:{line}" if line else file
        print(
            f"    {cumulative:7.2f} s cumulative {own:6.2f} s own {calls:>8,} calls  "
            f"{function} ({where})"
        )


def print_timing(path: Path) -> None:
    times = json.loads(path.read_text())

    def shown(key: str) -> str:
        values = times.get(key, [])
        if not values:
            return "none"
        return (
            f"p50 {ms(statistics.median(values))} / mean {ms(statistics.fmean(values))} / "
            f"p99 {ms(percentile(values, 0.99))} / max {ms(max(values))} ms"
        )

    for kind in ("patient", "qc"):
        store, engine = times.get(f"{kind} store", []), times.get(f"{kind} engine", [])
        both = [a + b for a, b in zip(store, engine, strict=False)]
        print(
            f"  writer time per {'QC' if kind == 'qc' else kind} message ({len(store):,}): "
            f"store {shown(f'{kind} store')}; engine {shown(f'{kind} engine')}; together "
            f"p50 {ms(statistics.median(both)) if both else '-'} ms, "
            f"mean {ms(statistics.fmean(both)) if both else '-'} ms"
        )
    cpu = {
        kind: [
            a + b
            for a, b in zip(times[f"{kind} store cpu"], times[f"{kind} engine cpu"], strict=False)
        ]
        for kind in ("patient", "qc")
        if times.get(f"{kind} store cpu")
    }
    if len(cpu) == 2:
        medians = {kind: statistics.median(values) for kind, values in cpu.items()}
        means = {kind: statistics.fmean(values) for kind, values in cpu.items()}
        print(
            f"  writer CPU per message (store and engine, the thread's own time): patient p50 "
            f"{ms(medians['patient'])} / mean {ms(means['patient'])} ms, QC p50 "
            f"{ms(medians['qc'])} / mean {ms(means['qc'])} ms: a QC message adds "
            f"{ms(medians['qc'] - medians['patient'])} ms p50, "
            f"{ms(means['qc'] - means['patient'])} ms mean"
        )
    sizes = times.get("batch", [])
    print(
        f"  transactions: {len(sizes):,}, {statistics.fmean(sizes):.1f} units each on average;"
        f" duration {shown('transaction')}"
    )
    slow = times.get("slow", [])
    if slow:
        print(f"  statements slower than 50 ms: {len(slow)}; slowest:")
        for elapsed, statement in sorted(slow, reverse=True)[:5]:
            print(f"    {ms(elapsed)} ms {statement[:300]}")


def _level(line: str) -> str:
    try:
        return str(json.loads(line).get("level", "?"))
    except ValueError:
        return "text"


# --- what the daemon decided ----------------------------------------------------------------


def decided(url: str, base: dict[str, int], args: argparse.Namespace) -> list[str]:
    """What the run stored and decided, read back from the database."""
    engine = open_engine(url)
    try:
        with engine.connect() as conn:

            def rows(query: str, **params: Any) -> list[Any]:
                return list(conn.execute(sql_text(query), params).all())

            def count(table: str) -> int:
                query = f"SELECT count(*) FROM {table} WHERE id > :base"
                return int(rows(query, base=base[table])[0][0])

            patients = count("results")
            out = [
                f"stored: {count('messages'):,} messages, {patients:,} patient and "
                f"{count('control_results'):,} control results, {count('quarantine')} quarantined"
            ]
            if args.rules is None:
                return out
            r = base["results"]
            each = (
                "SELECT d.action, d.reasons FROM decisions d JOIN (SELECT result_id, {f}(id) AS id "
                "FROM decisions WHERE result_id > :r GROUP BY result_id) x ON x.id = d.id"
            )
            first = rows(each.format(f="min"), r=r)
            latest = rows(each.format(f="max"), r=r)
            total = dict(
                rows(
                    "SELECT action, count(*) FROM decisions WHERE result_id > :r GROUP BY action",
                    r=r,
                )
            )
            released = sum(1 for action, _ in latest if action == "release")
            undecided = patients - len(latest)
            out.append(
                f"decisions: {sum(total.values()):,} rows ({_counts(total)}); first decision "
                f"{_counts(Counter(a for a, _ in first))}; latest "
                f"{_counts(Counter(a for a, _ in latest))}: "
                f"{100 * released / max(patients, 1):.1f} % of patient results released"
                + (f"; {undecided:,} without a decision" if undecided else "")
            )
            for when, decisions in (("first", first), ("latest", latest)):
                reasons = Counter(
                    part
                    for action, text in decisions
                    if action == "hold"
                    for part in text.split(",")
                    if part
                )
                if reasons:
                    top = ", ".join(f"{k} {v:,}" for k, v in reasons.most_common(6))
                    out.append(f"hold reasons ({when} decision): {top}")
            e = base["qc_evaluations"]
            evaluations = dict(
                rows(
                    "SELECT status, count(*) FROM qc_evaluations WHERE id > :e GROUP BY status", e=e
                )
            )
            problems = rows(
                "SELECT warnings, count(*) FROM qc_evaluations WHERE id > :e AND status = "
                "'unevaluated' GROUP BY warnings ORDER BY count(*) DESC LIMIT 3",
                e=e,
            )
            out.append(
                f"QC evaluations: {sum(evaluations.values()):,} ({_counts(evaluations)}); "
                f"corrective actions opened: {count('corrective_actions')}"
                + "".join(f"; {n} x {problem!r}" for problem, n in problems)
            )
            checks = [d.test for d in args.rules_model.delta_checks]
            if checks:
                tests = ", ".join(f"'{t}'" for t in checks)
                earlier = rows(
                    f"SELECT count(*) FROM results r WHERE r.id > :r AND r.test_code IN ({tests})"
                    " AND EXISTS (SELECT 1 FROM results p WHERE p.patient_id = r.patient_id "
                    "AND p.test_code = r.test_code AND p.id < r.id)",
                    r=r,
                )[0][0]
                failed = rows(
                    "SELECT count(DISTINCT result_id) FROM decisions WHERE result_id > :r "
                    "AND reasons LIKE '%delta%'",
                    r=r,
                )[0][0]
                out.append(
                    f"delta checks ({', '.join(checks)}): {earlier:,} results had an earlier "
                    f"result of the patient for the test; {failed:,} held for delta"
                )
            return out
    finally:
        engine.dispose()


def _counts(counts: dict[str, int] | Counter[str]) -> str:
    return " / ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "none"


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--analysers", type=int, default=10)
    parser.add_argument(
        "--messages", type=int, default=100, help="patient samples per analyser (QC added)"
    )
    parser.add_argument(
        "--results",
        type=int,
        default=10,
        help="tests per patient sample, at most the analyser's menu (chemistry 14, "
        "haematology 5, immunoassay 2 with the shipped rules)",
    )
    parser.add_argument("--postgres", default=os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL"))
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument(
        "--rules", type=Path, help="a rules directory: the engine decides about every result"
    )
    parser.add_argument(
        "--prefill", default="0", help="patient results already stored, comma-separated runs"
    )
    parser.add_argument(
        "--per-day", type=int, default=10_000, help="patient results a day in the prefill"
    )
    parser.add_argument("--repeat", type=float, default=0.3, help="share of repeat patients")
    parser.add_argument(
        "--fresh", action="store_true", help="prefill again instead of using the cache"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the daemon under cProfile (bench/ingest_profile.py), keep the profiles in "
        "this directory and print where the time went (not a throughput figure)",
    )
    parser.add_argument(
        "--timing",
        action="store_true",
        help="time, inside the daemon, the writer's work per patient and QC message "
        "(bench/ingest_profile.py, no profiler)",
    )
    args = parser.parse_args()
    args.mix_rules = args.rules or ROOT / "rules"
    args.rules_model = load_rules(args.mix_rules)
    kinds = load(args.mix_rules)
    analysers = plans(kinds, args.analysers, args.results)
    prefills = [int(p.replace("_", "")) for p in args.prefill.split(",")]
    engine = f"rules from {args.rules}" if args.rules else "no rules (store only)"
    mix = Counter(p.kind.name for p in analysers)
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; daemon in its own process; "
        f"{engine}; analysers: "
        + ", ".join(f"{v} {k} ({len(kinds[k].controls)} control levels)" for k, v in mix.items())
        + f"; {args.messages} patient samples each, QC every 20, {args.repeat:.0%} repeat patients"
    )
    for n in prefills:
        if args.only in (None, "sqlite"):
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite:///{Path(tmp) / 'middleware.db'}"
                run("sqlite", url, Path(tmp), args, analysers, kinds, n)
        if args.only in (None, "postgresql"):
            if not args.postgres:
                print("postgresql  skipped: give --postgres URL or MIDDLEWARE_TEST_POSTGRES_URL")
                continue
            url, name = postgres_database(args.postgres)
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    run("postgresql", url, Path(tmp), args, analysers, kinds, n)
            finally:
                drop_postgres(args.postgres, name)


if __name__ == "__main__":
    main()
