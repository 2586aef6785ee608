"""Ingest from analysers that speak HL7 over MLLP: each message stored, decided, then
acknowledged.

One :class:`Hl7Connection` serves one connection, as :mod:`middleware.pipeline` does for
ASTM: the MLLP reader, the driver's choice and the bytes not yet stored belong to it
alone. A message is answered only once its raw bytes, its results and the decisions about
them are committed: AA when it was taken, AE (with the reason) when it could not be read
and was quarantined, AR when the store could not keep it, so that the analyser sends it
again. An identical message sent again before the analyser went on (it missed our ACK)
is a duplicate; once it sent its next message, the same content is a new measurement.
Every byte received is kept in exactly one raw row, with what became of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
import ssl
import time
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import TypeVar

import structlog
from sqlalchemy import Connection

from drivers import get_hl7
from drivers.hl7 import Hl7AutoDriver, Hl7Driver, is_acknowledgment
from drivers.hl7_query import unanswered
from middleware.assessment import assess_message
from middleware.domain import InstrumentMessage
from middleware.engine.engine import Engine
from middleware.hl7.mllp import (
    CR_WAIT_SECONDS,
    Discarded,
    MessageReceived,
    MllpReader,
    frame,
)
from middleware.hl7.orders import VERSIONS, OrderRefused, acknowledgment
from middleware.hl7.results import Sender
from middleware.hl7.segments import (
    Hl7Error,
    Hl7Message,
    decode_text,
    encoding_of,
    header_fields,
    parse_message,
    split_segments,
    unescape,
)
from middleware.metrics import Metrics
from middleware.settings import InstrumentConfig
from middleware.sniff import spoken_on_hl7_line
from middleware.store import Store
from middleware.store.ingest import Delivery, RawSpan, Stored, keep_raw, settle, store_delivery
from middleware.store.orders import orders_for
from middleware.store.sql import utcnow
from middleware.transport.channel import ByteStream
from middleware.transport.reconnect import Backoff
from middleware.transport.tcp import ListenError, peer_name
from middleware.transport.tls import instrument_context, peer_allowed, server_name
from middleware.zones import zone_or_host

log = structlog.get_logger("middleware.hl7_ingest")

#: ``(state, detail)``: an instrument's connection state changed.
StatusListener = Callable[..., None]
T = TypeVar("T")

#: What waits for the next write: bytes that made no message with their outcome, or a
#: message cut short (kept in quarantine).
Pending = tuple[RawSpan, str] | Delivery

_CUT_SHORT = {
    "cut-by-new-block": "message cut short by the start of another (VT before FS)",
    "cut-by-end-of-stream": "message cut short: {ending} before its FS",
    "too-long": "message longer than {bound} bytes; only its first bytes kept",
}
#: Processing ids (MSH-11, HL7 table 0103) of messages that are no patient's.
_NOT_PATIENTS = {"T": "training", "D": "debugging"}


class Hl7Connection:
    """Turns what one MLLP connection receives into stored messages, each answered."""

    def __init__(
        self,
        instrument: str,
        driver: Hl7Driver,
        store: Store,
        *,
        name: str,
        encoding: str = "latin-1",
        engine: Engine | None = None,
        lis: Sender | None = None,
        timezone: tzinfo | None = None,
        max_message_bytes: int = 8 << 20,
        idle_timeout: float = 30.0,
        clock: Callable[[], datetime] = utcnow,
        metrics: Metrics | None = None,
        serving: Callable[[Connection, str], None] | None = None,
    ) -> None:
        self.instrument = instrument
        self.serving = serving
        """As the ASTM pipeline's: raises once another daemon took the instrument."""
        self.driver = driver
        self.metrics = metrics
        self.store = store
        self.name = name
        self.id = secrets.token_hex(8)
        self.encoding = encoding
        self.engine = engine
        self.lis = lis
        self.timezone = zone_or_host(timezone)
        self.idle_timeout = idle_timeout
        """How long a message begun may stay silent before it is kept unfinished."""
        self.clock = clock
        self.reader = MllpReader(max_message_bytes)
        self.log = log.bind(instrument=instrument, connection=name, connection_id=self.id)
        self.kept = 0
        self._announced: type[Hl7Driver] | None = None
        self._chosen: Hl7Driver | None = None
        """The family that read the last message: the one that answers its queries."""
        self._foreign_said = False
        self._arrivals: list[tuple[int, datetime]] = []
        """Stream offset and time of each piece received that is not yet stored."""
        self._pending: list[Pending] = []
        self._unconfirmed: list[int] = []
        """The last message ACKed: settled when the analyser sends its next one."""
        self._closing = False
        self._writer: asyncio.StreamWriter | None = None
        self._waiting = False
        """Waiting for bytes (no message in hand): closing may cut the connection now."""

    def close(self) -> None:
        """End the connection once the message in hand (if any) is stored and answered."""
        self._closing = True
        if self._waiting and self._writer is not None:
            self._writer.close()

    # --- the connection -----------------------------------------------------------------

    async def serve(self, reader: ByteStream, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        try:
            while not self._closing:
                # A message begun must not stay unfinished for ever; one ended by FS
                # without its CR is whole once the analyser waits for our ACK.
                awaiting_cr = self.reader.awaiting_cr
                timeout = self.idle_timeout if self._arrivals else None
                if awaiting_cr:
                    timeout = CR_WAIT_SECONDS
                self._waiting = True
                try:
                    data = await asyncio.wait_for(reader.read(65536), timeout)
                except TimeoutError:
                    if awaiting_cr:
                        await self._events(self.reader.quiet(), writer, "")
                    else:
                        await self._events(self.reader.end_of_stream(), writer, "silent")
                    continue
                finally:
                    self._waiting = False
                if not data:
                    break
                self._arrivals.append((self.reader.received, self.clock()))
                if not self._foreign_said:
                    self._say_foreign(data)
                await self._events(self.reader.receive_data(data), writer, "")
        except (ConnectionError, OSError) as exc:
            self.log.warning("connection lost", error=repr(exc))
        finally:
            with contextlib.suppress(Exception):
                await self._events(self.reader.end_of_stream(), None, "closed")
            await self._flush(final=True)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    def _say_foreign(self, data: bytes) -> None:
        """Once per connection: the analyser speaks another protocol than HL7 (its bytes
        are kept as noise all the same)."""
        spoken = spoken_on_hl7_line(data)
        if spoken is not None:
            self._foreign_said = True
            self.log.error("the analyser speaks another protocol", protocol=spoken.protocol,
                           advice=spoken.advice)  # fmt: skip

    async def _events(
        self,
        events: list[MessageReceived | Discarded],
        writer: asyncio.StreamWriter | None,
        ending: str,
    ) -> None:
        for event in events:
            if isinstance(event, Discarded):
                answer = self._discarded(event, ending)
                replies = [answer] if answer is not None else []
                head = event.data[1:]
            else:
                replies, head = await self._message(event), event.message
            if writer is not None and replies:
                # In the character set of the message answered, whose names it repeats.
                codec = encoding_of(head, self.encoding)
                for reply in replies:
                    writer.write(frame(reply.encode(codec, errors="replace")))
                await writer.drain()
        if self._pending:
            await self._flush(final=writer is None)

    # --- one message --------------------------------------------------------------------

    async def _message(self, event: MessageReceived) -> list[str]:
        """Store a message, then what answers it: its ACK, or a query's answers; nothing
        for the analyser's acknowledgment of one of ours."""
        raw = b"\x0b" + event.message + (b"\x1c" if event.missing_cr else b"\x1c\r")
        span = self._span(event.start, raw)
        text, charset_problem = decode_text(event.message, self.encoding)
        now = self.clock()
        problems: list[str] = []
        notes = [charset_problem] if charset_problem else []
        if event.missing_cr:
            notes.append("the message ended with FS without its CR (taken)")
        message: Hl7Message | None = None
        reading: InstrumentMessage | None = None
        refusal: OrderRefused | None = None
        try:
            message = parse_message(text)
        except Hl7Error as exc:
            problems.append(f"not an HL7 message: {exc}")
        if message is not None and (refusal := refused(message)) is not None:
            # Not read at all: nothing of it may reach a patient's record or the LIS.
            problems.append(str(refusal))
        elif message is not None and "\x00" in text:
            # Kept raw; no text column (on PostgreSQL) can hold a NUL.
            problems.append("NUL characters in the message text")
        elif message is not None:
            # A segment that could not be read may have held a result: the message is
            # kept in quarantine rather than taken without it.
            problems += message.problems
            reading = self._read(message, problems)
        lines = [segment for segment in text.replace("\n", "\r").split("\r") if segment]
        delivery = Delivery(
            connection=self.name,
            instrument=self.instrument,
            raw=raw,
            received_at=span.received_at,
            text="\r".join(lines).replace("\x00", "\ufffd"),
            record_count=len(message.segments) if message else 0,
            reading=reading,
            problems=problems,
            notes=notes,
            span=span,
            identity=_identity(text) if message is not None else "",
        )
        answer = functools.partial(_answer, text, now)
        control_id = message.control_id if message else ""

        began = time.perf_counter()
        try:
            stored = await self._keep(delivery, now)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.metrics is not None:
                self.metrics.link_errors.labels(self.instrument, "not-stored").inc()
            self.log.error("message not stored; refused", control_id=control_id, error=repr(exc))
            self._pending.append((span, "refused"))
            self._release(event.end)
            return [answer("AR", "not stored; send it again")]
        self._release(event.end)
        self.kept += 1
        if self.metrics is not None:
            self.metrics.ack_latency.labels(self.instrument).observe(time.perf_counter() - began)
            self.metrics.kept(self.instrument, stored)
        self.log.info(
            "message kept",
            message_id=stored.message_id,
            raw_id=stored.raw_id,
            control_id=control_id,
            results=stored.results,
            controls=stored.controls,
            duplicate=stored.duplicate,
            quarantined=stored.quarantined,
            specimens=reading.specimen_ids() if reading else None,
        )
        if refusal is not None:
            return [answer("AR", str(refusal), refusal)]
        if stored.quarantined:
            return [answer("AE", f"kept in quarantine: {stored.reason}")]
        if message is not None and is_acknowledgment(message):
            self._acknowledged(message)
            return []
        if message is not None and reading is not None and reading.queries:
            # A query sent again (our answer did not reach the analyser) is answered again.
            return await self._answers(
                message, reading, now, encoding_of(event.message, self.encoding)
            )
        return [answer("AA")]

    def _acknowledged(self, message: Hl7Message) -> None:
        code = message.all("MSA")[0].value(1).upper() if message.all("MSA") else ""
        said = self.log.info if code in ("AA", "CA") else self.log.warning
        said("analyser acknowledged", code=code or None, answered=_msa_id(message))

    async def _answers(
        self, message: Hl7Message, reading: InstrumentMessage, now: datetime, encoding: str
    ) -> list[str]:
        """A host query's answers, from the orders held for the tubes it names, in
        ``encoding``, the character set of the query they answer."""
        driver = self._chosen or self.driver
        replies: list[str] = []
        for query in reading.queries:
            try:
                held = await self.store.read_async(
                    functools.partial(orders_for, specimen_ids=query.specimen_ids)
                )
                held, left_out = driver.writable(held, encoding)
                if left_out:
                    self.log.warning("order answered without what the analyser's character "
                                     "set cannot carry", encoding=encoding,
                                     left_out=left_out)  # fmt: skip
                sent = driver.answer_query(message, query, held, now, self.timezone)
            except Exception as exc:
                # The query is kept; "nothing found" would have the tube run without its
                # tests, so the analyser is told to ask again instead.
                self.log.exception("host query not answered")
                return [unanswered(message, now, self.timezone, f"orders not read: {exc!r}")]
            self.log.info(
                "host query answered", specimens=list(query.specimen_ids), messages=len(sent)
            )
            replies += sent
        return replies

    def _read(self, message: Hl7Message, problems: list[str]) -> InstrumentMessage | None:
        try:
            chosen = self.driver.choose(message)
            if type(chosen) is not self._announced:
                self._announced = type(chosen)
                detection = (
                    self.driver.detection if isinstance(self.driver, Hl7AutoDriver) else None
                )
                self.log.info(
                    "driver chosen",
                    driver=chosen.name,
                    reason=detection.reason if detection is not None else "configured",
                )
            self._chosen = chosen
            return chosen.read(message).in_timezone(self.timezone, self.clock())
        except Exception as exc:  # a driver must never take the connection down
            self.log.exception("driver failed")
            problems.append(f"driver failed: {exc!r}")
            return None

    async def _keep(self, delivery: Delivery, now: datetime) -> Stored:
        engine, lis, serving = self.engine, self.lis, self.serving
        pending, confirm = list(self._pending), list(self._unconfirmed)

        def work(conn: Connection) -> Stored:
            if serving is not None:
                serving(conn, delivery.instrument)
            _write(conn, pending, now)
            stored = store_delivery(conn, delivery, now)
            again = stored.message_id if stored.duplicate else None
            settle(conn, [m for m in confirm if m != again], now)
            if engine is not None and stored.reading is not None:
                assess_message(conn, engine, stored, stored.reading, now, lis)
            return stored

        stored = await self._committed(work, pending)
        if stored.message_id is not None:
            self._unconfirmed = [stored.message_id]
        return stored

    async def _committed(self, work: Callable[[Connection], T], pending: list[Pending]) -> T:
        """Run ``work`` on the store's writer; once it committed, what it wrote of the
        waiting rows no longer waits. Cancelled meanwhile (the daemon stopping), the writer
        commits all the same: that is accounted for before the task ends, so that the
        connection's last write does not keep these rows a second time."""
        future = self.store.write_soon(work)
        try:
            done = await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await future
                self._written(pending)
            raise
        self._written(pending)
        return done

    def _written(self, pending: list[Pending]) -> None:
        written = {id(item) for item in pending}
        self._pending = [item for item in self._pending if id(item) not in written]

    # --- what is not a message ----------------------------------------------------------

    def _discarded(self, event: Discarded, ending: str) -> str | None:
        """Keep what was not a message; the answer a message too long to keep gets (the
        analyser would otherwise send it again and again), None for the rest: a message
        cut short is sent again whole, or was abandoned."""
        span = self._span(event.start, event.data)
        self._release(event.end)
        if event.reason == "outside-block":
            self._pending.append((span, "noise"))
            return None
        said = {"silent": f"silent for {self.idle_timeout:g} s", "closed": "the connection ended"}
        reason = _CUT_SHORT.get(event.reason, event.reason).format(
            ending=said.get(ending, "the stream ended"), bound=self.reader.max_message_bytes
        )
        self.log.warning("unfinished message kept", reason=reason, bytes=event.end - event.start)
        text = event.data.decode(self.encoding, errors="replace").replace("\x00", "\ufffd")
        self._pending.append(
            Delivery(self.name, self.instrument, event.data, span.received_at,
                     text.lstrip("\x0b"), problems=[reason], span=span)
        )  # fmt: skip
        if event.reason != "too-long":
            return None
        return _answer(text.lstrip("\x0b"), self.clock(), "AE", f"not taken: {reason}")

    async def _flush(self, final: bool) -> None:
        """Write what waits; at the end of the connection (``final``) a few times if need
        be, otherwise once: what fails goes with the connection's next write."""
        for delay in (0.5, 1.0, 2.0, None) if final else (None,):
            if not self._pending:
                return
            pending = list(self._pending)

            def work(conn: Connection, pending: list[Pending] = pending) -> None:
                _write(conn, pending, self.clock())

            try:
                await self._committed(work, pending)
            except Exception as exc:
                if delay is None:
                    lost = "could not be stored" if final else "not stored yet"
                    self.log.error(f"raw bytes {lost}", error=repr(exc), rows=len(pending))
                    return
                await asyncio.sleep(delay)

    # --- stream bookkeeping -------------------------------------------------------------

    def _span(self, start: int, data: bytes) -> RawSpan:
        first = last = self.clock()
        for offset, at in self._arrivals:
            if offset <= start:
                first = at
            if offset < start + len(data):
                last = at
        return RawSpan(self.name, self.id, self.instrument, start, data, first, last)

    def _release(self, end: int) -> None:
        """Forget arrival times of bytes before ``end`` (all stored or waiting)."""
        keep = [a for a in self._arrivals if a[0] >= end]
        earlier = [a for a in self._arrivals if a[0] < end]
        if earlier and end < self.reader.received and (not keep or keep[0][0] > end):
            keep.insert(0, (end, earlier[-1][1]))
        self._arrivals = keep


def _write(conn: Connection, pending: list[Pending], now: datetime) -> None:
    for item in pending:
        if isinstance(item, Delivery):
            store_delivery(conn, item, now)
        else:
            keep_raw(conn, *item)


def _identity(text: str) -> str:
    """A message as a copy sent again repeats it: its sender (MSH-3, MSH-4) and control
    id (MSH-10) as written, and its segments after the MSH (spaces at their ends aside),
    as the orders port knows the LIS's; the rest of the MSH, its time first, may be new."""
    msh = header_fields(text)
    named = [msh[n - 1] if len(msh) > n - 1 else "" for n in (3, 4, 10)]
    segments = [segment.rstrip() for segment in split_segments(text)[1:]]
    return "\x00".join([*named, "\r".join(segments)])


def _msa_id(message: Hl7Message) -> str | None:
    """MSA-2 of an acknowledgment: the control id of the message it answers."""
    msa = message.all("MSA")
    return msa[0].value(2) if msa else None


def refused(message: Hl7Message) -> OrderRefused | None:
    """Why a message's header keeps it out of the records (answered AR, as the LIS's
    orders port answers such a header): a version not read here (MSH-12 other than 2.x;
    left empty, taken); training and debugging (MSH-11 ``T``, ``D``), no patient's; no
    control id (MSH-10), which no answer could name. None for a message taken, and for an
    acknowledgment, never answered."""
    if is_acknowledgment(message):
        return None
    version = message.header.value(12).strip()
    if version and not VERSIONS.fullmatch(version):
        return OrderRefused(
            f"MSH-12: HL7 version {version[:20]}; results are taken in 2.x", "203",
            ("MSH", 1, 12), code="AR",
        )  # fmt: skip
    processing = message.header.value(11).strip().upper()
    if processing in _NOT_PATIENTS:
        return OrderRefused(
            f"{_NOT_PATIENTS[processing]} message (MSH-11 {processing}): not for patient "
            "records", "202", ("MSH", 1, 11), code="AR",
        )  # fmt: skip
    if not message.control_id.strip():
        return OrderRefused("MSH-10: no message control id", "101", ("MSH", 1, 10), code="AR")
    return None


def _answer(
    text: str, at: datetime, code: str, why: str = "", error: OrderRefused | None = None
) -> str:
    """The ACK of a message (or of the head of one too long to keep): MSA-2 its MSH-10 as
    written, escapes and all; MSH-5/6 its sender; its trigger, processing id and version;
    a refusal's ``error`` as an ERR segment."""
    msh = header_fields(text)

    def components(n: int) -> list[str]:
        # MSH-n is at index n - 1 once split on the separator, which is MSH-1.
        value = msh[n - 1] if len(msh) > n - 1 else ""
        return value.split(msh[1][0]) if len(msh) > 1 and msh[1] else [value]

    def field(n: int, component: int = 0) -> str:
        parts = components(n)
        return parts[component] if component < len(parts) else ""

    def named(n: int) -> list[str]:
        """MSH-3 or MSH-4 whole (an HD: namespace^universal id^its type), unescaped."""
        return [unescape(part) for part in components(n)]

    return acknowledgment(
        field(10),
        code,
        at,
        why,
        field(9, 1) or "R01",
        receiver=(named(3), named(4)),
        version=field(12) or "2.5.1",
        processing=field(11) or "P",
        error=error,
    )


class Hl7Instrument:
    """An HL7 analyser as configured: a listening socket it connects to, or the address
    the daemon connects out to; each connection served by its own :class:`Hl7Connection`."""

    def __init__(
        self,
        config: InstrumentConfig,
        store: Store,
        engine: Callable[[], Engine | None],
        lis: Callable[[], Sender | None],
        metrics: Metrics | None = None,
        on_status: StatusListener | None = None,
        serving: Callable[[Connection, str], None] | None = None,
    ) -> None:
        self.config = config
        self.serving = serving
        self.store = store
        self.engine = engine
        self.lis = lis
        self.metrics = metrics
        self.on_status = on_status
        """Told each change of the instrument's connection state, with its live connections."""
        self.live: dict[Hl7Connection, asyncio.Task[None] | None] = {}
        self._server: asyncio.Server | None = None
        self._client: asyncio.Task[None] | None = None
        self._stopping = False
        self._tls: ssl.SSLContext | None = None

    def connection(self, peer: str) -> Hl7Connection:
        config = self.config
        return Hl7Connection(
            config.name,
            get_hl7(config.driver, config.driver_options, config.name),
            self.store,
            name=f"{config.name}/{peer}",
            encoding=config.encoding,
            engine=self.engine(),
            lis=self.lis(),
            timezone=config.zone,
            max_message_bytes=config.max_message_bytes,
            idle_timeout=config.frame_timeout or 30.0,
            metrics=self.metrics,
            serving=self.serving,
        )

    async def start(self) -> None:
        config = self.config
        assert config.port is not None
        # Built here, not per connection: a certificate that cannot be read stops the start.
        self._tls = instrument_context(config)
        if config.transport == "tcp-server":
            try:
                self._server = await asyncio.start_server(
                    self.accept, config.host, config.port, ssl=self._tls
                )
            except OSError as exc:
                raise ListenError(config.name, config.host, config.port, exc) from exc
            port = self._server.sockets[0].getsockname()[1]
            log.info("listening", connection=config.name, host=config.host, port=port,
                     protocol="hl7")  # fmt: skip
            self._status("listening")
        else:
            self._client = asyncio.create_task(self._connect_out())
            self._status("connecting")

    def _status(self, state: str, **detail: str) -> None:
        if self.on_status is not None:
            self.on_status(state, **detail)

    async def accept(self, reader: ByteStream, writer: asyncio.StreamWriter) -> None:
        """Serve a connection the analyser opened: on this instrument's own port, or on
        one that takes either protocol, once its first bytes said HL7."""
        where = peer_name(writer)
        if not peer_allowed(writer, self.config.allow):
            log.warning("connection refused: address not allowed", connection=self.config.name,
                        peer=where, protocol="hl7")  # fmt: skip
            writer.close()
            return
        connection = self.connection(where)
        if self.config.connections == "newest":
            for older in list(self.live):
                older.log.warning("replaced by a newer connection of the instrument")
                older.close()
        self.live[connection] = asyncio.current_task()
        connection.log.info("analyser connected", protocol="hl7")
        self._status("connected", peer=connection.name)
        try:
            await connection.serve(reader, writer)
        finally:
            self.live.pop(connection, None)
            connection.log.info("analyser disconnected")
            self._status("connected" if self.live else "disconnected")

    async def _connect_out(self) -> None:
        """Connect out, serve, and connect again after a growing delay, until stopped;
        whatever ends a connection is logged, never the end of the task."""
        config = self.config
        next_delay = Backoff().delays()
        while not self._stopping:
            try:
                reader, writer = await asyncio.open_connection(
                    config.host, config.port, ssl=self._tls, server_hostname=server_name(config)
                )
            except OSError as exc:
                delay = next_delay()
                log.warning("cannot open", connection=config.name, error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            next_delay = Backoff().delays()
            connection = self.connection(f"{config.host}:{config.port}")
            self.live[connection] = None
            connection.log.info("connected", protocol="hl7")
            self._status("connected", peer=connection.name)
            try:
                await connection.serve(reader, writer)
            except Exception:
                connection.log.exception("connection failed")
            finally:
                self.live.pop(connection, None)
                self._status("disconnected")
            if not self._stopping:
                await asyncio.sleep(next_delay())

    async def close(self, grace: float) -> None:
        """Stop taking connections; each open one ends once its message in hand is stored
        and answered, and only one still busy after ``grace`` seconds is cancelled."""
        self._stopping = True
        if self._server is not None:
            self._server.close()
        waiting = [t for t in self.live.values() if t is not None]
        if self._client is not None:
            if any(task is None for task in self.live.values()):
                waiting.append(self._client)  # it ends once its connection has
            else:
                self._client.cancel()  # between connections: nothing in hand
        for connection in list(self.live):
            connection.close()
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=grace)
            for task in late:
                task.cancel()
        if self._client is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._client
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), grace)
