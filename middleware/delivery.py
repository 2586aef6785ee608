"""Delivering the outbox to the LIS over MLLP: one entry at a time, each waiting for its
answer.

The sender claims the oldest entry it may send (``store/outbox.py`` keeps per-specimen
order and other daemons' claims), records that it sends it, writes it, and waits for the
LIS's answer naming its control id. AA closes the entry; AE or AR stops it for a person
or sets it aside, as configured; there is no blind resend loop. No answer within the
timeout, or a lost connection, closes the connection: after a growing delay (base,
multiplier, ceiling, jitter) the same message is sent again, with the same control id.
Every send, answer and failure is in the outbox log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

import structlog

from middleware.hl7.ack import Answer, read_answer
from middleware.hl7.mllp import Discarded, MllpReader, frame
from middleware.settings import LisConfig
from middleware.store import Store, outbox
from middleware.store.notices import OutboxChanged
from middleware.store.sql import utcnow
from middleware.store.writer import Committed
from middleware.transport.reconnect import Backoff
from middleware.transport.tls import client_context

log = structlog.get_logger("middleware.delivery")

#: How often the sender looks at an empty outbox for what it was not told of (another
#: daemon's messages, claims run out); a message this daemon queues wakes it at once.
POLL_SECONDS = 0.2
#: Changes of the outbox that give the sender something to send.
_SENDABLE = frozenset({"queued", "retried"})


class NoAnswer(Exception):
    """The LIS did not answer in time, or the connection was lost: send again later."""


class LisSender:
    def __init__(
        self,
        config: LisConfig,
        store: Store,
        owner: str,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.config = config
        self.tls = client_context(config.tls) if config.tls is not None else None
        self.store = store
        self.owner = owner
        self.clock = clock
        self.log = log.bind(lis=f"{config.host}:{config.port}")
        backoff = config.backoff
        self.backoff = Backoff(backoff.base, backoff.ceiling, backoff.jitter, backoff.multiplier)
        # Long enough for the answer; a daemon that dies leaves a claim that runs out.
        self.hold = timedelta(seconds=2 * config.ack_timeout + 5)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._mllp = MllpReader()
        self._queued = asyncio.Event()

    def committed(self, committed: Committed) -> None:
        """A commit listener of the store writer: a message queued or sent again wakes the
        sender, which otherwise would wait for its next look (up to POLL_SECONDS)."""
        if any(isinstance(n, OutboxChanged) and n.change in _SENDABLE for n in committed.notices):
            self._queued.set()

    async def run(self) -> None:
        """Deliver until cancelled."""
        next_delay = self.backoff.delays()
        try:
            while True:
                # Cleared before the claim: what is queued while it runs wakes the next wait.
                self._queued.clear()
                entry = await self.store.write(
                    lambda conn: outbox.claim_next(conn, self.owner, self.clock(), self.hold)
                )
                if entry is None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._queued.wait(), POLL_SECONDS)
                    continue
                # Every line logged about the entry names it, its specimen and instrument.
                with structlog.contextvars.bound_contextvars(
                    outbox_id=entry.id, control_id=entry.control_id,
                    specimen=entry.specimen_id, instrument=entry.instrument,
                ):  # fmt: skip
                    try:
                        answer = await self._deliver(entry)
                    except NoAnswer as failure:
                        await self._no_answer(entry, failure, next_delay())
                        continue
                    next_delay = self.backoff.delays()
                    if answer is not None:
                        await self._close_entry(entry, answer)
        finally:
            await self._close()

    async def _no_answer(self, entry: outbox.Entry, failure: NoAnswer, delay: float) -> None:
        await self._close()
        event, detail = failure.args
        await self.store.write(
            lambda conn: outbox.release_claim(
                conn, entry.id, self.owner, event, detail, self.clock()
            )
        )
        self.log.warning(
            "LIS did not answer; sending again later",
            outbox_id=entry.id,
            control_id=entry.control_id,
            reason=detail,
            retry_in=round(delay, 2),
        )
        await asyncio.sleep(delay)

    async def _deliver(self, entry: outbox.Entry) -> tuple[Answer, str] | None:
        """The LIS's answer to the entry; None when the entry is no longer this sender's
        to send (its claim ran out and another daemon took it)."""
        if self._writer is not None and (
            self._writer.is_closing() or (self._reader is not None and self._reader.at_eof())
        ):
            await self._close()  # the LIS closed it since its last answer: a new one
        if self._writer is None:
            try:
                server_name = None
                if self.tls is not None and self.config.tls is not None:
                    server_name = self.config.tls.server_name or self.config.host
                self._reader, self._writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.config.host, self.config.port, ssl=self.tls,
                        server_hostname=server_name,
                    ),
                    self.config.ack_timeout,
                )  # fmt: skip
            except (OSError, TimeoutError) as exc:  # ssl.SSLError is an OSError
                raise NoAnswer("unreachable", f"cannot connect: {exc!r}") from None
            self._mllp = MllpReader()
        mine = await self.store.write(
            lambda conn: outbox.sent(
                conn, entry.id, self.owner, entry.message, self.clock(), self.hold
            )
        )
        if not mine:
            self.log.warning(
                "claim ran out before sending; left to its new holder", outbox_id=entry.id
            )
            return None
        try:
            return await asyncio.wait_for(self._send(entry), self.config.ack_timeout)
        except TimeoutError:
            raise NoAnswer("timeout", f"no answer in {self.config.ack_timeout} s") from None
        except (OSError, EOFError) as exc:
            raise NoAnswer("disconnected", f"connection lost: {exc!r}") from None

    async def _send(self, entry: outbox.Entry) -> tuple[Answer, str]:
        assert self._writer is not None
        self._writer.write(frame(entry.message.encode("utf-8")))
        await self._writer.drain()
        return await self._answer(entry)

    async def _answer(self, entry: outbox.Entry) -> tuple[Answer, str]:
        """The first answer naming this entry's control id; any other is logged and
        passed over (D4: an ACK must name the message it answers)."""
        assert self._reader is not None
        while True:
            data = await self._reader.read(65536)
            if not data:
                raise EOFError("the LIS closed the connection")
            for event in self._mllp.receive_data(data):
                if isinstance(event, Discarded):
                    self.log.warning("bytes from the LIS outside a message", reason=event.reason)
                    continue
                text = event.message.decode("utf-8", errors="replace")
                found = self._read(entry, text)
                if found is not None:
                    return found, text

    def _read(self, entry: outbox.Entry, text: str) -> Answer | None:
        try:
            answer = read_answer(text)
        except ValueError as exc:
            self.log.warning("message from the LIS is not an answer", problem=str(exc))
            return None
        if answer.control_id != entry.control_id:
            self.log.warning(
                "answer names another message; passed over",
                expected=entry.control_id,
                named=answer.control_id,
            )
            return None
        return answer

    async def _close_entry(self, entry: outbox.Entry, found: tuple[Answer, str]) -> None:
        answer, text = found
        if answer.accepted:
            state, detail = outbox.DELIVERED, ""
        else:
            state = outbox.STOPPED if self.config.on_error == "stop" else outbox.DEAD
            detail = f"{answer.code}: {answer.text or 'no reason given'}"
            self.log.error(
                "LIS refused a message",
                outbox_id=entry.id,
                control_id=entry.control_id,
                specimen=entry.specimen_id,
                answer=detail,
                state=state,
            )
        kept = await self.store.write(
            lambda conn: outbox.answered(
                conn, entry.id, self.owner, state, text, detail, self.clock()
            )
        )
        if not kept:
            self.log.warning(
                "answer came after the claim ran out; kept in the log only", outbox_id=entry.id
            )
        elif answer.accepted:
            self.log.info("delivered to the LIS")

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
