"""E1381 link layer as a sans-I/O state machine.

One :class:`Link` serves both directions of a connection: it receives what the analyser
sends (results, host queries) and sends what the middleware has to say (orders, query
answers). It never reads a socket or a clock: the shell feeds it bytes and the current
time, writes out :meth:`Link.data_to_send`, handles :meth:`Link.next_event`, and calls
:meth:`Link.handle_timer` once :attr:`Link.deadline` has passed.

Phases follow the standard: neutral, establishment (ENQ answered by ACK, or NAK when
busy), transfer (frames answered by ACK, NAK or EOT for an interrupt), termination (EOT).
A reply answers only what we sent before it: once one makes us send (a frame, EOT, ENQ),
the rest of the bytes received with it is older than that and is discarded unread. A
busy or contention hold-off is never shortened by the peer's EOT; an interrupt's ends
with the message the peer interrupted us for.

**No acknowledgement before a durable commit.** A frame that ends a message (ETX) is never
answered on arrival: the link delivers its text in a :class:`TextReceived` event and waits,
reading nothing more, until the shell reports the outcome of keeping it. On
:meth:`Link.acknowledge` (the text is durable) it answers ACK; on :meth:`Link.refuse` (it is
not) it answers NAK and keeps the text of the message's earlier ETB frames, so the sender's
repeat of the final frame completes the same whole message. There is no way to turn this
off: it is what lets an analyser trust our ACK.

**Closing.** :meth:`Link.close` is how we end a connection: a message we are sending ends
with EOT (the termination phase, so the peer is neutral at once rather than after its
timer); a final frame whose commit is under way is still answered; nothing received after
that is read or answered, so the sender sends it again, to the next connection.

Every event that concerns received bytes carries the stream offset where they end, so the
shell can account for each byte (the raw bytes of a message are the bytes up to the end of
its final frame). Input is bounded: a frame longer than ``max_frame_bytes`` or a message
longer than ``max_message_bytes`` is NAKed, and scanning is linear in the bytes received.
"""

from __future__ import annotations

import enum
import itertools
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from middleware.astm.frames import (
    ACK,
    ENQ,
    EOT,
    ETB,
    ETX,
    MAX_TEXT,
    NAK,
    STX,
    Frame,
    FrameProblem,
    FrameTolerances,
    build_frames,
    check_frame,
)

#: What ends a frame body: ETB/ETX, or STX/EOT/ENQ when the sender abandoned it.
_FRAME_END = re.compile(b"[" + re.escape(bytes((STX, ETX, EOT, ENQ, ETB))) + b"]")
#: What means something between frames: the next frame, EOT or ENQ.
_BETWEEN_FRAMES = re.compile(b"[" + re.escape(bytes((STX, EOT, ENQ))) + b"]")
#: Consumed bytes are dropped from the receive buffer in slices at least this large, so
#: that taking bytes off its front costs nothing per byte.
_COMPACT = 1 << 16


class Role(enum.Enum):
    """Which side of the link we are; it decides who yields on contention."""

    HOST = "host"
    INSTRUMENT = "instrument"


