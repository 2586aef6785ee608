"""Whatever arrives on a connection, every byte ends up in exactly one raw row.

Random mixes of good frames, refused frames, noise, link characters and pauses go over a
real TCP connection into the real pipeline and store; afterwards the raw rows of that
connection, in order, are exactly the bytes sent, and the connection never failed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

import drivers
from middleware.astm.link import LinkSettings
from middleware.pipeline import ConnectionPipeline
from middleware.store import Store
from middleware.store.schema import raw_transmissions
from middleware.transport.tcp import TcpServer
from tests.peer import ENQ, EOT, StreamPeer, frame, frames_for

RECORDS = [
    b"H|\\^&|||RANDOM",
    b"P|1||PAT9",
    b"O|1|S9||^^^GLU|R",
    b"R|1|^^^GLU|" + b"7" * 260 + b"|mmol/L||N||F",
    b"L|1|N",
]


def _pieces(rng: random.Random) -> list[bytes]:
    """What an unruly analyser line might carry, one write at a time."""
    out: list[bytes] = []
    for _ in range(rng.randint(5, 25)):
        kind = rng.choice(["message", "noise", "enq", "eot", "corrupt", "half", "frames"])
        if kind == "message":
            out += [ENQ, *frames_for(RECORDS), EOT]
        elif kind == "noise":
            out.append(rng.randbytes(rng.randint(1, 300)))
        elif kind == "enq":
            out.append(ENQ)
        elif kind == "eot":
            out.append(EOT)
        elif kind == "corrupt":
            good = frame(rng.randint(0, 7), rng.choice(RECORDS) + b"\r")
            spot = rng.randrange(len(good))
            out.append(good[:spot] + bytes([good[spot] ^ 0x20]) + good[spot + 1 :])
        elif kind == "half":
            good = frame(1, rng.choice(RECORDS) + b"\r")
            out.append(good[: rng.randrange(1, len(good))])
        else:
            out += rng.sample(frames_for(RECORDS), rng.randint(1, 4))
    return out


async def _raw_rows(tmp_path: Path, pieces: list[bytes], pause: Callable[[], float]
                   ) -> list[tuple[int, bytes, str]]:  # fmt: skip
    """Send ``pieces`` one write at a time, ``pause()`` seconds apart, into the real
    pipeline and store; the connection's raw rows (offset, bytes, outcome) in order."""
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", drivers.get("generic"), store)
    server = TcpServer("127.0.0.1", 0, LinkSettings(frame_timeout=0.2), pipeline)
    async with server:
        peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
        for piece in pieces:
            await peer.write(piece)
            await asyncio.sleep(pause())
        await peer.close()
        for _ in range(200):
            if pipeline.channel is not None and pipeline.channel.closed:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    t = raw_transmissions.c
    rows = store.read(
        lambda conn: conn.execute(
            select(t.stream_offset, t.data, t.outcome).order_by(t.stream_offset)
        ).all()
    )
    store.close()
    return [(start, bytes(data), outcome) for start, data, outcome in rows]


def _assert_every_byte_once(rows: list[tuple[int, bytes, str]], sent: bytes) -> None:
    offset = 0
    for start, data, _ in rows:
        assert start == offset
        offset += len(data)
    assert b"".join(data for _, data, _ in rows) == sent


@pytest.mark.parametrize("seed", range(12))
async def test_every_byte_lands_in_one_raw_row_whatever_is_sent(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    pieces = _pieces(rng)
    # sometimes past the timer
    rows = await _raw_rows(tmp_path, pieces, lambda: rng.choice([0] * 6 + [0.01, 0.25]))
    _assert_every_byte_once(rows, b"".join(pieces))


async def test_a_flood_of_enq_makes_a_few_rows_not_one_per_enq(tmp_path: Path) -> None:
    """Each bare ENQ is a transfer of its own; kept one row (and one commit) each, a
    flood would queue a write per ENQ ahead of every other analyser's messages."""
    message = [ENQ, *frames_for(RECORDS), EOT]
    pieces = [ENQ * 20_000, EOT, *message, ENQ * 5_000 + EOT, ENQ * 3]
    rows = await _raw_rows(tmp_path, pieces, lambda: 0.0)
    _assert_every_byte_once(rows, b"".join(pieces))
    # One write at a time, each taking what came meanwhile: how many depends on the
    # machine's speed, a handful to a few dozen, never one per ENQ.
    assert len(rows) < 250, [(start, len(data), outcome) for start, data, outcome in rows]
    assert [outcome for _, _, outcome in rows].count("message") == 1
    assert {outcome for _, _, outcome in rows} == {"control", "message"}
