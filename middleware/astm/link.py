"""E1381 link layer as a sans-I/O state machine.

One :class:`Link` serves both directions of a connection: it receives what the analyser
sends (results, host queries) and sends what the middleware has to say (orders, query
answers). It never reads a socket or a clock: the shell feeds it bytes and the current
time, writes out :meth:`Link.data_to_send`, handles :meth:`Link.next_event`, and calls
:meth:`Link.handle_timer` once :attr:`Link.deadline` has passed.

Phases follow the standard: neutral, establishment (ENQ answered by ACK, or NAK when
busy), transfer (frames answered by ACK, NAK or EOT for an interrupt), termination (EOT).
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

#: A frame body longer than this without ETB/ETX is garbage, not a frame.
_MAX_BODY = 1 << 20
#: What ends a frame body: ETB/ETX, or STX/EOT when the sender abandoned it.
_FRAME_END = re.compile(b"[" + re.escape(bytes((STX, ETX, EOT, ETB))) + b"]")


class Role(enum.Enum):
    """Which side of the link we are; it decides who yields on contention."""

    HOST = "host"
    INSTRUMENT = "instrument"


class State(enum.Enum):
    NEUTRAL = "neutral"
    ESTABLISHING = "establishing"  # we sent ENQ and wait for the reply
    SENDING = "sending"  # we sent a frame and wait for the reply
    RECEIVING = "receiving"  # the peer owns the link; we wait for frames or EOT
    AWAITING_DECISION = "awaiting_decision"  # a final frame is in; the shell decides ACK/EOT


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
    defer_final_ack: bool = False
    """Hold the reply to each final (ETX) frame until the shell calls acknowledge()."""


# --- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TransferStarted:
    """The peer's ENQ was accepted; frames follow."""


@dataclass(frozen=True, slots=True)
class TextReceived:
    """A frame group ending in ETX arrived whole: normally one record, CR included."""

    text: bytes