class State(enum.Enum):
    NEUTRAL = "neutral"
    ESTABLISHING = "establishing"  # we sent ENQ and wait for the reply
    SENDING = "sending"  # we sent a frame and wait for the reply
    RECEIVING = "receiving"  # the peer owns the link; we wait for frames or EOT
    AWAITING_DECISION = "awaiting_decision"  # a final frame is in; waiting for the commit


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Per-connection parameters; the defaults are the standard's."""

    role: Role = Role.HOST
    reply_timeout: float = 15.0
    frame_timeout: float = 30.0
    max_attempts: int = 6
    busy_retry: float = 10.0
    host_contention_backoff: float = 20.0
    instrument_contention_backoff: float = 1.0
    interrupt_holdoff: float = 15.0
    max_text: int = MAX_TEXT
    tolerances: FrameTolerances = field(default_factory=FrameTolerances)
    max_frame_bytes: int = 1 << 20
    """A frame still without ETB/ETX after this many bytes is NAKed and discarded."""
    max_message_bytes: int = 8 << 20
    """A message (the text of ETB frames up to ETX) growing past this is NAKed."""

    @property
    def reply_deadline(self) -> float:
        """How long after a frame our reply still reaches the sender before its reply
        timer runs out: a tenth of the timer (a second at most) is left for the line and
        the two clocks."""
        return self.reply_timeout - min(self.reply_timeout / 10, 1.0)


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """The peer's ENQ was accepted; frames follow. ``start`` is the ENQ's stream offset."""

    start: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class TextReceived:
    """A frame group ending in ETX arrived whole: normally one record, CR included.

    It asks for a commit: the final frame is answered only once the shell calls
    :meth:`Link.acknowledge` or :meth:`Link.refuse`. ``start`` is the stream offset of
    its first frame, ``end`` the offset just past its final frame."""

    text: bytes
    end: int = field(default=0, compare=False)
    start: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """The peer sent EOT: the link is neutral again. ``end`` is the offset past the EOT.
    ``leftover`` is text of frames taken but never delivered (a record continued over
    ETB frames, or under ``records_span_frames`` over ETX ones), which the EOT cut off."""

    end: int = field(default=0, compare=False)
    leftover: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class FrameRejected:
    """A frame was answered with NAK."""

    kind: str
    detail: str
    offset: int


@dataclass(frozen=True, slots=True)
class DuplicateFrame:
    """The previous frame arrived again (our ACK was lost); ACKed, not delivered twice."""

    number: int


@dataclass(frozen=True, slots=True)
class TimedOut:
    """A timer expired; the link went back to neutral. ``phase`` names what was awaited.
    A frame half received when it expired is discarded: ``end`` is the offset past it."""

    phase: str
    detail: str
    end: int = field(default=0, compare=False)
    leftover: bytes = field(default=b"", compare=False)


@dataclass(frozen=True, slots=True)
class Busy:
    """The peer answered our ENQ with NAK; we try again at the deadline."""

    retry_at: float


@dataclass(frozen=True, slots=True)
class Contention:
    """Both sides sent ENQ at once; we yield or retry according to our role."""

    retry_at: float


@dataclass(frozen=True, slots=True)
class MessageSent:
    message_id: int


@dataclass(frozen=True, slots=True)
class SendFailed:
    """We gave up on a message and sent EOT; the message left the queue."""

    message_id: int
    reason: str


@dataclass(frozen=True, slots=True)
class SendInterrupted:
    """The peer asked us to stop (EOT instead of ACK); the message is sent again later."""

    message_id: int
    retry_at: float


Event = (
    TransferStarted
    | TextReceived
    | TransferEnded
    | FrameRejected
    | DuplicateFrame
    | TimedOut
    | Busy
    | Contention
    | MessageSent
    | SendFailed
    | SendInterrupted
)


@dataclass(slots=True)
class _Outgoing:
    message_id: int
    frames: list[bytes]


