"""The analyser end of E1381, on the project's own link core, sending a scenario's plan.

The link runs in the instrument role over any byte stream (a TCP connection it makes or
accepts, a serial line, a pseudo-terminal). Every message is sent until the host has taken
it: a refused or interrupted one is sent again on the same or a new connection, so a fault
never loses a sample. Faults are committed between the link and the wire: the link itself
stays correct, as a real analyser's would, and the bytes are what change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

from middleware.astm.frames import ACK, ENQ, EOT, ETX, STX, checksum
from middleware.astm.link import Contention, LinkSettings, Role, TextReceived, TransferEnded
from middleware.transport.channel import ChannelEvent, LinkChannel, SendError
from middleware.transport.reconnect import Backoff
from simulators.profiles import Analyte, Profile, Sample
from simulators.scenarios import Step

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Opener = Callable[[], Awaitable[Streams]]

#: A byte no E1381 reply uses: the sender reads it as a NAK (the ACK was garbled).
_NOISE = 0x7F
#: Refusals of one message in a row after which the simulator gives up on the host.
MAX_ATTEMPTS = 10
#: Waits between attempts to reach a host that is not there (yet): short, as on a bench.
_RECONNECT = Backoff(initial=0.1, maximum=5.0, jitter=0.0)


class GaveUp(RuntimeError):
    """The simulated analyser cannot go on: the host keeps refusing, or the line is gone."""


@dataclass(frozen=True, slots=True)
class FaultSettings:
    slow_seconds: float = 35.0
    """slow-peer: the pause in the middle of a message, beyond the receiver's 30 s timer."""
    oversize_bytes: int = 2 << 20
    """oversize-frame: the size of the frame sent in place of the first one."""
    contention_wait: float = 10.0
    """enq-contention: how long one side's ENQ waits for the other's before going alone."""


