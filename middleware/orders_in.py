"""Orders from the LIS over MLLP: each message read, its orders put in the worklist in one
transaction, and answered: AA once committed, AE with the segment and field of what could
not be taken, AR for a message not taken at all (its header says no order this daemon
takes, it is too long) or when the store could not keep it (the LIS sends it again). The
answer mirrors the order's header and is in its character set (MSH-18)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, tzinfo

import structlog
from sqlalchemy import Connection

from middleware.domain import Order
from middleware.hl7.mllp import Discarded, MllpReader, frame
from middleware.hl7.orders import (
    CANCEL,
    PROCESSING_ID,
    Header,
    OrderMessage,
    OrderRefused,
    acknowledgment,
    check_header,
    read_header,
    read_order,
)
from middleware.hl7.segments import declared_charset, split_segments
from middleware.store import Store, orders, worklist
from middleware.store.sql import utcnow
from middleware.transport.mllp import next_events
from middleware.transport.tcp import ListenError
from middleware.transport.tls import peer_allowed
from middleware.zones import zone_or_host

log = structlog.get_logger("middleware.orders")


#: Connections the LIS may hold open at once; more are closed at once.
MAX_CONNECTIONS = 8
#: A connection silent this long is closed (the LIS opens another when it has orders).
IDLE_SECONDS = 600.0
#: Character sets (MSH-18) orders may come in; UTF-8 when MSH-18 is empty.
CHARSETS = {"": "utf-8", "UNICODE UTF-8": "utf-8", "ASCII": "ascii", "8859/1": "latin-1"}


class OrderReceiver:
    def __init__(
        self,
        store: Store,
        clock: Callable[[], datetime] = utcnow,
        idle_seconds: float = IDLE_SECONDS,
        tls: ssl.SSLContext | None = None,
        allow: list[str] | None = None,
        downloads: Mapping[str, frozenset[str]] | None = None,
        on_taken: Callable[[], None] | None = None,
        processing_id: str = PROCESSING_ID,
        sender: tuple[str, str] = ("LIS-MIDDLEWARE", "LAB"),
        zone: tzinfo | None = None,
    ) -> None:
        self.zone = zone_or_host(zone)
        """The laboratory's zone: the LIS's times without an offset are its wall clock."""
        self.sender = sender
        """MSH-3 and MSH-4 of the answers: the middleware's names towards the LIS."""
        self.processing_id = processing_id
        """MSH-11 of the orders taken: others (training, debugging) are refused."""
        self.on_taken = on_taken
        """Called once orders are kept: downloads may wait."""
        self.downloads = dict(downloads or {})
        """Analysers taking a downloaded worklist, each with the tests it runs: orders for
        them are queued for it with the orders."""
        self.tls = tls
        self.allow = allow or []
        """Networks the LIS may connect from; any when empty."""
        self.store = store
        self.clock = clock
        self.idle_seconds = idle_seconds
        self._server: asyncio.Server | None = None
        self._open = 0

    async def start(self, host: str, port: int) -> int:
        try:
            self._server = await asyncio.start_server(self._serve, host, port, ssl=self.tls)
        except OSError as exc:
            raise ListenError("LIS orders", host, port, exc) from exc
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("taking orders from the LIS", host=host, port=bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if not peer_allowed(writer, self.allow):
            log.warning("order connection refused: address not allowed", peer=peer)
            writer.close()
            return
        if self._open >= MAX_CONNECTIONS:
            log.warning("order connection refused: too many open", peer=peer)
            writer.close()
            return
        self._open += 1
        mllp = MllpReader()
        try:
            while (events := await next_events(reader, mllp, self.idle_seconds)) is not None:
                for event in events:
                    if isinstance(event, Discarded) and event.reason == "too-long":
                        # Unanswered, the LIS would send it again and again.
                        answer = self._too_long(event.data, mllp.max_message_bytes)
                    elif isinstance(event, Discarded):
                        log.warning("bytes from the LIS outside a message", reason=event.reason)
                        continue
                    else:
                        answer = await self._take(event.message)
                    writer.write(frame(answer))
                    await asyncio.wait_for(writer.drain(), self.idle_seconds)
        except TimeoutError:
            log.info("order connection idle; closed", peer=peer)
        except (ConnectionError, OSError) as exc:
            log.warning("order connection lost", peer=peer, error=repr(exc))
        finally:
            self._open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 5)

    async def _take(self, data: bytes) -> bytes:
        now = self.clock()
        charset = declared_charset(data)
        encoding = CHARSETS.get(charset)
        header = read_header(data.decode(encoding or "utf-8", errors="replace"))
        try:
            check_header(header, self.processing_id)
            if encoding is None:
                raise OrderRefused(
                    f"MSH-18: character set {charset[:40]!r} not taken", "103", ("MSH", 1, 18)
                )
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as exc:
                # Where and what, not Python's words ("invalid continuation byte").
                raise OrderRefused(
                    f"MSH-18: the message is not {charset or 'UTF-8'} text "
                    f"(byte 0x{data[exc.start]:02X} at offset {exc.start})",
                    "102", ("MSH", 1, 18),
                ) from None  # fmt: skip
            message = read_order(text, self.processing_id, self.zone)
        except OrderRefused as refusal:
            log.warning("order refused", control_id=header.control_id, reason=str(refusal))
            return _answer(self.sender, header, charset, refusal.code, now, refusal)
        except Exception:  # text from outside must never leave the LIS without an answer
            log.exception("order unreadable")
            unreadable = OrderRefused("MSH: the message is unreadable", "207")
            return _answer(self.sender, header, charset, "AE", now, unreadable)
        sent = _Sent(_sender(header), message.control_id, _content(text))
        try:
            before = await self.store.write(
                lambda conn: _apply(conn, message, now, self.downloads, sent)
            )
        except Exception as exc:
            log.error("order not kept", control_id=message.control_id, error=repr(exc))
            unkept = OrderRefused("not kept; send it again", "207", code="AR")
            return _answer(self.sender, header, charset, "AR", now, unkept)
        if before == sent.digest:
            # Our answer to it was lost: applied again, a cancel sent since would be undone.
            log.info("order message sent again; answered, not applied again",
                     control_id=message.control_id)  # fmt: skip
        elif before is not None:
            reused = OrderRefused(
                f"MSH-10: control id {message.control_id[:40]} was taken before for another "
                "message; not taken (each message needs a control id of its own)",
                "205", ("MSH", 1, 10),
            )  # fmt: skip
            log.warning("order refused", control_id=message.control_id, reason=str(reused))
            return _answer(self.sender, header, charset, "AE", now, reused)
        elif self.on_taken is not None:
            self.on_taken()
        return _answer(self.sender, header, charset, "AA", now)

    def _too_long(self, head: bytes, bound: int) -> bytes:
        """The answer to a message too long to keep, from its first bytes: AR, naming the
        bound, to the control id they give."""
        head = head.removeprefix(b"\x0b")
        charset = declared_charset(head)
        header = read_header(head.decode(CHARSETS.get(charset) or "utf-8", errors="replace"))
        mib = f" ({bound >> 20} MiB)" if bound and bound % (1 << 20) == 0 else ""
        refusal = OrderRefused(
            f"the message is longer than {bound} bytes{mib}, the most taken; not read",
            "207", code="AR",
        )  # fmt: skip
        log.warning("order refused", control_id=header.control_id, reason=str(refusal))
        return _answer(self.sender, header, charset, "AR", self.clock(), refusal)