@dataclass(frozen=True, slots=True)
class TransferEnded:
    """The peer sent EOT: the link is neutral again."""


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
    """A timer expired; the link went back to neutral. ``phase`` names what was awaited."""

    phase: str
    detail: str


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
        self._ids = itertools.count(1)
        self._queue: deque[_Outgoing] = deque()
        # sender side
        self._frame_index = 0
        self._attempts = 0
        # receiver side
        self._buffer = bytearray()
        self._offset = 0  # stream offset of _buffer[0]
        self._expected = 1
        self._last_frame: Frame | None = None
        self._record = bytearray()
        self._interrupt_requested = False
        self._before_decision: tuple[int, Frame | None] = (1, None)

    # --- what the shell reads ------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        """When :meth:`handle_timer` must be called next, or None when nothing is timed."""
        if self.state is State.NEUTRAL:
            return self._not_before if self._queue else None
        return self._deadline

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    @property
    def pending_messages(self) -> int:
        return len(self._queue)

    # --- what the shell tells us ---------------------------------------------------------

    def send_message(self, records: Sequence[bytes], now: float) -> int:
        """Queue a message (its records, without terminators); returns its id."""
        message_id = next(self._ids)
        frames: list[bytes] = []
        number = 1
        for record in records:
            group = build_frames(record + b"\r", number, self.settings.max_text)
            frames.extend(group)
            number += len(group)
        self._queue.append(_Outgoing(message_id, frames))
        self._maybe_establish(now)
        return message_id

    def interrupt(self) -> None:
        """Answer the peer's next frame with EOT instead of ACK (a receiver interrupt)."""
        self._interrupt_requested = True

    def acknowledge(self, now: float) -> None:
        """Reply to a final frame held under ``defer_final_ack``: ACK, or EOT if interrupting."""
        self._decided()
        self._reply_to_frame(now)
        self._parse(now)

    def refuse(self, now: float) -> None:
        """NAK a final frame held under ``defer_final_ack`` (it could not be kept): the
        sender sends it again and its text is delivered again."""
        self._decided()
        self._expected, self._last_frame = self._before_decision
        self._out.append(NAK)
        self._deadline = now + self.settings.frame_timeout
        self._parse(now)

    def _decided(self) -> None:
        if self.state is not State.AWAITING_DECISION:
            raise RuntimeError(f"nothing awaits a reply in state {self.state.value}")
        self.state = State.RECEIVING

    def handle_timer(self, now: float) -> None:
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
            self._events.append(
                TimedOut("frame", f"no frame within {self.settings.frame_timeout:g} s")
            )
            self._to_neutral(now)

    def receive_data(self, data: bytes, now: float) -> None:
        self._buffer += data
        self._parse(now)

    # --- internals -----------------------------------------------------------------------

    def _parse(self, now: float) -> None:
        while self._buffer and self.state is not State.AWAITING_DECISION:
            if self.state is State.RECEIVING:
                if not self._parse_receiving(now):
                    return
            else:
                self._consume(1, now)

    def _consume(self, n: int, now: float) -> None:
        """Take ``n`` bytes off the buffer; a single byte outside a frame is handled here."""
        if n == 1:
            byte = self._buffer[0]
            del self._buffer[0]
            self._offset += 1
            self._on_byte(byte, now)
        else:
            del self._buffer[:n]
            self._offset += n

    def _on_byte(self, byte: int, now: float) -> None:
        state = self.state
        if state is State.NEUTRAL:
            if byte == ENQ:
                self._accept_enq(now)
        elif state is State.ESTABLISHING:
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
        # RECEIVING is parsed frame-wise; AWAITING_DECISION does not read.

    def _accept_enq(self, now: float) -> None:
        if self.busy:
            self._out.append(NAK)
            return
        self._out.append(ACK)
        self.state = State.RECEIVING
        self._expected = 1
        self._last_frame = None
        self._record.clear()
        self._deadline = now + self.settings.frame_timeout
        self._events.append(TransferStarted())

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
        self._interrupt_requested = False
        if not_before is not None:
            self._not_before = not_before
        self._maybe_establish(now)

    def _maybe_establish(self, now: float) -> None:
        if self.state is State.NEUTRAL and self._queue and now >= self._not_before:
            self._out.append(ENQ)
            self.state = State.ESTABLISHING
            self._deadline = now + self.settings.reply_timeout

    # --- receiving frames ----------------------------------------------------------------

    def _parse_receiving(self, now: float) -> bool:
        """Handle what starts the buffer while receiving; False when more bytes are needed."""
        buf = self._buffer
        first = buf[0]
        if first == EOT:
            self._consume(1, now)  # neutral-state handling of EOT is nothing
            self._events.append(TransferEnded())
            # An interrupting peer may send again at once.
            self._to_neutral(now, not_before=now)
            return True
        if first == ENQ:
            # The peer gave up on the transfer and starts anew.
            self._consume(1, now)
            self._accept_enq(now)
            return True
        if first != STX:
            self._consume(1, now)  # stray bytes between frames (e.g. a trailer) are ignored
            return True
        end = self._find_terminator()
        if end is None:
            if len(buf) > _MAX_BODY:
                self._reject(FrameProblem("syntax", "no ETB/ETX in a frame"), len(buf), now)
            return False
        if buf[end] in (STX, EOT):
            # A new frame or EOT came before this one ended: the sender abandoned it.
            self._consume(end, now)
            return True
        tolerant = self.settings.tolerances.no_checksum
        trailer = bytes(buf[end + 1 : end + 5])
        if not tolerant and len(trailer) < 4:
            return False
        body = bytes(buf[1 : end + 1])
        if tolerant:
            received = trailer[:2] if _is_hex(trailer[:2]) else None
            size = end + 1
        else:
            if trailer[2:] != b"\r\n":
                self._reject(
                    FrameProblem("syntax", "frame not closed by C1 C2 CR LF"), end + 5, now
                )
                return True
            received = trailer[:2]
            size = end + 5
        result = check_frame(body, received, self.settings.tolerances, self.settings.max_text)
        if isinstance(result, FrameProblem):
            self._reject(result, size, now)
            return True
        self._consume(size, now)
        self._accept_frame(result, now)
        return True

    def _find_terminator(self) -> int | None:
        found = _FRAME_END.search(self._buffer, 1)
        return found.start() if found else None

    def _reject(self, problem: FrameProblem, size: int, now: float) -> None:
        offset = self._offset
        self._consume(size, now)
        self._out.append(NAK)
        self._deadline = now + self.settings.frame_timeout
        self._events.append(FrameRejected(problem.kind, problem.detail, offset))

    def _accept_frame(self, frame: Frame, now: float) -> None:
        self._deadline = now + self.settings.frame_timeout
        before = (self._expected, self._last_frame)
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
                ):
                    self._out.append(ACK)
                    self._events.append(DuplicateFrame(frame.number))
                    return
                problem = FrameProblem(
                    "frame_number", f"frame {frame.number} received, {self._expected} expected"
                )
                self._out.append(NAK)
                self._events.append(FrameRejected(problem.kind, problem.detail, self._offset))
                return
            self._expected = (frame.number + 1) % 8
        self._last_frame = frame
        self._record += frame.text
        if frame.final and not (
            self.settings.tolerances.records_span_frames
            and not self._record.endswith((b"\r", b"\n"))
        ):
            self._events.append(TextReceived(bytes(self._record)))
            self._record.clear()
            if self.settings.defer_final_ack:
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
