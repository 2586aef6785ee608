"""Orders from the LIS over MLLP: each message read, its orders put in the worklist in one
transaction, and answered: AA once committed, AE with the segment and field of what could
not be taken, AR when the store could not keep it (the LIS sends it again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime

import structlog
from sqlalchemy import Connection

from middleware.hl7.mllp import Discarded, MllpReader, frame
from middleware.hl7.orders import CANCEL, OrderMessage, OrderRefused, acknowledgment, read_order
from middleware.store import Store, orders
from middleware.store.sql import utcnow
from middleware.transport.tcp import ListenError

log = structlog.get_logger("middleware.orders")


class OrderReceiver:
    def __init__(self, store: Store, clock: Callable[[], datetime] = utcnow) -> None:
        self.store = store
        self.clock = clock
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        try:
            self._server = await asyncio.start_server(self._serve, host, port)
        except OSError as exc:
            raise ListenError("LIS orders", host, port, exc) from exc
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("taking orders from the LIS", host=host, port=bound)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        mllp = MllpReader()
        peer = writer.get_extra_info("peername")
        try:
            while data := await reader.read(65536):
                for event in mllp.receive_data(data):
                    if isinstance(event, Discarded):
                        log.warning("bytes from the LIS outside a message", reason=event.reason)
                        continue
                    answer = await self._take(event.message.decode("utf-8", errors="replace"))
                    writer.write(frame(answer.encode("utf-8")))
                    await writer.drain()
        except (ConnectionError, OSError) as exc:
            log.warning("order connection lost", peer=peer, error=repr(exc))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _take(self, text: str) -> str:
        now = self.clock()
        try:
            message = read_order(text)
        except OrderRefused as refusal:
            log.warning("order refused", reason=str(refusal))
            return acknowledgment(_control_id(text), "AE", now, str(refusal))
        except Exception:  # text from outside must never leave the LIS without an answer
            log.exception("order unreadable")
            return acknowledgment(_control_id(text), "AE", now, "MSH: the message is unreadable")
        try:
            await self.store.write(lambda conn: _apply(conn, message, now))
        except Exception as exc:
            log.error("order not kept", control_id=message.control_id, error=repr(exc))
            return acknowledgment(message.control_id, "AR", now, "not kept; send it again")
        return acknowledgment(message.control_id, "AA", now)


def _apply(conn: Connection, message: OrderMessage, at: datetime) -> None:
    for change in message.changes:
        order = change.order
        if change.action == CANCEL:
            orders.cancel_tests(conn, order.specimen_id, order.test_codes)
        else:
            orders.put_order(conn, order, at)


def _control_id(text: str) -> str:
    """MSH-10 of a message that could not be read, as far as it can be found."""
    first = text.replace("\n", "\r").split("\r", 1)[0]
    fields = first.split("|")
    return fields[9] if first.startswith("MSH") and len(fields) > 9 else ""
