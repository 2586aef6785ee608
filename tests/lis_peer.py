"""A LIS for tests: an MLLP server written apart from the middleware's framer, that
records what it receives and answers as told (AA, AE, AR, or nothing)."""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass, field

from middleware.hl7.segments import encoding_of

_BLOCK = re.compile(rb"\x0b(.*?)\x1c\r", re.DOTALL)


@dataclass
class Received:
    control_id: str
    specimen_id: str
    text: str
    raw: bytes = b""


@dataclass
class LisPeer:
    answer: str = "AA"
    """What every message gets: AA, AE, AR, or "" for no answer at all."""
    delay: float = 0.0
    """Seconds before each answer."""
    hang_up_at: set[int] = field(default_factory=set)
    """Numbers of the messages (the first received is 1) that get no answer: the LIS
    closes the connection instead."""
    unanswered: set[int] = field(default_factory=set)
    """Numbers of the messages that get no answer, the connection kept."""
    hang_up_after_answer: float | None = None
    """Close the connection this many seconds after each answer, as some LISes do; what
    comes meanwhile is not read."""
    trailer: bytes = b"\x1c\r"
    """What ends an answer's block (some LISes send FS without its CR)."""
    segment_end: str = "\r"
    """What separates an answer's segments (some LISes send CR LF)."""
    names_message: bool = True
    """Whether an answer's MSA-2 names the message it answers (a LIS that could not read
    a message may refuse it with MSA-2 empty)."""
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _connections: list[asyncio.StreamWriter] = field(default_factory=list)

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> int:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port or self.port, ssl=tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Down: the port closed, every connection dropped."""
        if self._server is not None:
            self._server.close()
            for writer in self._connections:
                writer.close()
            await self._server.wait_closed()
            self._server = None
        self._connections.clear()

    async def wait_for(self, count: int, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.received) < count:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the LIS got {len(self.received)} messages, not {count}")
            await asyncio.sleep(0.05)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.append(writer)
        buffer = b""
        try:
            while data := await reader.read(65536):
                buffer += data
                while match := _BLOCK.search(buffer):
                    buffer = buffer[match.end() :]
                    raw = match.group(1)
                    text = raw.decode(encoding_of(raw, "utf-8"))
                    segments = {s.split("|")[0]: s.split("|") for s in text.split("\r")}
                    control_id = segments["MSH"][9]
                    specimen_id = segments["OBR"][3] if "OBR" in segments else ""
                    self.received.append(Received(control_id, specimen_id, text, raw))
                    if len(self.received) in self.hang_up_at:
                        return
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    if self.answer and len(self.received) not in self.unanswered:
                        named = control_id if self.names_message else ""
                        ack = _ack(named, self.answer).replace(b"\r", self.segment_end.encode())
                        writer.write(b"\x0b" + ack + self.trailer)
                        await writer.drain()
                        if self.hang_up_after_answer is not None:
                            await asyncio.sleep(self.hang_up_after_answer)
                            return
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


def _ack(control_id: str, code: str) -> bytes:
    reason = "|unknown test code" if code != "AA" else ""
    return (
        f"MSH|^~\\&|LIS|LAB|LIS-MIDDLEWARE|LAB|20261130120000||ACK^R01^ACK|A{control_id}|P|2.5.1"
        f"\rMSA|{code}|{control_id}{reason}"
    ).encode()