class FaultyWire:
    """Sits between the link and the stream and commits one armed fault at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 faults: FaultSettings, on_commit: Callable[[str], None]) -> None:  # fmt: skip
        self.reader = reader
        self.writer = writer
        self.faults = faults
        self.on_commit = on_commit
        self.armed = ""
        self._frames = 0
        self._garble_next_ack = False
        self._paused: list[bytes] | None = None
        # enq-contention: armed before a host query; from its EOT on, our next ENQ and the
        # host's (its answer) are made to cross, whichever comes first waiting for the other.
        self._contending = False
        self._our_enq: asyncio.TimerHandle | None = None
        self._host_enq: asyncio.Future[None] | None = None

    def arm(self, fault: str) -> None:
        self.armed = fault
        self._frames = 0
        self._contending = False

    def _done(self) -> None:
        self.on_commit(self.armed)
        self.armed = ""

    # --- what the link writes -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._paused is not None:  # a slow peer's pause: everything after waits too
            self._paused.append(data)
            return
        if self.armed == "enq-contention":
            data = self._contend(data)
        elif data[:1] == bytes((STX,)):
            self._frames += 1
            data = self._frame(data)
        if data:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    def _frame(self, frame: bytes) -> bytes:
        fault = self.armed
        if fault == "bad-checksum":
            self._done()
            body = frame[1:-4]
            wrong = b"%02X" % ((int(checksum(body), 16) + 1) % 256)
            return frame[:1] + body + wrong + b"\r\n"
        if fault == "oversize-frame":
            self._done()
            body = b"1" + b"X" * self.faults.oversize_bytes + bytes((ETX,))
            self._write(bytes((STX,)) + body + checksum(body) + b"\r\n")
            return b""  # the link sends the real frame again when the host refuses this one
        if fault == "lost-ack" and frame[2:4] == b"L|":
            # The ACK of the message's last frame, sent once the host has kept it.
            self._done()
            self._garble_next_ack = True
        if fault == "drop-mid-message" and self._frames == 2:
            self._done()
            self._write(frame[: len(frame) // 2])
            self.writer.close()
            return b""
        if fault == "slow-peer" and self._frames == 2:
            self._done()
            self._paused = [frame]
            asyncio.get_running_loop().call_later(self.faults.slow_seconds, self._resume)
            return b""
        return frame

    def _resume(self) -> None:
        paused, self._paused = self._paused or [], None
        for data in paused:
            self._write(data)

    def _contend(self, data: bytes) -> bytes:
        """What of ``data`` goes out now; our ENQ after the query's EOT waits for the
        host's (or lets the host's, already read, through)."""
        if not self._contending:
            if EOT not in data:
                return data
            self._contending = True
        at = data.find(ENQ, data.find(EOT) + 1 if EOT in data else 0)
        if at < 0:
            return data
        self._write(data[:at])
        if self._host_enq is not None:  # the host's ENQ waits in read(): both cross now
            self._write(bytes((ENQ,)))
            self._done()
            self._host_enq.set_result(None)
        else:
            loop = asyncio.get_running_loop()
            self._our_enq = loop.call_later(self.faults.contention_wait, self._release_our_enq)
        return b""

    def _release_our_enq(self) -> None:
        if self._our_enq is not None:
            self._our_enq.cancel()
            self._our_enq = None
            self._done()
            self._write(bytes((ENQ,)))

    async def drain(self) -> None:
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()

    def is_closing(self) -> bool:
        return self.writer.is_closing()

    # --- what the host sends ------------------------------------------------------------

    async def read(self, n: int = -1) -> bytes:
        data = await self.reader.read(n)
        if self.armed == "enq-contention" and self._contending and ENQ in data:
            if self._our_enq is not None:
                self._release_our_enq()  # ours goes out before the link reads the host's
            else:
                await self._hold_host_enq()
        if self._garble_next_ack and ACK in data:
            self._garble_next_ack = False
            at = data.index(ACK)
            data = data[:at] + bytes((_NOISE,)) + data[at + 1 :]
        return data

    async def _hold_host_enq(self) -> None:
        """The host bid first: the link hears of it only once our own ENQ is out."""
        self._host_enq = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(self._host_enq, self.faults.contention_wait)
        except TimeoutError:  # we had nothing to send after all: no contention to make
            self.armed = ""
        finally:
            self._host_enq = None


@dataclass(slots=True)
class Tally:
    messages: int = 0
    results: int = 0
    controls: int = 0
    queries: int = 0
    resends: int = 0
    not_ordered: int = 0
    faults: int = 0
    contentions: int = 0


class Analyser:
    """Sends a plan's steps in order over connections ``open`` makes."""

    def __init__(
        self,
        profile: Profile,
        steps: list[Step],
        open_connection: Opener,
        *,
        rate: float | None = None,
        reply_timeout: float = 15.0,
        answer_timeout: float = 60.0,
        faults: FaultSettings | None = None,
        report: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.profile = profile
        self.steps = steps
        self.open_connection = open_connection
        self.rate = rate
        self.faults = faults or FaultSettings()
        slow = any(s.fault == "slow-peer" for s in steps)
        # Our own reply timer outlasts our pause: the host's frame timer is the one tested.
        self.settings = LinkSettings(
            role=Role.INSTRUMENT,
            reply_timeout=reply_timeout + (self.faults.slow_seconds if slow else 0.0),
        )
        self.answer_timeout = answer_timeout
        self.report = report or (lambda _line: None)
        self.warn = warn or self.report
        """Where trouble is said (a refused message, a host not reachable)."""
        # An analyser's clock: local time, written without a zone, as the daemon expects
        # unless an instrument's timezone says otherwise.
        self.clock = clock
        self.tally = Tally()
        self.sent: list[Sample] = []
        """The samples the host took, in order, each with the tests it was sent with."""
        self._channel: LinkChannel | None = None
        self._wire: FaultyWire | None = None
        self._task: asyncio.Task[None] | None = None
        self._answers: asyncio.Queue[list[bytes]] = asyncio.Queue()
        self._incoming: list[bytes] = []

    async def run(self) -> Tally:
        try:
            for step in self.steps:
                started = asyncio.get_running_loop().time()
                await self._step(step)
                if self.rate:
                    pause = 1 / self.rate - (asyncio.get_running_loop().time() - started)
                    await asyncio.sleep(max(0.0, pause))
        finally:
            await self.close()
        return self.tally

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._channel = self._task = None

    async def _step(self, step: Step) -> None:
        sample = step.sample
        if step.query:
            ordered = await self._ask(sample, step)
            run = tuple(m for m in sample.measured if m.analyte in ordered)
            sample = replace(sample, measured=run)
            if not sample.measured:
                self.tally.not_ordered += 1
                self.report(f"{sample.specimen_id}: nothing ordered, not run")
                return
        await self._send_sample(sample, step.fault if not step.query else "")

    async def _ask(self, sample: Sample, step: Step) -> list[Analyte]:
        while not self._answers.empty():
            self._answers.get_nowait()
        # enq-contention is armed with the query: the host's answer is what we cross.
        await self._send(self.profile.query([sample.specimen_id], self.clock()), step.fault)
        self.tally.queries += 1
        alongside = None
        if step.alongside is not None:
            alongside = asyncio.ensure_future(self._send_sample(step.alongside, ""))
        try:
            while True:
                answer = await asyncio.wait_for(self._answers.get(), self.answer_timeout)
                ordered = self.profile.ordered(answer)
                if sample.specimen_id in ordered:
                    return ordered[sample.specimen_id]
        except TimeoutError:
            self.report(f"{sample.specimen_id}: no answer to the host query")
            return []
        finally:
            if alongside is not None:
                await alongside

    async def _send_sample(self, sample: Sample, fault: str) -> None:
        await self._send(self.profile.message(sample, self.clock()), fault)
        self.sent.append(sample)
        self.tally.messages += 1
        if sample.is_control:
            self.tally.controls += len(sample.measured)
        else:
            self.tally.results += len(sample.measured)
        extra = f" ({fault})" if fault else ""
        self.report(f"{sample.specimen_id}: {sample.label}, {len(sample.measured)} results{extra}")

    async def _send(self, records: list[bytes], fault: str) -> None:
        """Send until the host has the message; the fault goes with the first attempt. A
        message refused :data:`MAX_ATTEMPTS` times in a row is given up, loudly: the host
        is not taking it, and trying on for ever would hide that."""
        for attempt in range(MAX_ATTEMPTS):
            channel, wire = await self._connection()
            if attempt == 0 and fault:
                wire.arm(fault)
            try:
                await channel.send(records)
                return
            except SendError as exc:
                self.tally.resends += 1
                self.warn(f"message not taken ({exc}); sending it again")
                await asyncio.sleep(min(0.2 * (attempt + 1), 2.0))
        raise GaveUp(f"the host did not take a message in {MAX_ATTEMPTS} attempts")

    async def _connection(self) -> tuple[LinkChannel, FaultyWire]:
        if self._channel is not None and not self._channel.closed:
            assert self._wire is not None
            return self._channel, self._wire
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        delays = _RECONNECT.delays()
        while True:
            try:
                reader, writer = await self.open_connection()
                break
            except OSError as exc:
                self.warn(f"cannot connect ({exc}); trying again")
                await asyncio.sleep(delays())
        wire = FaultyWire(reader, writer, self.faults, self._committed)
        channel = LinkChannel(wire, wire, self.settings, self._on_event,
                              name=f"{self.profile.name}-simulator")  # fmt: skip
        self._channel, self._wire = channel, wire
        self._task = asyncio.ensure_future(channel.run())
        return channel, wire

    def _committed(self, fault: str) -> None:
        self.tally.faults += 1
        self.report(f"fault committed: {fault}")

    async def _on_event(self, _channel: LinkChannel, event: ChannelEvent) -> None:
        # What the host sends us: answers to host queries, one record per frame group.
        if isinstance(event, TextReceived):
            self._incoming.extend(r for r in event.text.split(b"\r") if r)
        elif isinstance(event, TransferEnded) and self._incoming:
            self._answers.put_nowait(self._incoming)
            self._incoming = []
        elif isinstance(event, Contention):
            self.tally.contentions += 1
            self.report("both sides bid for the line (ENQ against ENQ): we try again")


# --- where the bytes go -------------------------------------------------------------------


def tcp_client(host: str, port: int) -> Opener:
    async def open_connection() -> Streams:
        return await asyncio.open_connection(host, port)

    return open_connection


class TcpListener:
    """Waits for the host to connect to us (the daemon's tcp-client transport). The port is
    bound at once, so the host never finds it closed (nor, retrying, takes it itself as
    the source port of a connection to itself)."""

    def __init__(self, host: str, port: int) -> None:
        self._socket = socket.create_server((host, port))
        self.port = int(self._socket.getsockname()[1])
        self._server: asyncio.Server | None = None
        self._accepted: asyncio.Queue[Streams] = asyncio.Queue()

    async def start(self) -> int:
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, sock=self._socket)
        return self.port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._accepted.put((reader, writer))

    async def open_connection(self) -> Streams:
        await self.start()
        return await self._accepted.get()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._socket.close()


def serial_line(device: str, baudrate: int = 9600) -> Opener:
    async def open_connection() -> Streams:
        import serial_asyncio_fast

        return await serial_asyncio_fast.open_serial_connection(url=device, baudrate=baudrate)

    return open_connection


class PseudoTerminal:
    """A pseudo-terminal pair: the host opens :attr:`path` as its serial port, we hold the
    other end, so a serial link runs with no hardware."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self._used = False

    async def open_connection(self) -> Streams:
        if self._used:  # one pair, one connection: a pty does not reconnect
            raise GaveUp("the pseudo-terminal was closed; it cannot be opened again")
        self._used = True
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        await loop.connect_read_pipe(lambda: protocol, os.fdopen(self.master, "rb", 0))
        transport, write_protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(os.dup(self.master), "wb", 0)
        )
        writer = asyncio.StreamWriter(transport, write_protocol, reader, loop)
        return reader, writer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.slave)