@dataclass(frozen=True, slots=True)
class _Sent:
    """Which order message this is: its sender's and control id, and its content."""

    sender: str
    control_id: str
    digest: str


def _sender(header: Header) -> str:
    """MSH-3 and MSH-4 as one text: control ids are unique per sending application."""
    return "|".join("^".join(part) for part in header.sender or ())


def _content(text: str) -> str:
    """The digest of a message's segments after its MSH, as the message is read (whatever
    separates them, spaces at their ends aside): a copy sent again may differ in its
    header (the time it was sent, MSH-7), never in what it orders."""
    segments = [segment.rstrip() for segment in split_segments(text)[1:]]
    return hashlib.sha256("\r".join(segments).encode("utf-8", "surrogatepass")).hexdigest()


def _apply(
    conn: Connection,
    message: OrderMessage,
    at: datetime,
    downloads: Mapping[str, frozenset[str]],
    sent: _Sent,
) -> str | None:
    """Put the message's orders in force, unless it was taken before: then the digest of
    what was taken under its control id, and nothing is changed."""
    before = orders.taken_before(conn, sent.sender, sent.control_id, sent.digest, at)
    if before is not None:
        return before
    for change in message.changes:
        order = change.order
        if change.action == CANCEL:
            for named in _cancelled(conn, order):
                held = orders.orders_for(conn, [named.specimen_id])
                orders.cancel_tests(conn, named.specimen_id, named.test_codes, named.placer_order)
                _withdraw(conn, named, named.test_codes, held, downloads, at)
        else:
            # What the order it replaces asked for and this one no longer does is withdrawn
            # from the analysers that took a downloaded worklist: they would run it.
            held = orders.orders_for(conn, [order.specimen_id])
            _withdraw(conn, order, order.test_codes, held, downloads, at, replacing=True)
            orders.put_order(conn, order, at)
            worklist.enqueue(conn, order, worklist.NEW, downloads, at)
    return None


