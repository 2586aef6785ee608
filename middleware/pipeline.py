"""Ingest, per connection: link events -> message -> records -> driver -> store.

One pipeline serves one connection and nothing else: the message being assembled, the
driver's reading and the bytes not yet stored belong to that connection alone, so two
connections of one instrument can never mix their records.

The channel awaits the pipeline on every text the link receives and answers the frame by
the outcome: the frame that ends a message (its L record) is acknowledged only once the
raw bytes and what the driver read are committed. When that commit fails, the pipeline's
state is left as it was before the frame, so the analyser's repeat of it completes the
same whole message. Every byte received is kept in exactly one raw row, with what became
of it: a message, a duplicate, a quarantine (a transfer that ended unfinished, frames
refused, what could not be read or mapped), control characters between transfers, noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, tzinfo

import structlog
from sqlalchemy import Connection

from drivers import AutoDriver, Driver
from middleware.assessment import assess_message
from middleware.astm.frames import ACK, ENQ, EOT, NAK
from middleware.astm.link import (
    DuplicateFrame,
    FrameRejected,
    TextReceived,
    TimedOut,
    TransferEnded,
    TransferStarted,
)
from middleware.astm.records import Record, decode_message, encode_record, split_records
from middleware.domain import InstrumentMessage
from middleware.engine.engine import Engine
from middleware.hl7.results import Sender
from middleware.metrics import Metrics
from middleware.store import Store
from middleware.store.ingest import Delivery, RawSpan, Stored, keep_raw, settle, store_delivery
from middleware.store.orders import orders_for
from middleware.store.sql import utcnow
from middleware.transport.channel import (
    BytesPiling,
    ChannelEvent,
    ConnectionClosed,
    LinkChannel,
    SendError,
)
from middleware.transport.received import Span
from middleware.zones import zone_or_host

log = structlog.get_logger("middleware.pipeline")

#: Seconds of the analyser's wait for our reply left for the work after the commit's wait
#: for a lock and for the reply's way out (a quarter of the wait when it is short).
_REPLY_WAY_OUT = 0.5

#: Bytes that carry no data between transfers: what a closing EOT and a refused ENQ leave.
_CONTROL = frozenset({ACK, ENQ, EOT, NAK})


def _record_type(line: str) -> str:
    return line[:1].upper()


#: Raw bytes with their outcome, or an unfinished transfer whose write failed.
Pending = tuple[RawSpan, str] | Delivery


#: Outcomes of bytes between transfers: consecutive ones make one row.
_BETWEEN = frozenset({"control", "noise"})


def _coalesced(pending: list[Pending]) -> list[Pending]:
    """``pending`` with each run of adjacent bytes between transfers of one outcome made
    one span: an analyser sending bare ENQs by the thousand makes a row per write, not
    one per ENQ."""
    out: list[Pending] = []
    run: list[RawSpan] = []

    def close_run() -> None:
        if len(run) == 1:
            out.append((run[0], outcome))
        elif run:
            data = b"".join(span.data for span in run)
            out.append((replace(run[0], data=data, last_received_at=run[-1].last_received_at),
                        outcome))  # fmt: skip
        run.clear()

    outcome = ""
    for item in pending:
        if isinstance(item, Delivery) or item[1] not in _BETWEEN:
            close_run()
            out.append(item)
            continue
        span, kind = item
        last = run[-1] if run else None
        if (
            last is None
            or kind != outcome
            or last.connection_id != span.connection_id
            or last.stream_offset + len(last.data) != span.stream_offset
        ):
            close_run()
            outcome = kind
        run.append(span)
    close_run()
    return out


def _write_pending(
    conn: Connection, pending: list[Pending], settled: list[int], now: datetime
) -> None:
    for item in _coalesced(pending):
        if isinstance(item, Delivery):
            store_delivery(conn, item, now)
        else:
            keep_raw(conn, *item)
    settle(conn, settled, now)


class MessageTooLong(Exception):
    """The message grew past the connection's bound: its frame is refused."""


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
        max_message_bytes: int = 8 << 20,
        lis: Sender | None = None,
        metrics: Metrics | None = None,
        serving: Callable[[Connection, str], None] | None = None,
    ) -> None:
        self.instrument = instrument
        self.serving = serving
        """Raises, in the transaction that would keep a message, once this daemon no
        longer serves the instrument (another took it): the message is refused."""
        self.driver = driver
        """As configured: a named driver, or ``auto``, which names one per message."""
        self.reader: Driver = driver
        """The driver that read the last message (the one that answers its queries)."""
        self._announced: Driver | None = None
        self.store = store
        self.engine = engine
        """Decides about every result in the transaction that stores it; None: store only."""
        self.lis = lis
        """Released results are queued for this LIS in the same transaction; None: none."""
        self.timezone = zone_or_host(timezone)
        self.encoding = encoding
        self.clock = clock
        self.max_message_bytes = max_message_bytes
        self.metrics = metrics
        self.log = log.bind(instrument=instrument)
        self.channel: LinkChannel | None = None
        self.kept = 0
        """Messages and quarantines stored so far (for tests and status)."""
        self.last: Stored | None = None
        self._lines: list[str] = []
        self._size = 0
        self._started_at: datetime | None = None
        self._rejections: list[str] = []
        self._repeated = False
        self._unconfirmed: list[int] = []
        """Messages of this transfer ACKed within the analyser's reply timer: settled once
        it goes on (EOT or its next message) as one does that had the ACK."""
        self._last_frame_at: datetime | None = None
        """When the last frame of the last message of ``_unconfirmed`` came."""
        self._acknowledged: list[int] = []
        """Messages whose ACK the analyser had: to be marked settled with the next write."""
        self._pending: list[Pending] = []
        """What waits for the next write: a transfer's EOT needs no commit of its own."""
        self._in_flight: set[asyncio.Future[None]] = set()
        self._flushing = False
        self._closing = False
        self._keeping = 0
        """Writes of a message under way: each takes everything waiting with it."""
        self._answers: list[list[bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def __call__(self, channel: LinkChannel, event: ChannelEvent) -> None:
        if self.channel is None:
            self.channel = channel
            self.log = self.log.bind(connection=channel.name, connection_id=channel.id)
        elif channel is not self.channel:
            raise RuntimeError("a pipeline serves one connection only")
        if isinstance(event, TextReceived):
            await self._text(channel, event)
        elif isinstance(event, TransferStarted):
            # What came before this ENQ (the previous transfer's EOT, noise, or a transfer
            # the analyser abandoned by sending ENQ again) is kept apart from what follows.
            await self._end_of_transfer(
                channel, event.start, "a new transfer began before the L record"
            )
            self._started_at = self.clock()
        elif isinstance(event, TransferEnded):
            await self._end_of_transfer(
                channel,
                event.end,
                "transfer ended before the message's L record",
                leftover=event.leftover,
                settled=self._ended_in_time(channel),
            )
            self._send_answers(channel)
        elif isinstance(event, TimedOut) and event.phase == "frame":
            self._link_error(f"timeout-{event.phase}")
            reason = f"link timed out: {event.detail}"
            await self._end_of_transfer(channel, event.end, reason, leftover=event.leftover)
        elif isinstance(event, DuplicateFrame):
            self._repeated = True
        elif isinstance(event, FrameRejected):
            self._link_error(event.kind)
            self._rejections.append(f"{event.kind}: {event.detail}")
            self.log.warning("frame refused", kind=event.kind, detail=event.detail,
                             offset=event.offset)  # fmt: skip
        elif isinstance(event, ConnectionClosed):
            reason = f"connection ended before the L record ({event.reason})"
            leftover = channel.link.pending_text
            await self._end_of_transfer(
                channel, event.end, reason, leftover=leftover, at_close=True
            )
        elif isinstance(event, BytesPiling):
            self._cut(channel, event.end, "partial" if self._started_at else "noise")
            self._flush_soon()

    def _ended_in_time(self, channel: LinkChannel) -> bool:
        """Whether the EOT came soon enough after the last frame for the analyser to have
        had our ACK. Its reply timer runs from that frame: an EOT about when it ran out is
        the analyser giving up (E1381), our ACK lost, and the message will come again. A
        tenth of the timer (a second at most) is left for the line and our own clock."""
        if self._last_frame_at is None:
            return True
        waited = (channel.wallclock() - self._last_frame_at).total_seconds()
        return waited < channel.link.settings.reply_deadline

    # --- messages ---------------------------------------------------------------------------

    async def _text(self, channel: LinkChannel, event: TextReceived) -> None:
        """Take one text; raise when it could not be kept (the link then refuses it), and
        leave the state as it was, so that its repeat is taken the same way."""
        lines = list(self._lines)
        size = self._size
        for line in split_records(event.text.decode(self.encoding, errors="replace")):
            if _record_type(line) == "H" and lines:
                reason = "a new H record began before the L record"
                await self._keep_unfinished(channel, lines, reason, event.start)
                lines, size = [], 0
                self._lines, self._size = [], 0
            size += len(line) + 1
            if size > self.max_message_bytes:
                problem = f"message longer than {self.max_message_bytes} bytes"
                self._rejections.append(f"message_too_long: {problem}")
                raise MessageTooLong(problem)
            lines.append(line)
            if _record_type(line) == "L":
                await self._complete(channel, lines, event.end)
                lines, size = [], 0
                self._lines, self._size = [], 0
        self._lines, self._size = lines, size

    async def _complete(self, channel: LinkChannel, lines: list[str], end: int) -> None:
        began = time.perf_counter()
        delivery = self._message(channel, lines, end)
        reading = delivery.reading
        # Sent after our ACK of the previous message of the transfer: the analyser had that
        # ACK, unless this is the same message again (it did not, and sends it anew).
        confirm, self._unconfirmed = self._unconfirmed, []
        # Its commit waits for a lock only as long as the analyser waits for our reply:
        # refused in time, the message comes again; answered late, the analyser would read
        # our ACK as the reply to what it sent next.
        arrived = delivery.span.last_received_at if delivery.span else delivery.received_at
        waited = (channel.wallclock() - arrived).total_seconds()
        deadline = channel.link.settings.reply_deadline
        left = deadline - waited - min(_REPLY_WAY_OUT, deadline / 4)
        try:
            stored = await self._keep(
                channel, delivery, end, confirm=confirm,
                deadline=time.monotonic() + max(left, 0.0),
            )  # fmt: skip
        except Exception as exc:
            # Not kept: the messages before it still await what settles them, and a
            # transfer ended now is kept apart saying its L record came but was not kept.
            self._unconfirmed = confirm + self._unconfirmed
            self._rejections.append(f"not-stored: its last frame could not be kept ({exc})")
            self._link_error("not-stored")
            raise
        if self.metrics is not None:
            # The ACK goes out as soon as this returns: its wait is the commit's.
            self.metrics.ack_latency.labels(self.instrument).observe(time.perf_counter() - began)
        late = (channel.wallclock() - arrived).total_seconds() >= deadline
        if stored.message_id is not None and not late:
            # Past the analyser's reply timer it may have given up before our ACK came (and
            # the channel has refused the frame in time): the message then stays a
            # re-send, never settled by what follows.
            self._unconfirmed.append(stored.message_id)
            self._last_frame_at = arrived
        # A query sent again (our ACK did not reach the analyser) still wants its answer.
        if reading is not None and reading.queries:
            try:
                await self._prepare_answers(reading)
            except Exception:
                # The message is committed and must be ACKed: an answer is not worth a NAK.
                self.log.exception("host query not answered")

    def _message(self, channel: LinkChannel, lines: list[str], end: int) -> Delivery:
        """A message from H to L as the driver reads it, with what stops it or is noted."""
        decoded = decode_message(lines)
        problems = [str(e) for e in decoded.errors]
        notes: list[str] = []
        if decoded.records:
            self._choose(decoded.records)
        driver = self.reader
        if _record_type(lines[0]) != "H":
            missing = "the message does not begin with an H record"
            if driver.headerless_messages:
                notes.append(f"{missing} (taken: the {driver.name} driver allows it)")
            else:
                problems.append(missing)
        reading: InstrumentMessage | None = None
        if any("\x00" in line for line in lines):
            # Kept raw; no text column (on PostgreSQL) can hold a NUL.
            problems.append("NUL characters in the message text")
            lines = [line.replace("\x00", "\ufffd") for line in lines]
        elif decoded.records:
            try:
                reading = driver.read(decoded.records).in_timezone(self.timezone, self.clock())
            except Exception as exc:  # a driver must never take the connection down
                self.log.exception("driver failed", driver=driver.name)
                problems.append(f"driver {driver.name} failed: {exc!r}")
        if not decoded.records:
            problems.append("no record could be read")
        return self._delivery(
            channel,
            lines,
            end,
            problems=problems,
            notes=notes,
            record_count=len(decoded.records),
            reading=reading,
        )

    def _choose(self, records: Sequence[Record]) -> None:
        """The driver for this message; said in the log when it is not the one before on
        this connection (once per connection, as one analyser keeps its driver)."""
        try:
            self.reader = self.driver.choose(records)
        except Exception:  # detection must not take the connection down either
            if self.reader is self.driver:  # nothing chosen yet on this connection
                self.reader = self.driver.fallback()
            self.log.exception("driver not detected", reads=self.reader.name)
            return
        if self.reader is not self._announced:
            self._announced = self.reader
            detection = self.driver.detection if isinstance(self.driver, AutoDriver) else None
            self.log.info(
                "driver chosen",
                driver=self.reader.name,
                reason=detection.reason if detection is not None else "configured",
            )

    async def _keep_unfinished(
        self, channel: LinkChannel, lines: list[str], reason: str, end: int
    ) -> None:
        await self._keep(channel, self._delivery(channel, lines, end, problems=[reason]), end)

    def _delivery(
        self,
        channel: LinkChannel,
        lines: list[str],
        end: int,
        *,
        problems: list[str],
        notes: list[str] | None = None,
        record_count: int = 0,
        reading: InstrumentMessage | None = None,
    ) -> Delivery:
        span = self._span(channel, channel.received.peek(end, self.clock()))
        return Delivery(
            connection=channel.name,
            instrument=self.instrument,
            raw=span.data,
            received_at=self._started_at or span.received_at,
            text="\r".join(lines),
            record_count=record_count,
            reading=reading,
            problems=problems,
            notes=notes or [],
            span=span,
        )

    def _span(self, channel: LinkChannel, span: Span) -> RawSpan:
        return RawSpan(
            connection=channel.name,
            connection_id=channel.id,
            instrument=self.instrument,
            stream_offset=span.start,
            data=span.data,
            received_at=span.first_at,
            last_received_at=span.last_at,
        )

    async def _keep(
        self,
        channel: LinkChannel,
        delivery: Delivery,
        end: int,
        *,
        confirm: list[int] | None = None,
        deadline: float | None = None,
    ) -> Stored:
        """Store a delivery with what waits before it (raw rows, settled messages), and
        settle ``confirm`` unless the delivery is one of them again; nothing changes here
        unless that commits (by ``deadline``, ``time.monotonic()``, when given)."""
        engine, lis, serving = self.engine, self.lis, self.serving
        pending = list(self._pending)
        settled = list(self._acknowledged)
        confirm = confirm or []
        now = self.clock()

        def work(conn: Connection) -> Stored:
            if serving is not None:
                serving(conn, delivery.instrument)
            _write_pending(conn, pending, settled, now)
            stored = store_delivery(conn, delivery, now)
            again = stored.message_id if stored.duplicate else None
            settle(conn, [m for m in confirm if m != again], now)
            if engine is not None and stored.reading is not None:
                assess_message(conn, engine, stored, stored.reading, now, lis)
            return stored

        future = self.store.write_soon(work, deadline)
        self._keeping += 1
        try:
            stored = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The writer commits it all the same: account for it before the connection
            # ends, so that its last act does not keep these bytes a second time.
            with contextlib.suppress(Exception):
                self._kept(channel, delivery, end, pending, settled, await future)
            raise
        finally:
            self._keeping -= 1
        self._kept(channel, delivery, end, pending, settled, stored)
        return stored

    def _kept(
        self,
        channel: LinkChannel,
        delivery: Delivery,
        end: int,
        pending: list[Pending],
        settled: list[int],
        stored: Stored,
    ) -> None:
        channel.received.release(end)
        self._written(pending, settled)
        self._lines, self._size = [], 0
        self._rejections.clear()
        self._repeated = False
        self.kept += 1
        self.last = stored
        if self.metrics is not None:
            self.metrics.kept(self.instrument, stored)
        self.log.info(
            "message kept",
            message_id=stored.message_id,
            raw_id=stored.raw_id,
            results=stored.results,
            controls=stored.controls,
            duplicate=stored.duplicate,
            quarantined=stored.quarantined,
            problems=delivery.problems or None,
            specimens=delivery.reading.specimen_ids() if delivery.reading else None,
        )

    def _link_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.link_errors.labels(self.instrument, kind).inc()

    # --- what is not a message --------------------------------------------------------------

    async def _end_of_transfer(
        self,
        channel: LinkChannel,
        end: int,
        reason: str,
        *,
        leftover: bytes = b"",
        settled: bool = False,
        at_close: bool = False,
    ) -> None:
        """The transfer is over: what it left unfinished is stored now, with its bytes."""
        lines = self._lines + split_records(leftover.decode(self.encoding, errors="replace"))
        self._lines, self._size = [], 0
        rejections, self._rejections = self._rejections, []
        refused = "; ".join(dict.fromkeys(rejections))
        unread = channel.received.peek(end, self.clock()).data
        cut_short = self._started_at is not None and not set(unread) <= _CONTROL
        if lines and _record_type(lines[-1]) == "L":
            # Its last frame was ACKed without a commit (a record continued over ETX
            # frames, the tolerance that allows it): it is kept now, as a message.
            await self._keep_or_hold(channel, lines, end, [], complete=True)
        elif lines or rejections or (cut_short and not self._repeated):
            if rejections and not lines:
                reason = f"frames refused ({refused})"
            elif rejections:
                reason = f"{reason}; frames refused ({refused})"
            elif not lines:
                reason = f"{reason}: a frame was cut short"
            await self._keep_or_hold(channel, lines, end, [reason])
        else:
            self._cut(channel, end, "repeat" if self._repeated else "control")
        self._repeated = False
        if settled:
            self._acknowledged += self._unconfirmed
        # Otherwise we cannot know the analyser had our last ACK: it stays a re-send.
        self._unconfirmed.clear()
        self._started_at = None
        if at_close:
            await self._close()
        else:
            self._flush_soon()

    async def _keep_or_hold(
        self,
        channel: LinkChannel,
        lines: list[str],
        end: int,
        problems: list[str],
        *,
        complete: bool = False,
    ) -> None:
        """Keep what a transfer left; when the store fails it waits, bytes and all, for
        the next write that succeeds."""
        if complete:
            delivery = self._message(channel, lines, end)
        else:
            delivery = self._delivery(channel, lines, end, problems=problems)
        try:
            await self._keep(channel, delivery, end)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.error("transfer not stored yet", error=repr(exc))
            channel.received.release(end)
            self._pending.append(delivery)

    def _cut(self, channel: LinkChannel, end: int, outcome: str) -> None:
        """The bytes up to ``end`` that belong to no message wait for the next write."""
        if end <= channel.received.base:
            return
        span = self._span(channel, channel.received.take(end, self.clock()))
        if outcome == "control" and not set(span.data) <= _CONTROL:
            outcome = "noise"
        self._pending.append((span, outcome))

    def _flush_soon(self) -> None:
        """Write what waits, queued now (before any later write of this connection), but
        without holding the link for it; what fails waits for the next write. One such
        write at a time: what comes meanwhile waits for its end and goes in one write (a
        flood of bare ENQs would otherwise queue a commit per ENQ ahead of every other
        analyser's messages)."""
        if self._flushing:
            return
        waiting = self._waiting()
        if waiting is None:
            return
        pending, settled, work = waiting
        self._written(pending, settled)
        self._flushing = True

        def done(future: asyncio.Future[None]) -> None:
            self._flushing = False
            error = None if future.cancelled() else future.exception()
            if future.cancelled() or error is not None:
                self.log.error("raw bytes not stored yet; kept for the next write",
                               error=repr(error))  # fmt: skip
                self._pending[:0] = pending
                self._acknowledged[:0] = settled
            elif not self._closing and not self._keeping:
                # What waits now goes in the next write; a message being kept takes it
                # all with it, and at the end _close writes it.
                self._flush_soon()

        future = self.store.write_soon(work)
        future.add_done_callback(done)
        self._in_flight.add(future)
        future.add_done_callback(self._in_flight.discard)

    async def _close(self) -> None:
        """The connection is gone: what it left is written now, a few times if need be."""
        self._closing = True
        if self._in_flight:
            # Their failures come back to _pending first.
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        for delay in (0.5, 1.0, 2.0, None):
            waiting = self._waiting()
            if waiting is None:
                return
            pending, settled, work = waiting
            try:
                await self.store.write(work)
            except Exception as exc:
                if delay is None:
                    lost = sum(len(p[0].data if isinstance(p, tuple) else p.raw) for p in pending)
                    self.log.error("what the connection left could not be stored",
                                   error=repr(exc), rows=len(pending), bytes=lost)  # fmt: skip
                    return
                await asyncio.sleep(delay)
                continue
            self._written(pending, settled)

    def _waiting(
        self,
    ) -> tuple[list[Pending], list[int], Callable[[Connection], None]] | None:
        """What waits for a write (raw rows, messages to settle) and the work that writes
        it; None when nothing waits."""
        if not self._pending and not self._acknowledged:
            return None
        pending, settled = list(self._pending), list(self._acknowledged)
        work = functools.partial(_write_pending, pending=pending, settled=settled, now=self.clock())
        return pending, settled, work

    def _written(self, pending: list[Pending], settled: list[int]) -> None:
        done = {id(item) for item in pending}
        self._pending = [item for item in self._pending if id(item) not in done]
        self._acknowledged = [m for m in self._acknowledged if m not in settled]

    # --- host queries -----------------------------------------------------------------------

    async def _prepare_answers(self, reading: InstrumentMessage) -> None:
        for query in reading.queries:
            held = await self.store.read_async(
                functools.partial(orders_for, specimen_ids=query.specimen_ids)
            )
            held, left_out = self.reader.writable(held, self.encoding)
            if left_out:
                self.log.warning("order answered without what the analyser's character set "
                                 "cannot carry", encoding=self.encoding,
                                 left_out=left_out)  # fmt: skip
            # Stamped (H.14) on the analyser's wall clock, as it stamps what it sends.
            records = self.reader.answer_query(query, held, self.clock().astimezone(self.timezone))
            self._answers.append(
                [encode_record(r, self.reader.delimiters).encode(self.encoding) for r in records]
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
