"""Ingest throughput: N analysers over TCP into the daemon's store, SQLite and PostgreSQL.

Runs the real daemon as a separate process (its own core) and N simulated analysers in
this one; each analyser sends messages of several results as fast as the link lets it.
Prints messages/s, results/s and the latency the store adds to each message: the time
from the frame carrying the L record to its ACK (which waits for the commit), against the
time to ACK an ordinary frame (which does not).

    .venv/bin/python bench/ingest.py [--analysers 10] [--messages 100] [--results 10]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--only sqlite|postgresql]
        [--rules rules/]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ENQ, ACK, EOT, STX, ETX = b"\x05", b"\x06", b"\x04", b"\x02", b"\x03"


def frame(number: int, text: bytes) -> bytes:
    body = str(number % 8).encode() + text + ETX
    return STX + body + b"%02X" % (sum(body) % 256) + b"\r\n"


def message(analyser: int, n: int, results: int) -> list[bytes]:
    records = [
        b"H|\\^&|||BENCH-%d|||||||P|LIS2-A2|20260301080000" % analyser,
        b"P|1||PAT%d-%d" % (analyser, n),
        b"O|1|S%d-%06d||^^^GLU|R" % (analyser, n),
    ]
    records += [
        b"R|%d|^^^T%02d|%d.%d|mmol/L|1.0-9.0|N||F||||20260301075900" % (i, i, n % 97, i)
        for i in range(1, results + 1)
    ]
    records.append(b"L|1|N")
    return [frame(i, r + b"\r") for i, r in enumerate(records, start=1)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def analyser(
    port: int, index: int, count: int, results: int, frame_ack: list[float], final_ack: list[float]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for n in range(count):
        frames = message(index, n, results)
        writer.write(ENQ)
        assert await reader.readexactly(1) == ACK
        for i, data in enumerate(frames):
            started = time.perf_counter()
            writer.write(data)
            reply = await reader.readexactly(1)
            elapsed = time.perf_counter() - started
            assert reply == ACK, reply
            (final_ack if i == len(frames) - 1 else frame_ack).append(elapsed)
        writer.write(EOT)
    writer.close()


def start_daemon(
    workdir: Path, ports: list[int], database_url: str | None, rules: Path | None
) -> subprocess.Popen[bytes]:
    config = {
        "state_dir": str(workdir / "state"),
        "log": {"level": "warning"},
        "instruments": [
            {"name": f"an{i}", "transport": "tcp-server", "host": "127.0.0.1", "port": port}
            for i, port in enumerate(ports)
        ],
    }
    if database_url:
        config["database_url"] = database_url
    if rules is not None:
        config["rules_dir"] = str(rules.resolve())
    path = workdir / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MIDDLEWARE_")}
    process = subprocess.Popen(
        [sys.executable, "-m", "middleware", "run", "--config", str(path)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=(workdir / "daemon.log").open("wb"),
    )  # fmt: skip
    deadline = time.monotonic() + 30
    for port in ports:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((workdir / "daemon.log").read_text()) from None
                time.sleep(0.05)
    return process


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(name: str, database_url: str | None, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ports = [free_port() for _ in range(args.analysers)]
        daemon = start_daemon(Path(tmp), ports, database_url, args.rules)
        frame_ack: list[float] = []
        final_ack: list[float] = []

        async def everyone() -> float:
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    analyser(port, i, args.messages, args.results, frame_ack, final_ack)
                    for i, port in enumerate(ports)
                )
            )
            return time.perf_counter() - started

        try:
            elapsed = asyncio.run(everyone())
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    messages = args.analysers * args.messages
    added = statistics.median(final_ack) - statistics.median(frame_ack)
    print(
        f"{name:<11} {args.analysers:>3} analysers  {messages:>6} messages  "
        f"{messages * args.results:>7} results  {elapsed:7.2f} s  "
        f"{messages / elapsed:8.1f} msg/s  {messages * args.results / elapsed:9.1f} results/s"
    )
    print(
        f"{'':<11} ACK of a frame: median {statistics.median(frame_ack) * 1000:.2f} ms; "
        f"of a message's last frame (after commit): median "
        f"{statistics.median(final_ack) * 1000:.2f} ms, "
        f"p95 {percentile(final_ack, 0.95) * 1000:.2f} ms; "
        f"added by the store: {added * 1000:.2f} ms"
    )


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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--analysers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100, help="per analyser")
    parser.add_argument("--results", type=int, default=10, help="per message")
    parser.add_argument("--postgres", default=os.environ.get("MIDDLEWARE_TEST_POSTGRES_URL"))
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument(
        "--rules", type=Path, help="a rules directory: the engine decides about every result"
    )
    args = parser.parse_args()
    engine = f"rules from {args.rules}" if args.rules else "no rules (store only)"
    print(
        f"Python {sys.version.split()[0]}, {os.cpu_count()} cores; daemon in its own process; "
        f"{engine}"
    )
    if args.only in (None, "sqlite"):
        run("sqlite", None, args)
    if args.only in (None, "postgresql"):
        if not args.postgres:
            print("postgresql  skipped: give --postgres URL or MIDDLEWARE_TEST_POSTGRES_URL")
            return
        url, name = postgres_database(args.postgres)
        try:
            run("postgresql", url, args)
        finally:
            drop_postgres(args.postgres, name)


if __name__ == "__main__":
    main()