class Link:
    """The E1381 state machine for one connection."""

    def __init__(self, settings: LinkSettings | None = None) -> None:
        self.settings = settings or LinkSettings()
        self.state = State.NEUTRAL
        self.busy = False
        """While true, a peer's ENQ is answered with NAK (we cannot take a message now)."""
        self._out = bytearray()
        self._events: deque[Event] = deque()
        self._deadline: float | None = None
        self._not_before = 0.0
        self._interrupted_until: float | None = None
        """The hold-off an interrupt set, while it is the one in force."""
        self._ids = itertools.count(1)
        self._queue: deque[_Outgoing] = deque()
        # sender side
        self._frame_index = 0
        self._attempts = 0
        # receiver side: _buffer[_pos:] is unread; _offset is the stream offset of _buffer[0]
        self._buffer = bytearray()
        self._pos = 0
        self._offset = 0
        self._scanned = 0  # stream offset up to which the current frame has no terminator
        self._expected = 1
        self._last_frame: Frame | None = None
        self._record = bytearray()
        self._text_start: int | None = None  # stream offset of the text's first frame
        self._interrupt_requested = False
        self._before_decision: tuple[int, Frame | None, int] = (1, None, 0)
        self._answered = False
        """The frame awaiting a decision was NAKed already (:meth:`refuse_in_time`)."""
        self._closed = False

    # --- what the shell reads ------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or None when nothing is timed."""
        if self._closed:
            return None
        if self.state is State.NEUTRAL:
            return self._not_before if self._queue else None
        return self._deadline

    @property
    def pending_text(self) -> bytes:
        """Text of frames taken (and ACKed as intermediate) but not delivered yet."""
        return bytes(self._record)

    @property
    def received(self) -> int:
        """How many bytes the link has been given so far (the stream offset of the next)."""
        return self._offset + len(self._buffer)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def pending_messages(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    # --- what the shell tells us ---------------------------------------------------------

    def send_message(self, records: Sequence[bytes], now: float) -> int:
        """Queue a message (its records, without terminators); returns its id."""
        message_id = next(self._ids)
        if self._closed:
            self._events.append(SendFailed(message_id, "link closed"))
            return message_id
        frames: list[bytes] = []
        number = 1
        for record in records:
            group = build_frames(record + b"\r", number, self.settings.max_text)
            frames.extend(group)
            number += len(group)
        self._queue.append(_Outgoing(message_id, frames))
        self._maybe_establish(now)
        return message_id

    def close(self) -> None:
        """We are ending the connection. A message of ours in progress is abandoned with
        EOT, and every queued message fails (:class:`SendFailed`); a final frame waiting
        for its commit is still answered by :meth:`acknowledge` or :meth:`refuse`; bytes
        received from now on are counted in :attr:`received` and nothing else."""
        if self._closed:
            return
        self._closed = True
        if self.state in (State.ESTABLISHING, State.SENDING):
            self._out.append(EOT)
            self.state = State.NEUTRAL
        while self._queue:
            self._events.append(SendFailed(self._queue.popleft().message_id, "link closed"))
        self._deadline = None

    def interrupt(self) -> None:
        """Answer the peer's next frame with EOT instead of ACK (a receiver interrupt)."""
        self._interrupt_requested = True

    def acknowledge(self, now: float) -> None:
        """The text of the last :class:`TextReceived` is durable: answer its final frame
        with ACK (or EOT when an interrupt was asked for)."""
        answered = self._decided()
        self._record.clear()
        self._text_start = None
        if answered:
            # Refused in time, kept since: the sender's repeat is ACKed as a duplicate.
            self._deadline = now + self.settings.frame_timeout
        else:
            self._reply_to_frame(now)
        self._parse(now)

    def refuse(self, now: float) -> None:
        """The text of the last :class:`TextReceived` could not be kept: NAK its final
        frame. The text of the message's earlier frames stays, so the sender's repeat of
        the final frame delivers the same whole text again."""
        answered = self._decided()
        self._expected, self._last_frame, kept = self._before_decision
        del self._record[kept:]
        if not answered:
            self._out.append(NAK)
        self._deadline = now + self.settings.frame_timeout
        self._parse(now)

    def refuse_in_time(self) -> None:
        """The text of the last :class:`TextReceived` is still being kept when the
        sender's reply timer is about to run out: NAK its final frame now, so that the
        sender hears in time and sends it again, rather than read a late reply as the
        reply to what it sends next. The outcome, given later by :meth:`acknowledge` or
        :meth:`refuse`, sends nothing more: it decides what the repeat meets (an ACK as
        a duplicate of a frame kept, or the frame taken again)."""
        if self.state is not State.AWAITING_DECISION:
            raise RuntimeError(f"nothing awaits a reply in state {self.state.value}")
        if not self._answered:
            self._answered = True
            self._out.append(NAK)

    def _decided(self) -> bool:
        """Leave the wait for a decision; whether its frame was answered already."""
        if self.state is not State.AWAITING_DECISION:
            raise RuntimeError(f"nothing awaits a reply in state {self.state.value}")
        self.state = State.RECEIVING
        answered, self._answered = self._answered, False
        return answered

    def handle_timer(self, now: float) -> None:
        if self._closed:
            return
        if self.state is State.NEUTRAL:
            self._maybe_establish(now)
            return
        if self._deadline is None or now < self._deadline:
            return
        if self.state is State.ESTABLISHING:
            self._abort_send(now, "no reply to ENQ", "reply")
        elif self.state is State.SENDING:
            self._abort_send(now, "no reply to frame", "reply")
        elif self.state is State.RECEIVING:
            # What is buffered is a frame the sender gave up on: it must not be read as
            # the start of anything that comes later.
            self._skip(len(self._buffer) - self._pos)
            self._events.append(
                TimedOut(
                    "frame",
                    f"no frame within {self.settings.frame_timeout:g} s",
                    self.received,
                    bytes(self._record),
                )
            )
            self._to_neutral(now)

    def receive_data(self, data: bytes, now: float) -> None:
        self._buffer += data
        self._parse(now)

    # --- internals -----------------------------------------------------------------------

    @property
    def _at(self) -> int:
        """The stream offset of the next unread byte."""
        return self._offset + self._pos

    def _skip(self, n: int) -> None:
        self._pos += n
        if self._pos >= _COMPACT and self._pos * 2 >= len(self._buffer):
            del self._buffer[: self._pos]
            self._offset += self._pos
            self._pos = 0

    def _parse(self, now: float) -> None:
        if self._closed:
            return
        while self._pos < len(self._buffer) and self.state is not State.AWAITING_DECISION:
            if self.state is State.RECEIVING:
                if not self._parse_receiving(now):
                    return
            elif self.state is State.NEUTRAL:
                # Only ENQ means anything here; skip the rest in one step.
                found = self._buffer.find(ENQ, self._pos)
                if found < 0:
                    self._skip(len(self._buffer) - self._pos)
                    return
                self._skip(found - self._pos + 1)
                self._accept_enq(now)
            else:
                byte = self._buffer[self._pos]
                self._skip(1)
                sent = len(self._out)
                self._on_byte(byte, now)
                if len(self._out) > sent:
                    # That reply made us send (a frame, EOT, ENQ): whatever came with it
                    # was sent before what we just sent, so it cannot answer it.
                    self._skip(len(self._buffer) - self._pos)
                    return

    def _on_byte(self, byte: int, now: float) -> None:
        state = self.state
        if state is State.ESTABLISHING:
            if byte == ACK:
                self.state = State.SENDING
                self._frame_index = 0
                self._send_frame(now, first_attempt=True)
            elif byte == NAK:
                retry_at = now + self.settings.busy_retry
                self._events.append(Busy(retry_at))
                self._to_neutral(now, not_before=retry_at)
            elif byte == ENQ:
                self._on_contention(now)
        elif state is State.SENDING:
            self._on_frame_reply(byte, now)

    def _accept_enq(self, now: float) -> None:
        if self.busy:
            self._out.append(NAK)
            return
        self._out.append(ACK)
        self.state = State.RECEIVING
        self._expected = 1
        self._last_frame = None
        self._record.clear()
        self._text_start = None
        self._deadline = now + self.settings.frame_timeout
        self._events.append(TransferStarted(self._at - 1))

    def _on_contention(self, now: float) -> None:
        if self.settings.role is Role.HOST:
            # The instrument has priority: it repeats its ENQ after 1 s and we answer then.
            retry_at = now + self.settings.host_contention_backoff
        else:
            retry_at = now + self.settings.instrument_contention_backoff
        self._events.append(Contention(retry_at))
        self._to_neutral(now, not_before=retry_at)

    def _on_frame_reply(self, byte: int, now: float) -> None:
        current = self._queue[0]
        if byte == ACK:
            self._frame_index += 1
            if self._frame_index == len(current.frames):
                self._finish_message(now)
            else:
                self._send_frame(now, first_attempt=True)
        elif byte == EOT:
            # Receiver interrupt: the frame counts as received; stop and let the peer talk.
            if self._frame_index + 1 == len(current.frames):
                self._finish_message(now)
                return
            retry_at = now + self.settings.interrupt_holdoff
            self._out.append(EOT)
            self._events.append(SendInterrupted(current.message_id, retry_at))
            self._to_neutral(now, not_before=retry_at)
            self._interrupted_until = self._not_before
        elif self._attempts >= self.settings.max_attempts:
            self._abort_send(now, f"{self._attempts} attempts refused", None)
        else:
            self._send_frame(now, first_attempt=False)

    def _send_frame(self, now: float, *, first_attempt: bool) -> None:
        self._attempts = 1 if first_attempt else self._attempts + 1
        self._out += self._queue[0].frames[self._frame_index]
        self._deadline = now + self.settings.reply_timeout

    def _finish_message(self, now: float) -> None:
        done = self._queue.popleft()
        self._out.append(EOT)
        self._events.append(MessageSent(done.message_id))
        self._to_neutral(now)

    def _abort_send(self, now: float, reason: str, timed_out: str | None) -> None:
        failed = self._queue.popleft()
        self._out.append(EOT)
        if timed_out is not None:
            self._events.append(
                TimedOut(timed_out, f"{reason} within {self.settings.reply_timeout:g} s")
            )
        self._events.append(SendFailed(failed.message_id, reason))
        self._to_neutral(now)

    def _to_neutral(self, now: float, not_before: float | None = None) -> None:
        self.state = State.NEUTRAL
        self._deadline = None
        self._record.clear()
        self._text_start = None
        self._interrupt_requested = False
        if not_before is not None:
            self._not_before = max(self._not_before, not_before)
        self._maybe_establish(now)

    def _maybe_establish(self, now: float) -> None:
        if self._closed:
            return
        if self.state is State.NEUTRAL and self._queue and now >= self._not_before:
            self._out.append(ENQ)
            self.state = State.ESTABLISHING
            self._deadline = now + self.settings.reply_timeout

    # --- receiving frames ----------------------------------------------------------------

    def _parse_receiving(self, now: float) -> bool:
        """Handle what starts the unread bytes while receiving; False when more are needed."""
        buf = self._buffer
        first = buf[self._pos]
        if first == EOT:
            self._skip(1)
            self._events.append(TransferEnded(self._at, bytes(self._record)))
            # The peer's message is done: the interrupt it asked for is over (E1381 lets the
            # sender bid again then); a contention or busy hold-off still runs its course.
            if self._not_before == self._interrupted_until:
                self._not_before = now
            self._to_neutral(now)
            return True
        if first == ENQ:
            # The peer gave up on the transfer and starts anew: nothing of the old one
            # carries over, even when we are busy and refuse the new one.
            self._skip(1)
            self.state = State.NEUTRAL
            self._deadline = None
            self._record.clear()
            self._text_start = None
            self._accept_enq(now)
            return True
        if first != STX:
            # Stray bytes between frames (a trailer, the tail of a refused frame) are
            # ignored, up to the next byte that means something.
            found = _BETWEEN_FRAMES.search(buf, self._pos)
            self._skip((found.start() if found else len(buf)) - self._pos)
            return True
        end = self._find_terminator()
        if end is None:
            if len(buf) - self._pos > self.settings.max_frame_bytes:
                self._reject(
                    FrameProblem(
                        "frame_too_long",
                        f"no ETB/ETX within {self.settings.max_frame_bytes} bytes",
                    ),
                    len(buf) - self._pos,
                    now,
                )
            return False
        if end - self._pos > self.settings.max_frame_bytes:
            # The same refusal whether the bytes came in one read or many.
            self._reject(
                FrameProblem(
                    "frame_too_long", f"no ETB/ETX within {self.settings.max_frame_bytes} bytes"
                ),
                end - self._pos,
                now,
            )
            return True
        if buf[end] in (STX, EOT, ENQ):
            # A new frame, EOT or ENQ came before this one ended: the sender abandoned it.
            self._skip(end - self._pos)
            return True
        tolerant = self.settings.tolerances.no_checksum
        trailer = bytes(buf[end + 1 : end + 5])
        if not tolerant:
            # Where C1 C2 CR LF belong, they too mean the sender abandoned the frame.
            cut = _BETWEEN_FRAMES.search(trailer)
            if cut is not None:
                self._skip(end + 1 + cut.start() - self._pos)
                return True
            if len(trailer) < 4:
                return False
        body = bytes(buf[self._pos + 1 : end + 1])
        if tolerant:
            received = trailer[:2] if _is_hex(trailer[:2]) else None
            size = end + 1 - self._pos
        else:
            if trailer[2:] != b"\r\n":
                self._reject(
                    FrameProblem("syntax", "frame not closed by C1 C2 CR LF"),
                    end + 5 - self._pos,
                    now,
                )
                return True
            received = trailer[:2]
            size = end + 5 - self._pos
        result = check_frame(body, received, self.settings.tolerances, self.settings.max_text)
        if isinstance(result, FrameProblem):
            self._reject(result, size, now)
            return True
        start = self._at
        self._skip(size)
        self._accept_frame(result, start, now)
        return True

    def _find_terminator(self) -> int | None:
        """The index of what ends the frame starting at ``_pos``; the bytes already found
        to hold no terminator are not scanned again."""
        begin = max(self._pos + 1, self._scanned - self._offset)
        found = _FRAME_END.search(self._buffer, begin)
        if found is None:
            self._scanned = self._offset + len(self._buffer)
            return None
        return found.start()

    def _reject(self, problem: FrameProblem, size: int, now: float) -> None:
        offset = self._at
        self._skip(size)
        self._out.append(NAK)
        self._deadline = now + self.settings.frame_timeout
        self._events.append(FrameRejected(problem.kind, problem.detail, offset))

    def _accept_frame(self, frame: Frame, start: int, now: float) -> None:
        self._deadline = now + self.settings.frame_timeout
        before = (self._expected, self._last_frame, len(self._record))
        if frame.number is not None:
            previous = self._last_frame
            if (
                frame.number == 1
                and self.settings.tolerances.numbering_restarts
                and frame.text[:1] in (b"H", b"h")
                and not self._record
            ):
                self._expected = 1
            if frame.number != self._expected:
                if (
                    previous is not None
                    and frame.number == previous.number
                    and frame.text == previous.text
                    and frame.final == previous.final
                ):
                    self._out.append(ACK)
                    self._events.append(DuplicateFrame(frame.number))
                    return
                problem = FrameProblem(
                    "frame_number", f"frame {frame.number} received, {self._expected} expected"
                )
                self._out.append(NAK)
                self._events.append(FrameRejected(problem.kind, problem.detail, start))
                return
        if len(self._record) + len(frame.text) > self.settings.max_message_bytes:
            self._out.append(NAK)
            self._events.append(
                FrameRejected(
                    "message_too_long",
                    f"message longer than {self.settings.max_message_bytes} bytes",
                    start,
                )
            )
            return
        if frame.number is not None:
            self._expected = (frame.number + 1) % 8
        self._last_frame = frame
        text_start = start if self._text_start is None else self._text_start
        self._text_start = text_start
        self._record += frame.text
        if frame.final and not (
            self.settings.tolerances.records_span_frames
            and not self._record.endswith((b"\r", b"\n"))
        ):
            self._events.append(TextReceived(bytes(self._record), self._at, text_start))
            self.state = State.AWAITING_DECISION
            self._before_decision = before
            self._deadline = None
            return
        self._reply_to_frame(now)

    def _reply_to_frame(self, now: float) -> None:
        if self._interrupt_requested:
            self._interrupt_requested = False
            self._out.append(EOT)
        else:
            self._out.append(ACK)
        self._deadline = now + self.settings.frame_timeout


def _is_hex(chars: bytes) -> bool:
    return len(chars) == 2 and all(c in b"0123456789ABCDEFabcdef" for c in chars)
