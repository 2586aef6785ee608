"""The thin shell that runs an E1381 :class:`~middleware.astm.link.Link` over a byte stream.

TCP (either direction) and serial lines all come down to an asyncio reader and writer;
this module reads, feeds the link, writes what it says, arms its timer and hands its
events to a handler. A :class:`TextReceived` asks for a commit (see the link's rule): the
shell awaits the handler and tells the link the outcome, ACK when it returned, NAK when it
raised. Every byte read is kept in :attr:`LinkChannel.received` until the handler has
stored it; when the connection ends, for whatever reason, the handler hears
:class:`ConnectionClosed` so it can keep what is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import structlog

from middleware.astm.link import (
    Event,
    Link,
    LinkSettings,
    MessageSent,
    SendFailed,
    State,
    TextReceived,
)
from middleware.sniff import spoken_on_astm_line
from middleware.transport.received import ReceivedBytes

log = structlog.get_logger("middleware.transport")
#: Link events handled in a row before the other connections get their turn.
_FAIR_SHARE = 64
#: Bytes read ahead of the link, at most (as an asyncio stream buffers).
_READ_AHEAD = 1 << 16


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """Not from the link: the connection is gone (peer closed it, an error, shutdown).
    ``end`` is the offset past the last byte received."""

    reason: str
    end: int


@dataclass(frozen=True, slots=True)
class BytesPiling:
    """Not from the link: more bytes than ``pile_limit`` are waiting for a row (noise that
    never makes a frame, say); ``end`` is where they stop."""

    end: int


class ByteStream(Protocol):
    """What a channel reads from: an asyncio StreamReader, or anything that reads like one
    (a simulator's wire that commits faults)."""

    async def read(self, n: int = -1) -> bytes: ...


class ByteSink(Protocol):
    """What a channel writes to: an asyncio StreamWriter, or anything that writes like one."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    def is_closing(self) -> bool: ...


ChannelEvent = Event | ConnectionClosed | BytesPiling
EventHandler = Callable[["LinkChannel", ChannelEvent], Awaitable[None]]


class SendError(Exception):
    """A message could not be delivered (the peer refused it, timed out, or went away)."""


async def _ignore(_channel: LinkChannel, _event: ChannelEvent) -> None:
    return None


def _settle_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LinkChannel:
    """One connection: a link state machine driven over ``reader`` and ``writer``."""

    def __init__(
        self,
        reader: ByteStream,
        writer: ByteSink,
        settings: LinkSettings | None = None,
        handler: EventHandler | None = None,
        *,
        name: str = "astm",
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.link = Link(settings)
        self.handler = handler or _ignore
        self.name = name
        self.id = secrets.token_hex(8)
        """Tells this connection from every other, across restarts too."""
        self.clock = clock
        self.wallclock = wallclock
        self.log = log.bind(connection=name, connection_id=self.id)
        self.received = ReceivedBytes()
        """What was read and is not yet in a stored row, exactly as it came off the wire."""
        # Twice the largest message the link takes, with its framing: a message never
        # has to be cut, and a connection never holds much more than that.
        self.pile_limit = 2 * self.link.settings.max_message_bytes + (1 << 16)
        self._arrived: deque[bytes | Exception] = deque()
        self._waiting_bytes = 0
        self._room: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._woken = False
        self._sent: dict[int, asyncio.Future[None]] = {}
        self._closing = False
        self._foreign_said = False
        self.closed = False

    def close(self) -> None:
        """End the connection from our side (the handler still hears ConnectionClosed).

        The link ends first (see :meth:`Link.close`): a message we are sending is cut with
        EOT and nothing received from now on is answered. A final frame whose commit is
        under way keeps the connection open until it is answered: the analyser then has
        the ACK of what was kept, rather than sending it again.
        """
        self._closing = True
        self.link.close()
        with contextlib.suppress(Exception):
            self._flush()
            if self.link.state is not State.AWAITING_DECISION:
                self.writer.close()
        self._wake()

    async def send(self, records: Sequence[bytes]) -> None:
        """Send one message (records without terminators); returns once the peer has it.

        Raises SendError when the link gives up on it.
        """
        if self.closed:
            raise SendError(f"{self.name}: connection closed")
        message_id = self.link.send_message(records, self.clock())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sent[message_id] = done
        self._flush()
        self._wake()
        await done

    def _say_foreign(self, data: bytes) -> None:
        """Once per connection: the analyser speaks another protocol than ASTM (its bytes
        are kept as noise all the same)."""
        found = spoken_on_astm_line(data)
        if found is not None:
            spoken = found[0]
            self._foreign_said = True
            self.log.error("the analyser speaks another protocol", protocol=spoken.protocol,
                           advice=spoken.advice)  # fmt: skip

    async def run(self) -> None:
        """Serve the connection until the peer closes it or the task is cancelled."""
        # One task reads for the life of the connection and this one waits on a single
        # future per turn: a read task and asyncio.wait() per frame were a sixth of the
        # event loop's work for each frame.
        pump = asyncio.get_running_loop().create_task(self._pump())
        reason = "closed by the middleware"
        try:
            while not self._closing:
                self._flush()
                try:
                    await self.writer.drain()
                except (ConnectionError, OSError):
                    # Our side of the connection failed (an ACK to a peer that had already
                    # closed): what was read before still goes to the link, which may
                    # complete a message with it; the read's own error comes after it.
                    if not self._arrived:
                        raise
                await self._turn()
                if self._arrived:
                    data = self._take()
                    if isinstance(data, BaseException):
                        raise data
                    if not data:
                        if not self._closing:  # not the end of our own close()
                            reason = "peer closed the connection"
                        self.log.info(reason)
                        return
                    self.received.add(data, self.wallclock())
                    if not self._foreign_said:
                        self._say_foreign(data)
                    self.link.receive_data(data, self.clock())
                elif not self._closing:
                    self.link.handle_timer(self.clock())
                await self._dispatch()
                if len(self.received) > self.pile_limit:
                    await self._handle(BytesPiling(self.link.received))
        except (ConnectionError, OSError) as exc:
            reason = f"connection lost: {exc}"
            self.log.warning("connection lost", error=str(exc))
        except asyncio.CancelledError:
            reason = "closed at shutdown"
            raise
        finally:
            pump.cancel()
            self.link.close()
            while self._arrived:
                late = self._take()
                if isinstance(late, bytes) and late:
                    # Read but not yet looked at: kept like every other byte received.
                    self.received.add(late, self.wallclock())
                    self.link.receive_data(late, self.clock())
            self._close()
            # What this connection received and nobody kept yet is kept now.
            await self._handle(ConnectionClosed(reason, self.link.received))

    async def _pump(self) -> None:
        """Read as bytes come, each read handed to :meth:`run` in order; then the end of
        the stream (b"") or the error that ended it. Reading stops while more than
        ``_READ_AHEAD`` bytes wait, as it would if each read waited for the last."""
        loop = asyncio.get_running_loop()
        while True:
            while self._waiting_bytes > _READ_AHEAD:
                self._room = loop.create_future()
                await self._room
            try:
                data = await self.reader.read(65536)
            except Exception as exc:  # run() raises it in its place, after the bytes before it
                self._arrive(exc)
                return
            self._arrive(data)
            if not data:
                return

    def _arrive(self, data: bytes | Exception) -> None:
        self._arrived.append(data)
        if isinstance(data, bytes):
            self._waiting_bytes += len(data)
        self._nudge()

    def _take(self) -> bytes | Exception:
        data = self._arrived.popleft()
        if isinstance(data, bytes):
            self._waiting_bytes -= len(data)
            room = self._room
            if room is not None and not room.done() and self._waiting_bytes <= _READ_AHEAD:
                room.set_result(None)
        return data

    async def _turn(self) -> None:
        """Until bytes have arrived, someone woke the channel (a message to send, a
        close), or the link's deadline has come."""
        if self._arrived or self._woken:
            self._woken = False
            return
        deadline = self.link.deadline
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None
        if deadline is not None:
            timer = loop.call_later(max(0.0, deadline - self.clock()), _settle_waiter, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            self._woken = False
            if timer is not None:
                timer.cancel()

    def _nudge(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            _settle_waiter(waiter)

    def _wake(self) -> None:
        self._woken = True
        self._nudge()

    async def _dispatch(self) -> None:
        handled = 0
        while (event := self.link.next_event()) is not None:
            handled += 1
            if handled % _FAIR_SHARE == 0:
                # One read may hold tens of thousands of events (an analyser flooding
                # ENQ): the other connections get their turn between every few.
                await asyncio.sleep(0)
            if isinstance(event, MessageSent):
                self._settle(event.message_id, None)
            elif isinstance(event, SendFailed):
                self._settle(event.message_id, SendError(f"{self.name}: {event.reason}"))
            if isinstance(event, TextReceived):
                await self._reply_to_text(event)
            else:
                await self._handle(event)
            self._flush()

    async def _reply_to_text(self, event: TextReceived) -> None:
        """The link waits for the commit's outcome: ACK once kept, NAK if not, so that the
        analyser sends it again. A commit still waiting when the analyser's reply timer is
        about to run out (a lock another process holds) is refused then: a reply sent
        after it would be read as the reply to what the analyser sends next. The commit
        goes on, and this connection's next frames wait for it; the repeat then finds the
        message kept."""
        # Counted from the frame's arrival, as the analyser counts: a frame read from what
        # waited behind a slow commit has waited that long already.
        arrived = self.received.arrived(event.end)
        waited = (self.wallclock() - arrived).total_seconds() if arrived is not None else 0.0
        began = time.monotonic() - waited
        left = max(0.0, self.link.settings.reply_deadline - waited)
        handling = asyncio.ensure_future(self.handler(self, event))
        try:
            try:
                await asyncio.wait_for(asyncio.shield(handling), left)
            except TimeoutError:
                self.log.warning("text not kept in time; refused",
                                 waited=round(time.monotonic() - began, 1))  # fmt: skip
                self.link.refuse_in_time()
                self._flush()
                await handling
        except asyncio.CancelledError:
            handling.cancel()
            raise
        except Exception:
            self.log.exception("text not kept; refused")
            self.link.refuse(self.clock())
        else:
            self.link.acknowledge(self.clock())

    async def _handle(self, event: ChannelEvent) -> None:
        try:
            await self.handler(self, event)
        except Exception:
            self.log.exception("event handler failed", link_event=type(event).__name__)

    def _settle(self, message_id: int, error: Exception | None) -> None:
        future = self._sent.pop(message_id, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def _flush(self) -> None:
        data = self.link.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def _close(self) -> None:
        self.closed = True
        self._closing = True
        for message_id in list(self._sent):
            self._settle(message_id, SendError(f"{self.name}: connection closed"))
        with contextlib.suppress(Exception):
            self.writer.close()
