"""Whatever arrives on a connection, every byte ends up in exactly one raw row.

Random mixes of good frames, refused frames, noise, link characters and pauses go over a
real TCP connection into the real pipeline and store; afterwards the raw rows of that
connection, in order, are exactly the bytes sent, and the connection never failed.
"""

from __future__ import annotations

import asyncio
import random
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


@pytest.mark.parametrize("seed", range(12))
async def test_every_byte_lands_in_one_raw_row_whatever_is_sent(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(f"sqlite:///{tmp_path / 'm.db'}")
    pipeline = ConnectionPipeline("an1", drivers.get("generic"), store)
    server = TcpServer("127.0.0.1", 0, LinkSettings(frame_timeout=0.2), pipeline)
    sent = bytearray()
    async with server:
        peer = StreamPeer(*await asyncio.open_connection("127.0.0.1", server.bound_port))
        for piece in _pieces(rng):
            await peer.write(piece)
            sent += piece
            await asyncio.sleep(rng.choice([0] * 6 + [0.01, 0.25]))  # sometimes past the timer
        await peer.close()
        for _ in range(200):
            if pipeline.channel is not None and pipeline.channel.closed:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
    rows = store.read(
        lambda conn: conn.execute(
            select(raw_transmissions.c.stream_offset, raw_transmissions.c.data).order_by(
                raw_transmissions.c.stream_offset
            )
        ).all()
    )
    store.close()
    offset = 0
    for start, data in rows:
        assert start == offset
        offset += len(data)
    assert b"".join(bytes(data) for _, data in rows) == bytes(sent)
