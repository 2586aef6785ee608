"""Ingest, per connection: link events -> message -> records -> driver -> store.

The pipeline is the link channel's event handler. The channel awaits it before replying
to a frame that ends a record, and the pipeline returns from the frame that ends a
message (its L record) only once the raw bytes and what the driver read are committed:
no ACK ever precedes its commit. What cannot be read or mapped goes to quarantine with the
reason, and the connection carries on.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

import structlog
from sqlalchemy import Connection

from drivers import Driver
from middleware.assessment import assess_message
from middleware.astm.link import (
    Event,
    FrameRejected,
    TextReceived,
    TimedOut,
    TransferEnded,
    TransferStarted,
)
from middleware.astm.records import decode_message, encode_record, split_records
from middleware.domain import InstrumentMessage
from middleware.engine.engine import Engine
from middleware.store import Store
from middleware.store.repository import Delivery, Stored, orders_for, store_delivery, utcnow
from middleware.transport.channel import LinkChannel, SendError

log = structlog.get_logger("middleware.pipeline")


def _record_type(line: str) -> str:
    return line[:1].upper()


class ConnectionPipeline:
    """Turns what one connection receives into stored messages."""

    def __init__(
        self,
        instrument: str,
        driver: Driver,
        store: Store,
        *,
        encoding: str = "latin-1",
        clock: Callable[[], datetime] = utcnow,
        engine: Engine | None = None,
        timezone: tzinfo | None = None,
    ) -> None:
        self.instrument = instrument
        self.driver = driver
        self.store = store
        self.engine = engine
        # Analysers send wall-clock times without a zone: the site's local time by default.
        self.timezone = timezone or datetime.now().astimezone().tzinfo or UTC
        """Decides about every result in the transaction that stores it; None: store only."""
        self.encoding = encoding
        self.clock = clock
        self.log = log.bind(instrument=instrument)
        self._lines: list[str] = []
        self._started_at: datetime | None = None
        self._answers: list[list[bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.stored: list[Stored] = []

    async def __call__(self, channel: LinkChannel, event: Event) -> None:
        if isinstance(event, TextReceived):
            await self._text(channel, event.text)
        elif isinstance(event, TransferStarted):
            self._started_at = self.clock()
        elif isinstance(event, TransferEnded):
            await self._unfinished(channel, "transfer ended before the message's L record")
            self._send_answers(channel)
        elif isinstance(event, TimedOut) and event.phase == "frame":
            await self._unfinished(channel, f"link timed out: {event.detail}")
        elif isinstance(event, FrameRejected):
            self.log.warning("frame refused", kind=event.kind, detail=event.detail,
                             offset=event.offset)  # fmt: skip

    async def _text(self, channel: LinkChannel, text: bytes) -> None:
        lines = split_records(text.decode(self.encoding, errors="replace"))
        for line in lines:
            if _record_type(line) == "H" and self._lines:
                await self._unfinished(channel, "a new H record began before the L record")
            self._lines.append(line)
            if _record_type(line) == "L":
                await self._complete(channel)

    async def _unfinished(self, channel: LinkChannel, reason: str) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        await self._keep(self._delivery(channel, lines, problems=[reason]))

    def _delivery(
        self,
        channel: LinkChannel,
        lines: list[str],
        *,
        problems: list[str],
        record_count: int = 0,
        reading: InstrumentMessage | None = None,
    ) -> Delivery:
        """What this connection received since the last delivery, with its bytes."""
        return Delivery(
            connection=channel.name,
            instrument=self.instrument,
            raw=channel.take_received(),
            received_at=self._started_at or self.clock(),
            text="\r".join(lines),
            record_count=record_count,
            reading=reading,
            problems=problems,
        )

    async def _complete(self, channel: LinkChannel) -> None:
        lines, self._lines = self._lines, []
        decoded = decode_message(lines)
        problems = [str(e) for e in decoded.errors]
        reading: InstrumentMessage | None = None
        if decoded.records:
            try:
                reading = self.driver.read(decoded.records).in_timezone(self.timezone)
            except Exception as exc:  # a driver must never take the connection down
                self.log.exception("driver failed")
                problems.append(f"driver {self.driver.name} failed: {exc!r}")
        else:
            problems.append("no record could be read")
        delivery = self._delivery(
            channel, lines, problems=problems, record_count=len(decoded.records), reading=reading
        )
        stored = await self._keep(delivery)
        if reading is not None and reading.queries and not stored.duplicate:
            await self._prepare_answers(reading)

    async def _keep(self, delivery: Delivery) -> Stored:
        engine = self.engine

        def work(conn: Connection) -> Stored:
            stored = store_delivery(conn, delivery)
            if engine is not None and delivery.reading is not None and not stored.duplicate:
                assess_message(conn, engine, stored, delivery.reading, self.clock())
            return stored

        stored = await self.store.write(work)
        self.stored.append(stored)
        self.log.info(
            "message kept",
            message_id=stored.message_id,
            raw_id=stored.raw_id,
            results=stored.results,
            controls=stored.controls,
            duplicate=stored.duplicate,
            quarantined=stored.quarantined,
            problems=delivery.problems or None,
        )
        return stored

    async def _prepare_answers(self, reading: InstrumentMessage) -> None:
        for query in reading.queries:
            held = await self.store.read_async(
                functools.partial(orders_for, specimen_ids=query.specimen_ids)
            )
            records = self.driver.answer_query(query, held, self.clock())
            self._answers.append(
                [encode_record(r, self.driver.delimiters).encode(self.encoding) for r in records]
            )

    def _send_answers(self, channel: LinkChannel) -> None:
        # Sent once the analyser has given the line back; not awaited here, since the
        # channel waits for this handler before it reads the replies.
        for records in self._answers:
            task = asyncio.create_task(self._send(channel, records))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._answers.clear()

    async def _send(self, channel: LinkChannel, records: list[bytes]) -> None:
        try:
            await channel.send(records)
            self.log.info("host query answered", records=len(records))
        except SendError as exc:
            self.log.warning("host query answer not delivered", error=str(exc))
