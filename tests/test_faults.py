"""Faults in the database under a stream of messages: what the analyser saw ACKed is kept.

Run against the daemon as a separate process and an analyser peer that behaves as E1381
asks of a sender (a refused frame is sent again, up to six times; a failed transfer is
started again later).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon import DaemonProcess, connect, free_port, query
from tests.peer import ACK, ENQ, EOT, StreamPeer, frames_for, send_frames_retrying, send_message


def message(n: int) -> list[bytes]:
    return [
        b"H|\\^&|||FAULT-TEST|||||||P|LIS2-A2|20260301080000",
        b"P|1||PAT%03d" % n,
        b"O|1|F%04d||^^^GLU\\^^^K|R" % n,
        b"R|1|^^^GLU|%d.1|mmol/L||N||F||||20260301075900" % n,
        b"R|2|^^^K|4.%d|mmol/L||N||F||||20260301075900" % (n % 10),
        b"L|1|N",
    ]


@pytest.fixture
def postgres_only(postgres_url: str) -> Iterator[str]:
    yield postgres_url
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def _terminate_backends(url: str, stop: threading.Event, killed: list[int]) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(0.12):
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchall()
            killed.append(sum(1 for (done,) in rows if done))


def test_postgresql_backends_terminated_mid_stream_lose_nothing_acknowledged(
    tmp_path: Path, postgres_only: str
) -> None:
    port = free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}],
        database_url=postgres_only,
    )
    total = 40
    acknowledged: list[int] = []
    stop = threading.Event()
    killed: list[int] = []

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        for n in range(total):
            for _ in range(10):
                if await send_frames_retrying(peer, frames_for(message(n))):
                    acknowledged.append(n)
                    break
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.02)
        await peer.close()

    daemon.start()
    killer = threading.Thread(target=_terminate_backends, args=(postgres_only, stop, killed))
    killer.start()
    try:
        asyncio.run(analyser())
    finally:
        stop.set()
        killer.join()
        daemon.stop()

    assert sum(killed) > 5, "the backends were not terminated during the stream"
    assert acknowledged == list(range(total))
    per_specimen = dict(
        query(postgres_only, "SELECT specimen_id, count(*) FROM results GROUP BY specimen_id")
    )
    assert per_specimen == {f"F{n:04d}": 2 for n in range(total)}
    assert query(postgres_only, "SELECT count(*) FROM messages") == [(total,)]
    # Whole messages only: every stored message has all six records.
    assert query(postgres_only, "SELECT min(record_count) FROM messages") == [(6,)]


def test_an_analyser_flooding_enq_holds_up_no_other_and_every_byte_is_kept(
    tmp_path: Path, database_url: str
) -> None:
    """Bare ENQs by the hundred thousand on one instrument's line: another analyser's
    message is taken meanwhile within its ordinary timers, and the flood is kept whole."""
    flooded, other = free_port(), free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "flood", "transport": "tcp-server", "host": "127.0.0.1", "port": flooded},
         {"name": "calm", "transport": "tcp-server", "host": "127.0.0.1", "port": other}],
        database_url=database_url,
    )  # fmt: skip
    flood = ENQ * 200_000 + EOT

    async def analysers() -> float:
        noisy = StreamPeer(*await connect(flooded))
        noisy.writer.write(flood)
        # Its replies are read, as an analyser does: a peer that closes on unread data
        # resets the connection, and the kernel drops what the daemon had not read yet.
        replies = asyncio.create_task(noisy.read(200_000, timeout=60))
        await asyncio.sleep(0.2)  # the daemon is busy with it
        calm = StreamPeer(*await connect(other))
        started = time.monotonic()
        await send_message(calm, message(1))  # every reply within 5 s, or it fails
        taken = time.monotonic() - started
        await calm.close()
        assert set(await replies) == {ACK[0]}
        await noisy.close()
        return taken

    daemon.start()
    try:
        taken = asyncio.run(analysers())
        deadline = time.monotonic() + 60
        kept = 0
        while kept < len(flood) and time.monotonic() < deadline:
            time.sleep(0.2)
            [(kept,)] = query(
                database_url,
                "SELECT coalesce(sum(length(data)), 0) FROM raw_transmissions "
                "WHERE instrument = 'flood'",
            )
        assert daemon.process is not None and daemon.process.poll() is None
    finally:
        daemon.stop()
    assert taken < 5.0
    assert kept == len(flood)
    [(rows,)] = query(
        database_url, "SELECT count(*) FROM raw_transmissions WHERE instrument = 'flood'"
    )
    assert rows < 2_000  # a write at a time, not a row per ENQ
    assert query(database_url, "SELECT DISTINCT specimen_id FROM results") == [("F0001",)]
