"""The thin shell that runs an E1381 :class:`~middleware.astm.link.Link` over a byte stream.

TCP (either direction) and serial lines all come down to an asyncio reader and writer;
this module reads, feeds the link, writes what it says, arms its timer and hands its
events to a handler. The handler is awaited before the link replies to a final frame,
so whatever it persists is durable before the analyser sees the ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from middleware.astm.link import (
    Event,
    Link,
    LinkSettings,
    MessageSent,
    SendFailed,
    State,
)

log = structlog.get_logger("middleware.transport")

EventHandler = Callable[["LinkChannel", Event], Awaitable[None]]


class SendError(Exception):
    """A message could not be delivered (the peer refused it, timed out, or went away)."""


async def _ignore(_channel: LinkChannel, _event: Event) -> None:
    return None


class LinkChannel:
    """One connection: a link state machine driven over ``reader`` and ``writer``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: LinkSettings | None = None,
        handler: EventHandler | None = None,
        *,
        name: str = "astm",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.link = Link(settings)
        self.handler = handler or _ignore
        self.name = name
        self.clock = clock
        self.log = log.bind(connection=name)
        self._wake = asyncio.Event()
        self._sent: dict[int, asyncio.Future[None]] = {}
        self._received = bytearray()
        self.closed = False

    def take_received(self) -> bytes:
        """The bytes read since the last call, exactly as they came off the wire."""
        data = bytes(self._received)
        self._received.clear()
        return data

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
        self._wake.set()
        await done

    async def run(self) -> None:
        """Serve the connection until the peer closes it or the task is cancelled."""
        reading: asyncio.Task[bytes] | None = None
        try:
            while True:
                self._flush()
                await self.writer.drain()
                deadline = self.link.deadline
                timeout = None if deadline is None else max(0.0, deadline - self.clock())
                if reading is None:
                    reading = asyncio.ensure_future(self.reader.read(65536))
                woken = asyncio.ensure_future(self._wake.wait())
                done, _ = await asyncio.wait(
                    {reading, woken}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                woken.cancel()
                self._wake.clear()
                if reading in done:
                    data = reading.result()
                    reading = None
                    if not data:
                        self.log.info("peer closed the connection")
                        return
                    self._received += data
                    self.link.receive_data(data, self.clock())
                else:
                    self.link.handle_timer(self.clock())
                await self._dispatch()
        except (ConnectionError, OSError) as exc:
            self.log.warning("connection lost", error=str(exc))
        finally:
            if reading is not None:
                reading.cancel()
            self._close()

    async def _dispatch(self) -> None:
        while True:
            event = self.link.next_event()
            if event is None:
                if self.link.state is not State.AWAITING_DECISION:
                    return
                # The handler has seen (and kept) the text of the final frame: answer now.
                self.link.acknowledge(self.clock())
                continue
            if isinstance(event, MessageSent):
                self._settle(event.message_id, None)
            elif isinstance(event, SendFailed):
                self._settle(event.message_id, SendError(f"{self.name}: {event.reason}"))
            try:
                await self.handler(self, event)
            except Exception:
                self.log.exception("event handler failed", link_event=type(event).__name__)
                if self.link.state is State.AWAITING_DECISION:
                    # Not kept, so not acknowledged: the analyser sends it again.
                    self.link.refuse(self.clock())
            self._flush()

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
        for message_id in list(self._sent):
            self._settle(message_id, SendError(f"{self.name}: connection closed"))
        with contextlib.suppress(Exception):
            self.writer.close()