def _cancelled(conn: Connection, order: Order) -> list[Order]:
    """What a cancel names: the tests of a specimen's order, or, named by its number
    alone, every test of the order (on whichever specimens it is)."""
    if order.specimen_id:
        return [order]
    placed = orders.orders_placed(conn, order.placer_order)
    if order.test_codes:
        return [replace(o, test_codes=order.test_codes) for o in placed]
    return placed


def _withdraw(
    conn: Connection,
    order: Order,
    codes: tuple[str, ...],
    held: list[Order],
    downloads: Mapping[str, frozenset[str]],
    at: datetime,
    *,
    replacing: bool = False,
) -> None:
    """Withdraws from worklist analysers the tests of ``order`` a cancel names (or, when
    ``replacing``, those of the orders it replaces that it no longer asks for), but for
    those another order of the specimen still asks for."""
    same = [o for o in held if orders.same_order(order, o)]
    others = {code for o in held if o not in same for code in o.test_codes}
    if replacing:
        before = dict.fromkeys(code for o in same for code in o.test_codes)
        gone = tuple(code for code in before if code not in codes)
    else:
        gone = codes
    dropped = tuple(code for code in gone if code not in others)
    if dropped:
        worklist.enqueue(conn, replace(order, test_codes=dropped), worklist.CANCEL, downloads, at)


def _answer(
    sender: tuple[str, str],
    header: Header,
    charset: str,
    code: str,
    at: datetime,
    refusal: OrderRefused | None = None,
) -> bytes:
    """The ACK of an order, mirroring its header (MSH-3/4 as MSH-5/6, MSH-11, MSH-12), in
    the character set it declared (MSH-18 saying so) when it is one taken, else UTF-8;
    what that set cannot carry is replaced."""
    encoding = CHARSETS.get(charset)
    text = acknowledgment(
        header.control_id, code, at, str(refusal) if refusal is not None else "",
        header.trigger, receiver=header.sender or ("LIS", "LAB"), sender=sender,
        version=header.version, processing=header.processing,
        charset=charset if encoding is not None else "", error=refusal,
    )  # fmt: skip
    return text.encode(encoding or "utf-8", errors="replace")
