"""Orders from the LIS over MLLP: each message read, its orders put in the worklist in one
transaction, and answered: AA once committed, AE with the segment and field of what could
not be taken, AR when the store could not keep it (the LIS sends it again)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Mapping
from datetime import datetime

import structlog
from sqlalchemy import Connection

from middleware.hl7.mllp import Discarded, MllpReader, frame
from middleware.hl7.orders import CANCEL, OrderMessage, OrderRefused, acknowledgment, read_order
from middleware.hl7.segments import declared_charset, header_fields
from middleware.store import Store, orders, worklist
from middleware.store.sql import utcnow
from middleware.transport.tcp import ListenError
from middleware.transport.tls import peer_allowed

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
    ) -> None:
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
            while data := await asyncio.wait_for(reader.read(65536), self.idle_seconds):
                for event in mllp.receive_data(data):
                    if isinstance(event, Discarded):
                        log.warning("bytes from the LIS outside a message", reason=event.reason)
                        continue
                    answer = await self._take(event.message)
                    writer.write(frame(answer.encode("utf-8")))
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

    async def _take(self, data: bytes) -> str:
        now = self.clock()
        charset = declared_charset(data)
        encoding = CHARSETS.get(charset)
        try:
            if encoding is None:
                raise OrderRefused(f"MSH-18: character set {charset!r} not taken")
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError as exc:
                raise OrderRefused(
                    f"MSH-18: the message is not {charset or 'UTF-8'} text: {exc.reason}"
                ) from None
            message = read_order(text)
        except OrderRefused as refusal:
            log.warning("order refused", reason=str(refusal))
            control_id, trigger = _header(data)
            return acknowledgment(control_id, "AE", now, str(refusal), trigger)
        except Exception:  # text from outside must never leave the LIS without an answer
            log.exception("order unreadable")
            control_id, trigger = _header(data)
            return acknowledgment(control_id, "AE", now, "MSH: the message is unreadable", trigger)
        trigger = message.message_type.split("^")[1]
        try:
            await self.store.write(lambda conn: _apply(conn, message, now, self.downloads))
        except Exception as exc:
            log.error("order not kept", control_id=message.control_id, error=repr(exc))
            return acknowledgment(message.control_id, "AR", now, "not kept; send it again", trigger)
        if self.on_taken is not None:
            self.on_taken()
        return acknowledgment(message.control_id, "AA", now, trigger=trigger)


def _apply(
    conn: Connection,
    message: OrderMessage,
    at: datetime,
    downloads: Mapping[str, frozenset[str]],
) -> None:
    for change in message.changes:
        order = change.order
        if change.action == CANCEL:
            orders.cancel_tests(conn, order.specimen_id, order.test_codes)
            worklist.enqueue(conn, order, worklist.CANCEL, downloads, at)
        else:
            orders.put_order(conn, order, at)
            worklist.enqueue(conn, order, worklist.NEW, downloads, at)


def _header(data: bytes) -> tuple[str, str]:
    """MSH-10 and the trigger of MSH-9 of a message that could not be read, as far as
    they can be found, for its answer."""
    fields = header_fields(data.decode("ascii", errors="replace"))
    control_id = fields[9] if len(fields) > 9 else ""
    kind = fields[8].split("^") if len(fields) > 8 else []
    trigger = kind[1] if len(kind) > 1 and kind[1].isalnum() else "O01"
    return control_id, trigger
