"""An analyser written for the tests, independently of the code under test.

It speaks just enough E1381 to drive the middleware from the other side of a real
socket or pseudo-terminal: frames are built here from the standard's description.
"""

from __future__ import annotations

import asyncio
import os

ENQ, ACK, NAK, EOT, STX, ETX, ETB = b"\x05", b"\x06", b"\x15", b"\x04", b"\x02", b"\x03", b"\x17"


def frame(number: int, text: bytes, last: bool = True) -> bytes:
    body = str(number % 8).encode() + text + (ETX if last else ETB)
    return STX + body + b"%02X" % (sum(body) % 256) + b"\r\n"


def frames_for(records: list[bytes], size: int = 240) -> list[bytes]:
    out: list[bytes] = []
    number = 1
    for record in records:
        text = record + b"\r"
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        for i, piece in enumerate(pieces):
            out.append(frame(number, piece, last=i == len(pieces) - 1))
            number += 1
    return out


class StreamPeer:
    """The analyser end over asyncio streams (TCP)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, n: int, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readexactly(n), timeout)

    async def read_until(self, end: bytes, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(end), timeout)

    async def close(self) -> None:
        self.writer.close()


class PtyPeer:
    """The analyser end of a pseudo-terminal pair: the middleware opens the other end."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)
        self._buffer = bytearray()
        self._more = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.master, self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, 4096)
        except OSError:
            return
        self._buffer += data
        self._more.set()

    async def write(self, data: bytes) -> None:
        os.write(self.master, data)

    async def read(self, n: int, timeout: float = 5.0) -> bytes:
        async def wait() -> bytes:
            while len(self._buffer) < n:
                self._more.clear()
                await self._more.wait()
            out = bytes(self._buffer[:n])
            del self._buffer[:n]
            return out

        return await asyncio.wait_for(wait(), timeout)

    async def read_until(self, end: bytes, timeout: float = 5.0) -> bytes:
        async def wait() -> bytes:
            while end not in self._buffer:
                self._more.clear()
                await self._more.wait()
            cut = self._buffer.index(end) + len(end)
            out = bytes(self._buffer[:cut])
            del self._buffer[:cut]
            return out

        return await asyncio.wait_for(wait(), timeout)

    async def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.master)
        os.close(self.master)
        os.close(self.slave)


Peer = StreamPeer | PtyPeer


async def send_frames(peer: Peer, frames: list[bytes]) -> None:
    """Open a transfer and send ``frames``, expecting an ACK for ENQ and each; no EOT."""
    await peer.write(ENQ)
    assert await peer.read(1) == ACK
    for data in frames:
        await peer.write(data)
        assert await peer.read(1) == ACK


async def send_message(peer: Peer, records: list[bytes]) -> None:
    """Send a message as an analyser does, expecting an ACK for ENQ and every frame."""
    await send_frames(peer, frames_for(records))
    await peer.write(EOT)


async def receive_message(peer: Peer) -> list[bytes]:
    """Receive a message as an analyser does, ACKing everything; returns its record texts."""
    assert await peer.read(1) == ENQ
    await peer.write(ACK)
    texts: list[bytes] = []
    current = b""
    while True:
        first = await peer.read(1)
        if first == EOT:
            return texts
        assert first == STX, first
        data = await peer.read_until(b"\r\n")
        body, check = data[:-4], data[-4:-2]
        assert b"%02X" % (sum(body) % 256) == check
        current += body[1:-1]
        if body[-1:] == ETX:
            texts.append(current.rstrip(b"\r"))
            current = b""
        await peer.write(ACK)


def wire_units(data: bytes) -> list[bytes]:
    """Cut a raw capture into what an analyser writes one at a time: ENQ, each frame
    (STX to its CR LF), EOT. Anything else between them is dropped."""
    units: list[bytes] = []
    i = 0
    while i < len(data):
        byte = data[i : i + 1]
        if byte in (ENQ, EOT):
            units.append(byte)
            i += 1
        elif byte == STX:
            end = data.index(b"\n", i) + 1
            units.append(data[i:end])
            i = end
        else:
            i += 1
    return units


async def replay(peer: Peer, data: bytes) -> None:
    """Send a raw capture as the analyser did, waiting for the reply to ENQ and each frame."""
    for unit in wire_units(data):
        await peer.write(unit)
        if unit != EOT:
            assert await peer.read(1) == ACK


async def send_frames_retrying(
    peer: Peer, frames: list[bytes], attempts: int = 6, reply_timeout: float = 15.0
) -> bool:
    """Send one transfer as E1381 asks of a sender: each frame again on NAK, up to
    ``attempts`` times, then EOT. True when every frame was ACKed (EOT sent after)."""
    await peer.write(ENQ)
    if await peer.read(1, reply_timeout) != ACK:
        return False
    for data in frames:
        for _ in range(attempts):
            await peer.write(data)
            if await peer.read(1, reply_timeout) == ACK:
                break
        else:
            await peer.write(EOT)
            return False
    await peer.write(EOT)
    return True
