"""Delivering the outbox to the LIS over MLLP: one message at a time, each waiting for
its answer, claimed and recorded in batches.

The sender claims the oldest entries it may send (``store/outbox.py`` keeps per-specimen
order and other daemons' claims), records that it sends them, writes each and waits for
the LIS's answer naming its control id before the next. AA closes an entry; AE or AR
stops it for a person or sets it aside, as configured; there is no blind resend loop. No
answer within the timeout, or a lost connection, closes the connection: after a growing
delay (base, multiplier, ceiling, jitter) the same message is sent again, with the same
control id. Every send, answer and failure is in the outbox log.

The answers of a batch are recorded as they come, in store writes the sender does not
wait for (one at a time and at most one each RECORD_EVERY: the answers that come
meanwhile go in the next), each sharing a commit with what the analysers send: the store
has one writer for every analyser and the LIS, and waiting for a write per message would
make the LIS wait behind the analysers' messages (a few messages a second while ten
analysers send). A daemon killed mid-batch then sends again only the entries whose
answers were not yet committed, not the whole batch. Entries are recorded as sent when
claimed, before they go out, so that a daemon killed mid-batch leaves no transmission
unlogged; what the batch did not send after all is taken back, attempt and all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import TypeVar

import structlog
from sqlalchemy import Connection

from middleware.hl7.ack import Answer, read_answer
from middleware.hl7.mllp import Discarded, MllpReader, frame
from middleware.hl7.segments import encoding_of
from middleware.settings import LisConfig
from middleware.store import Store, outbox
from middleware.store.notices import OutboxChanged
from middleware.store.sql import utcnow
from middleware.store.writer import Committed
from middleware.transport.mllp import next_events
from middleware.transport.reconnect import Backoff
from middleware.transport.tls import client_context

log = structlog.get_logger("middleware.delivery")

#: How often the sender looks at an empty outbox for what it was not told of (another
#: daemon's messages, claims run out); a message this daemon queues wakes it at once.
POLL_SECONDS = 0.2
#: Entries claimed per store write while the connection to the LIS is up (one while it
#: is not: an unreachable LIS costs one entry's log line per attempt), at least.
BATCH = 50
#: At most, when the store's writer is busy (see :func:`batch_size`).
MAX_BATCH = 500
#: An entry of a batch goes out only while its claim outlasts the answer's timeout by this
#: much, so that its answer is recorded before another daemon may take it.
CLAIM_MARGIN = timedelta(seconds=5)
#: Answers are recorded while their batch goes on, a write at most this often (seconds): a
#: daemon killed mid-batch sends again what was answered in its last such span only.
RECORD_EVERY = 0.1
#: How long a stopping sender tries to record what its last batch became.
RECORD_ON_STOP_SECONDS = 5.0
#: Changes of the outbox that give the sender something to send.
_SENDABLE = frozenset({"queued", "retried"})
#: The log event of an entry recorded as sent that did not go out.
_WITHDRAWN = "withdrawn"


def batch_size(claim_wait: float, per_message: float, room: float) -> int:
    """How many entries the next claim takes. A claim is a store write, queued behind
    every analyser's messages: while they keep the writer busy, a claim waits, and the
    LIS waits with it. The batch is made long enough for its sending to last about twice
    that wait (``per_message``: the seconds one took to go and be answered), no shorter
    than BATCH, and no longer than what can go within ``room`` seconds of its claim, nor
    MAX_BATCH."""
    if per_message <= 0:
        return BATCH
    wanted = math.ceil(2 * claim_wait / per_message)
    return max(BATCH, min(wanted, int(room / per_message), MAX_BATCH))


class NoAnswer(Exception):
    """The LIS did not answer in time, or the connection was lost: send again later."""


@dataclass(frozen=True, slots=True)
class _Answered:
    entry: outbox.Entry
    answer: Answer
    text: str
    at: datetime


@dataclass(frozen=True, slots=True)
class _Unanswered:
    """No answer: the entry waits to be sent again. ``taken_back`` when it was recorded
    as sent but never went out."""

    entry: outbox.Entry
    event: str
    detail: str
    at: datetime
    taken_back: bool = False


_Outcome = _Answered | _Unanswered
_T = TypeVar("_T")


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
        # The seconds after its claim in which a batch's entries may go, halved: the
        # LIS's answers may come slower than the batch before's.
        self._room = (
            self.hold - timedelta(seconds=config.ack_timeout) - CLAIM_MARGIN
        ).total_seconds() / 2
        self._reader: asyncio.StreamReader | None = None
        self._closed_unanswered = 0
        """Messages in a row sent on a connection the LIS had kept, that it closed without a
        word."""
        self._one_message_a_connection = False
        """Set once the LIS showed it closes the connection after each answer."""
        self._writer: asyncio.StreamWriter | None = None
        self._mllp = MllpReader()
        self._queued = asyncio.Event()
        # What the entries claimed became, until a store write records it; kept on the
        # sender so that a run restarted after a failed write records it still.
        self._outcomes: list[_Outcome] = []
        # The claimed entries not yet answered, the first of them on the wire or not.
        self._unsettled: list[outbox.Entry] = []
        self._recorded_sent = False
        self._on_wire = False
        self._batch = BATCH
        self._recording: asyncio.Task[None] | None = None
        """The write recording answers while the batch goes on, if one is under way."""
        self._recorded_at = -math.inf
        self._record_later: asyncio.TimerHandle | None = None
        self._stopping = False

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
                connected = self._connected()
                asked = time.monotonic()
                # The answers a write under way did not record are back for this one: the
                # claim must not take again, as still this daemon's, what the LIS took.
                await self._recording_done()
                batch, at = await self._record(partial(self._claim, connected=connected))
                claim_wait = time.monotonic() - asked
                if not batch:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._queued.wait(), POLL_SECONDS)
                    continue
                self._unsettled, self._recorded_sent = list(batch), connected
                deadline: datetime | None = at + self.hold
                try:
                    if not connected:
                        deadline = await self._open(batch[0])
                    if deadline is not None:
                        sending = time.monotonic()
                        answered = await self._send_batch(deadline)
                        if connected and answered == len(batch) == self._batch:
                            # A full batch, all of it answered: the outbox has more.
                            per_message = (time.monotonic() - sending) / answered
                            self._batch = batch_size(claim_wait, per_message, self._room)
                        else:
                            self._batch = BATCH
                    else:
                        self._batch = BATCH
                except NoAnswer as failure:
                    self._batch = BATCH
                    event, detail = failure.args
                    failed = self._unsettled[0]
                    self._settle(event, detail, self._on_wire)
                    await self._close()
                    await self._record(lambda _conn: None)
                    delay = next_delay()
                    self.log.warning(
                        "LIS did not answer; sending again later",
                        outbox_id=failed.id,
                        control_id=failed.control_id,
                        reason=detail,
                        retry_in=round(delay, 2),
                    )
                    await asyncio.sleep(delay)
                    continue
                next_delay = self.backoff.delays()
        finally:
            await self._stop()

    def _claim(self, conn: Connection, connected: bool) -> tuple[list[outbox.Entry], datetime]:
        """The next batch and the time of its claim, read in the transaction: never
        before the entries were queued."""
        at = self.clock()
        if connected:
            return outbox.claim(conn, self.owner, at, self.hold, self._batch, sending=True), at
        return outbox.claim(conn, self.owner, at, self.hold), at

    async def _open(self, entry: outbox.Entry) -> datetime | None:
        """Connect for the one entry claimed while there was no connection and record it
        as sent: the deadline of its claim, None when the claim ran out meanwhile."""
        await self._connect()

        def sent(conn: Connection) -> tuple[bool, datetime]:
            at = self.clock()
            return outbox.sent(conn, entry.id, self.owner, entry.message, at, self.hold), at

        mine, at = await self.store.write(sent)
        if not mine:
            self._unsettled = []
            self.log.warning(
                "claim ran out before sending; left to its new holder", outbox_id=entry.id
            )
            return None
        self._recorded_sent = True
        return at + self.hold

    async def _send_batch(self, deadline: datetime) -> int:
        """Each claimed entry in turn, while its claim outlasts an answer's wait; how
        many were answered."""
        wait = timedelta(seconds=self.config.ack_timeout)
        answered = 0
        while self._unsettled:
            if self.clock() + wait + CLAIM_MARGIN > deadline:
                self._settle(
                    _WITHDRAWN, "not sent: its claim would run out before an answer", False
                )
                return answered
            entry = self._unsettled[0]
            # Every line logged about the entry names it, its specimen and instrument.
            with structlog.contextvars.bound_contextvars(
                outbox_id=entry.id, control_id=entry.control_id,
                specimen=entry.specimen_id, instrument=entry.instrument,
            ):  # fmt: skip
                answer, text = await self._exchange(entry)
                self._outcomes.append(_Answered(entry, answer, text, self.clock()))
                self._record_soon()
                self._unsettled.pop(0)
                self._on_wire = False
                answered += 1
                if not answer.accepted:
                    self.log.error(
                        "LIS refused a message",
                        answer=_refusal(answer),
                        state=self._refused_state,
                    )
        return answered

    def _settle(self, event: str, detail: str, first_sent: bool) -> None:
        """The batch ends here: its first unanswered entry gets ``event`` (its attempt
        kept when it went out, or was never recorded as sent), the others, never sent,
        are taken back."""
        if not self._unsettled:
            return
        at = self.clock()
        first, *behind = self._unsettled
        went = first_sent or not self._recorded_sent
        self._outcomes.append(_Unanswered(first, event, detail, at, taken_back=not went))
        if event != _WITHDRAWN:
            detail = f"not sent: the batch stopped at {first.control_id} ({event})"
        self._outcomes.extend(
            _Unanswered(entry, _WITHDRAWN, detail, at, taken_back=True) for entry in behind
        )
        self._unsettled, self._on_wire = [], False

    async def _record(self, then: Callable[[Connection], _T]) -> _T:
        """One store write: what the entries claimed became, then ``then``."""
        taken, self._outcomes = self._outcomes, []

        def write(conn: Connection) -> tuple[list[bool], _T]:
            answers = [self._answering(o) for o in taken if isinstance(o, _Answered)]
            mine = iter(outbox.answered_all(conn, self.owner, answers) if answers else ())
            outbox.release_claims(
                conn,
                self.owner,
                [
                    outbox.Releasing(o.entry.id, o.event, o.detail, o.at, o.taken_back)
                    for o in taken
                    if isinstance(o, _Unanswered)
                ],
            )
            kept = [next(mine) if isinstance(o, _Answered) else True for o in taken]
            return kept, then(conn)

        try:
            kept, value = await self.store.write(write)
        except asyncio.CancelledError:
            raise  # the write may still commit: recording it twice would log it twice
        except Exception:
            self._outcomes = taken + self._outcomes  # rolled back: recorded at the next
            raise
        for outcome, mine in zip(taken, kept, strict=True):
            if isinstance(outcome, _Answered):
                if not mine:
                    self.log.warning(
                        "answer came after the claim ran out; kept in the log only",
                        outbox_id=outcome.entry.id,
                    )
                elif outcome.answer.accepted:
                    self.log.info(
                        "delivered to the LIS", outbox_id=outcome.entry.id,
                        control_id=outcome.entry.control_id,
                        specimen=outcome.entry.specimen_id,
                        instrument=outcome.entry.instrument,
                    )  # fmt: skip
        return value

    def _record_soon(self) -> None:
        """Record the answers come so far without waiting for it: one such write at a
        time, RECORD_EVERY apart (what failed is back in ``_outcomes`` for the next)."""
        if self._stopping or not any(isinstance(o, _Answered) for o in self._outcomes):
            return
        if self._record_later is not None or (
            self._recording is not None and not self._recording.done()
        ):
            return
        wait = self._recorded_at + RECORD_EVERY - time.monotonic()
        if wait > 0:
            self._record_later = asyncio.get_running_loop().call_later(wait, self._record_due)
            return
        self._recorded_at = time.monotonic()
        self._recording = asyncio.create_task(self._record_answers())

    async def _recording_done(self) -> None:
        """Wait for the write recording answers, if one is under way; none is left for
        later (what the next write records, it records with it)."""
        if self._record_later is not None:
            self._record_later.cancel()
            self._record_later = None
        if self._recording is not None and not self._recording.done():
            await asyncio.wait([self._recording])

    def _record_due(self) -> None:
        self._record_later = None
        self._record_soon()

    async def _record_answers(self) -> None:
        try:
            await self._record(lambda _conn: None)
        except Exception as exc:
            # Tried again with the next answer or the next claim, not in a loop of its own
            # while the database is away.
            self.log.warning("answers not recorded yet; kept for the next write", error=repr(exc))
            return
        # What came meanwhile, once this task has ended.
        asyncio.get_running_loop().call_soon(self._record_soon)

    def _answering(self, outcome: _Answered) -> outbox.Answering:
        answer = outcome.answer
        if answer.accepted:
            state, detail = outbox.DELIVERED, ""
        else:
            state, detail = self._refused_state, _refusal(answer)
        return outbox.Answering(outcome.entry.id, state, outcome.text, detail, outcome.at)

    @property
    def _refused_state(self) -> str:
        return outbox.STOPPED if self.config.on_error == "stop" else outbox.DEAD

    async def _stop(self) -> None:
        """Record what the last batch became, so that a restarted daemon sends its
        unanswered entries at once instead of when their claims run out."""
        self._stopping = True
        self._settle("interrupted", "the sender stopped before the LIS answered", self._on_wire)
        try:
            await asyncio.wait_for(self._recording_done(), RECORD_ON_STOP_SECONDS)
            if self._outcomes:
                await asyncio.wait_for(self._record(lambda _conn: None), RECORD_ON_STOP_SECONDS)
        except Exception as exc:  # the claims run out by themselves
            self.log.warning("could not record the last answers before stopping", error=repr(exc))
        finally:
            await self._close()

    def _connected(self) -> bool:
        """Whether the connection to the LIS is up, as far as can be told without
        sending: the LIS may have closed it since its last answer."""
        return not (
            self._writer is None
            or self._writer.is_closing()
            or (self._reader is not None and self._reader.at_eof())
        )

    async def _connect(self) -> None:
        await self._close()
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

    async def _exchange(self, entry: outbox.Entry) -> tuple[Answer, str]:
        """The LIS's answer to the entry, sent on the connection (opened again if the LIS
        closed it since its last answer)."""
        # Whether the connection already carried an answer (the LIS kept it open so far).
        carried = self._connected() and self._mllp.received > 0
        if not self._connected() or (carried and self._one_message_a_connection):
            await self._connect()
            carried = False
        heard = self._mllp.received
        try:
            answered = await self._round(entry)
        except NoAnswer as failed:
            if carried and failed.args[0] == "disconnected" and self._mllp.received == heard:
                # The LIS closed it without a word: once may be a LIS restarting; twice,
                # it closes after each answer (its close had not come in yet when this
                # went out). Then a new connection for each message, rather than one
                # failed attempt in two.
                self._closed_unanswered += 1
                if self._closed_unanswered == 2:
                    self._one_message_a_connection = True
                    self.log.info("the LIS closes the connection after each answer; a new "
                                  "connection for each message from now on")  # fmt: skip
            raise
        if carried:
            self._closed_unanswered = 0  # two closes in a row, not two in a lifetime
        return answered

    async def _round(self, entry: outbox.Entry) -> tuple[Answer, str]:
        try:
            return await asyncio.wait_for(self._send(entry), self.config.ack_timeout)
        except TimeoutError:
            raise NoAnswer("timeout", f"no answer in {self.config.ack_timeout} s") from None
        except (OSError, EOFError) as exc:
            raise NoAnswer("disconnected", f"connection lost: {exc!r}") from None

    async def _send(self, entry: outbox.Entry) -> tuple[Answer, str]:
        assert self._writer is not None
        self._on_wire = True
        # In the character set its MSH-18 declares (UTF-8 unless it says 8859/1).
        header = entry.message.partition("\r")[0].encode("utf-8")
        self._writer.write(frame(entry.message.encode(encoding_of(header, "utf-8"))))
        await self._writer.drain()
        return await self._answer(entry)

    async def _answer(self, entry: outbox.Entry) -> tuple[Answer, str]:
        """The first answer naming this entry's control id, or a refusal naming none;
        any other is logged and passed over (D4: an ACK must name the message it
        answers)."""
        assert self._reader is not None
        while True:
            events = await next_events(self._reader, self._mllp)
            if events is None:
                events = self._mllp.end_of_stream()  # an answer it ended by closing
                if not events:
                    raise EOFError("the LIS closed the connection")
            for event in events:
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
        if not answer.control_id and not answer.accepted:
            # One message is on the wire at a time: a refusal naming none is its answer
            # (a LIS that could not read the message may not find its control id), not
            # one to wait past while the message goes again for ever.
            self.log.warning("error answer without MSA-2; taken as the message's",
                             control_id=entry.control_id, code=answer.code)  # fmt: skip
            return answer
        if answer.control_id != entry.control_id:
            self.log.warning(
                "answer names another message; passed over",
                expected=entry.control_id,
                named=answer.control_id,
            )
            return None
        return answer

    async def _close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _refusal(answer: Answer) -> str:
    """What the outbox and the log say of an error answer."""
    return f"{answer.code}: {answer.text or 'no reason given'}"
