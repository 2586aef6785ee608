"""E1381 receiver against a modelled sender: frames, noise, splits, timers and commits;
and E1381 sender against a modelled receiver: replies, doubled, late or noisy, and timers.

The model predicts, from the standard's rules alone, every reply and event the link owes
for what the sender put on the wire. Arbitrary noise can leave the sender unsure what the
link made of it; the model then only checks what holds for any input until the sender
resynchronises (EOT, then silence past the frame timeout).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from middleware.astm.frames import ACK, ENQ, EOT, ETB, ETX, NAK, STX, build_frame, build_frames
from middleware.astm.link import (
    Busy,
    DuplicateFrame,
    Event,
    FrameRejected,
    Link,
    LinkSettings,
    MessageSent,
    Role,
    SendFailed,
    SendInterrupted,
    State,
    TextReceived,
    TimedOut,
    TransferEnded,
    TransferStarted,
)

FRAME_TIMEOUT = 30.0
# Small bounds, so that short runs reach them.
MAX_FRAME_BYTES = 64
MAX_MESSAGE_BYTES = 48
SETTINGS = LinkSettings(
    frame_timeout=FRAME_TIMEOUT,
    max_frame_bytes=MAX_FRAME_BYTES,
    max_message_bytes=MAX_MESSAGE_BYTES,
)

#: Bytes that mean something to a receiver: all else between frames is noise.
SIGNIFICANT = frozenset({STX, ETX, EOT, ENQ, ETB})
#: A reply is owed for an ENQ and for a frame, which ends in ETB or ETX.
OWES_A_REPLY = frozenset({ENQ, ETX, ETB})

# Record text without control characters, as a sender cuts it: an ETB frame carries some
# text, and not the end of a record (CR), which only an ETX frame carries. So two frames
# with the same number and text always agree on how they end.
_pieces = st.binary(min_size=1, max_size=24).map(
    lambda b: bytes(c if c >= 0x20 else 0x41 + c for c in b)
)
_line_noise = st.binary(min_size=1, max_size=40).map(
    lambda b: bytes(c if c not in SIGNIFICANT else 0x2E for c in b)
)
_cuts = st.lists(st.integers(min_value=1, max_value=80), max_size=3)
_pause = st.sampled_from([0.5, 10.0, FRAME_TIMEOUT - 0.1, FRAME_TIMEOUT, FRAME_TIMEOUT + 15])


@dataclass(frozen=True)
class Sent:
    """A frame as the sender meant it."""

    number: int
    text: bytes
    final: bool

    @property
    def wire(self) -> bytes:
        return build_frame(self.number, self.text, self.final)


def _frame(number: int, piece: bytes, final: bool) -> Sent:
    return Sent(number % 8, piece + b"\r" if final else piece, final)


@dataclass(frozen=True)
class Item:
    """What the sender put on the wire in one go, and where in the stream it lies."""

    kind: str  # enq, eot, frame, corrupt, partial, runaway, noise
    data: bytes
    start: int
    frame: Sent | None = None

    @property
    def end(self) -> int:
        return self.start + len(self.data)


def _pieces_of(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted({c for c in cuts if c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def _drain(link: Link) -> list[Event]:
    events = []
    while (event := link.next_event()) is not None:
        events.append(event)
    return events


def _seen(event: Event) -> tuple[object, ...]:
    """An event with the fields the model predicts, offsets included."""
    if isinstance(event, TransferStarted):
        return ("started", event.start)
    if isinstance(event, TextReceived):
        return ("text", event.text, event.start, event.end)
    if isinstance(event, TransferEnded):
        return ("ended", event.end)
    if isinstance(event, FrameRejected):
        return ("rejected", event.kind, event.offset)
    if isinstance(event, DuplicateFrame):
        return ("duplicate", event.number)
    if isinstance(event, TimedOut):
        return ("timeout", event.phase, event.end)
    raise AssertionError(f"a receiver has no business with {event!r}")


class Receiver(RuleBasedStateMachine):
    """The link under test, the sender that drives it and the shell that commits."""

    @initialize()
    def start(self) -> None:
        self.link = Link(SETTINGS)
        self.now = 0.0
        self.fed = 0
        self.owed = 0  # replies the link may owe at most, over the whole run
        self.replies = 0
        self.undecided = False  # the shell holds a text it has not committed yet
        self.last_text = b""
        self.lost = False
        self.last_sent: Sent | None = None
        self._reset_model()

    def _reset_model(self) -> None:
        self.phase = "neutral"  # neutral, receiving or deciding
        self.expected = 1
        self.last: Sent | None = None  # last frame taken, to recognise its repeat
        self.text = bytearray()  # text of the ETB frames taken since the last commit
        self.text_start: int | None = None  # where the first of them starts
        self.partial: tuple[int, int] | None = None  # start and length of a frame begun
        self.deadline: float | None = None
        self.deciding: Sent | None = None
        self.queue: list[Item] = []  # what arrived while a commit was pending
        self.refused: tuple[Sent, bytes] | None = None  # final frame refused, its text
        self.redelivered: bytes | None = None
        self.out = bytearray()
        self.events: list[tuple[object, ...]] = []

    # --- the model ------------------------------------------------------------------------

    def _answer(self, reply: int) -> None:
        self.out.append(reply)
        self.deadline = self.now + FRAME_TIMEOUT  # every answer restarts the frame timer

    def _refuse_frame(self, kind: str, offset: int) -> None:
        self._answer(NAK)
        self.events.append(("rejected", kind, offset))

    def _forget_text(self) -> None:
        self.text.clear()
        self.text_start = None

    def _begin_transfer(self, item: Item) -> None:
        self.phase = "receiving"
        self.expected = 1
        self.last = None
        self._forget_text()
        self.refused = None
        self._answer(ACK)
        self.events.append(("started", item.start))

    def _read(self, item: Item) -> None:
        if self.phase == "deciding":
            self.queue.append(item)  # nothing is read until the commit is decided
            return
        if self.phase == "neutral":
            if item.kind == "enq":
                self._begin_transfer(item)
            return
        if item.kind == "noise":
            if self.partial is not None:
                # Noise inside a frame begun is more of that frame.
                start, length = self.partial
                self.partial = (start, length + len(item.data))
                if self.partial[1] > MAX_FRAME_BYTES:
                    self.partial = None
                    self._refuse_frame("frame_too_long", start)
            return
        # Everything else starts with STX, ENQ or EOT, which abandons a frame begun.
        self.partial = None
        if item.kind == "enq":
            self._begin_transfer(item)
        elif item.kind == "eot":
            self.phase = "neutral"
            self._forget_text()
            self.deadline = None
            self.events.append(("ended", item.end))
        elif item.kind == "partial":
            self.partial = (item.start, len(item.data))
        elif item.kind == "runaway":
            self._refuse_frame("frame_too_long", item.start)
        elif item.kind == "corrupt":
            self._refuse_frame("checksum", item.start)
        else:
            assert item.frame is not None
            self._read_frame(item, item.frame)

    def _read_frame(self, item: Item, frame: Sent) -> None:
        if frame.number != self.expected:
            if frame == self.last:
                self._answer(ACK)  # our ACK was lost: take it again, deliver nothing
                self.events.append(("duplicate", frame.number))
            else:
                self._refuse_frame("frame_number", item.start)
        elif len(self.text) + len(frame.text) > MAX_MESSAGE_BYTES:
            self._refuse_frame("message_too_long", item.start)
        elif frame.final:
            # No answer yet (a): first the shell gets the whole text, exactly what the frames
            # carried (b), and after a refusal the same text again (c).
            whole = bytes(self.text) + frame.text
            start = item.start if self.text_start is None else self.text_start
            # A text starts at its first frame, and after a refusal still there.
            self.text_start = start
            self.events.append(("text", whole, start, item.end))
            if self.refused is not None and self.refused[0] == frame:
                self.redelivered = self.refused[1]
            self.phase = "deciding"
            self.deciding = frame
            self.deadline = None
        else:
            self._answer(ACK)
            if self.text_start is None:
                self.text_start = item.start
            self.text += frame.text
            self.expected = (frame.number + 1) % 8
            self.last = frame
            self.refused = None

    def _decide(self, keep: bool, text: bytes) -> None:
        frame = self.deciding
        assert frame is not None
        self.phase = "receiving"
        self.deciding = None
        if keep:
            self._answer(ACK)
            self._forget_text()
            self.expected = (frame.number + 1) % 8
            self.last = frame
            self.refused = None
        else:
            self._answer(NAK)  # the ETB frames' text stays for the repeat
            self.refused = (frame, text)
        queued, self.queue = self.queue, []
        for item in queued:
            self._read(item)

    # --- driving the link -----------------------------------------------------------------

    def _send(self, kind: str, data: bytes, cuts: list[int], frame: Sent | None = None) -> None:
        if self.lost:
            self._resynchronise()
        item = Item(kind, data, self.fed, frame)
        if kind == "noise" and SIGNIFICANT & set(data):
            self.lost = True
        if frame is not None:
            self.last_sent = frame
        for piece in _pieces_of(data, cuts):
            self.link.receive_data(piece, self.now)
        self.fed += len(data)
        self.owed += sum(byte in OWES_A_REPLY for byte in data)
        if not self.lost:
            self._read(item)
        self._settle(may_answer=not self.undecided)

    def _settle(self, may_answer: bool) -> None:
        """Compare what the link did with what the model predicts."""
        out = self.link.data_to_send()
        events = _drain(self.link)
        seen = [_seen(event) for event in events]
        assert set(out) <= {ACK, NAK}
        if not may_answer:
            assert out == b"", "answered while a commit was pending"
        self.replies += len(out)
        # A frame too long to keep is answered without a terminator to owe it to.
        self.owed += sum(s[:2] == ("rejected", "frame_too_long") for s in seen)
        texts = [event.text for event in events if isinstance(event, TextReceived)]
        assert len(texts) <= 1, "read on past a text awaiting its commit"
        if not self.lost:
            assert out == bytes(self.out)
            assert seen == self.events
            assert self.link.deadline == self.deadline
            if texts and self.redelivered is not None:
                assert texts[0] == self.redelivered
        if texts:
            self.undecided = True
            self.last_text = texts[0]
        self.out.clear()
        self.events.clear()
        self.redelivered = None

    # --- the sender -----------------------------------------------------------------------

    @rule(cuts=_cuts)
    def enq(self, cuts: list[int]) -> None:
        self._send("enq", bytes([ENQ]), cuts)

    @rule(cuts=_cuts)
    def eot(self, cuts: list[int]) -> None:
        self._send("eot", bytes([EOT]), cuts)

    @rule(pieces=st.lists(_pieces, min_size=1, max_size=4), cuts=_cuts)
    def record(self, pieces: list[bytes], cuts: list[int]) -> None:
        """A record as a correct sender sends it: ETB frames, then the ETX frame; it
        establishes the link first when it has not."""
        if self.lost:
            self._resynchronise()
        if self.phase == "neutral":
            self._send("enq", bytes([ENQ]), cuts)
        for i, piece in enumerate(pieces):
            frame = _frame(self.expected, piece, i == len(pieces) - 1)
            self._send("frame", frame.wire, cuts, frame)

    @rule(piece=_pieces, final=st.booleans(), cuts=_cuts)
    def next_frame(self, piece: bytes, final: bool, cuts: list[int]) -> None:
        frame = _frame(self.expected, piece, final)
        self._send("frame", frame.wire, cuts, frame)

    @precondition(lambda self: self.last_sent is not None)
    @rule(cuts=_cuts)
    def repeat_frame(self, cuts: list[int]) -> None:
        frame = self.last_sent
        assert frame is not None
        self._send("frame", frame.wire, cuts, frame)

    @rule(number=st.integers(1, 7), piece=_pieces, final=st.booleans(), cuts=_cuts)
    def frame_out_of_turn(self, number: int, piece: bytes, final: bool, cuts: list[int]) -> None:
        frame = _frame(self.expected + number, piece, final)
        self._send("frame", frame.wire, cuts, frame)

    @rule(piece=_pieces, final=st.booleans(), cuts=_cuts)
    def corrupted_frame(self, piece: bytes, final: bool, cuts: list[int]) -> None:
        wire = _frame(self.expected, piece, final).wire
        checksum = int(wire[-4:-2], 16)
        wire = wire[:-4] + b"%02X\r\n" % ((checksum + 1) % 256)
        self._send("corrupt", wire, cuts)

    # The model measures a frame cut short read by read, so it is not sent while bytes
    # queue up behind a pending commit, to be read in one go afterwards.
    @precondition(lambda self: not self.undecided)
    @rule(piece=_pieces, keep=st.integers(0, 25), cuts=_cuts)
    def frame_cut_short(self, piece: bytes, keep: int, cuts: list[int]) -> None:
        wire = _frame(self.expected, piece, False).wire
        self._send("partial", wire[: 1 + min(keep, len(wire) - 6)], cuts)

    @precondition(lambda self: self.phase == "receiving" and not self.lost)
    @rule(
        piece=_pieces,
        final=st.booleans(),
        trailer=st.lists(st.sampled_from([0x30, 0x41, 0x0D, 0x0A, 0x15]), max_size=3),
        cuts=_cuts,
    )
    def sender_falls_silent_in_a_checksum(
        self, piece: bytes, final: bool, trailer: list[int], cuts: list[int]
    ) -> None:
        """The line drops after ETB or ETX: what came after it is the frame's checksum and
        CR LF, whatever the bytes (but STX, EOT and ENQ), and it is all forgotten when the
        frame timer expires."""
        wire = _frame(self.expected, piece, final).wire
        self._send("partial", wire[:-4] + bytes(trailer), cuts)
        assert self.deadline is not None
        self._wait_until(self.deadline)

    @rule(
        piece=_pieces,
        final=st.booleans(),
        kept=st.integers(0, 3),
        then=st.sampled_from(["enq", "eot", "frame"]),
        cuts=_cuts,
    )
    def sender_abandons_a_frame_in_its_trailer(
        self, piece: bytes, final: bool, kept: int, then: str, cuts: list[int]
    ) -> None:
        """ENQ, EOT or the next frame's STX where the checksum, CR or LF belongs: the frame
        is abandoned, as one cut short in its text is, and that byte read for what it is."""
        wire = _frame(self.expected, piece, final).wire
        self._send("partial", wire[: len(wire) - 4 + kept], cuts)
        if then == "enq":
            self.enq(cuts)
        elif then == "eot":
            self.eot(cuts)
        else:
            self.next_frame(piece, final, cuts)

    @precondition(lambda self: not self.undecided)
    @rule(extra=st.integers(1, 40), cuts=_cuts)
    def runaway_frame(self, extra: int, cuts: list[int]) -> None:
        self._send("runaway", bytes([STX]) + b"1" + b"x" * (MAX_FRAME_BYTES + extra), cuts)

    @rule(data=_line_noise, cuts=_cuts)
    def line_noise(self, data: bytes, cuts: list[int]) -> None:
        self._send("noise", data, cuts)

    @rule(data=st.binary(min_size=1, max_size=40), cuts=_cuts)
    def any_noise(self, data: bytes, cuts: list[int]) -> None:
        self._send("noise", data, cuts)

    # --- time and the shell -----------------------------------------------------------------

    @rule(pause=_pause)
    def time_passes(self, pause: float) -> None:
        self._wait_until(self.now + pause)

    def _wait_until(self, now: float) -> None:
        self.now = now
        self.link.handle_timer(now)
        if (
            not self.lost
            and self.phase == "receiving"
            and self.deadline is not None
            and self.now >= self.deadline
        ):
            self.phase = "neutral"
            self.partial = None
            self._forget_text()
            self.deadline = None
            self.events.append(("timeout", "frame", self.fed))
        self._settle(may_answer=False)

    @precondition(lambda self: self.undecided)
    @rule(keep=st.booleans())
    def commit(self, keep: bool) -> None:
        """The shell stores the text; the store succeeds or fails."""
        self.undecided = False
        if not self.lost:
            self._decide(keep, self.last_text)
        if keep:
            self.link.acknowledge(self.now)
        else:
            self.link.refuse(self.now)
        self._settle(may_answer=True)

    @precondition(lambda self: self.undecided and self.last_sent is not None)
    @rule(cuts=_cuts)
    def refused_and_sent_again(self, cuts: list[int]) -> None:
        """The usual sequel of a failed commit: the sender repeats the frame we NAKed."""
        self.commit(keep=False)
        self.repeat_frame(cuts)

    def _resynchronise(self) -> None:
        """The sender gives up on whatever the link made of the noise: EOT, then silence."""
        self.link.receive_data(bytes([EOT]), self.now)
        self.fed += 1
        self._settle(may_answer=not self.undecided)
        while self.undecided:  # the EOT is read once the shell has decided
            self.undecided = False
            self.link.acknowledge(self.now)
            self._settle(may_answer=True)
        self.now += FRAME_TIMEOUT + 1
        self.link.handle_timer(self.now)
        self._settle(may_answer=False)
        # Whatever the noise began, the EOT or the frame timer has ended it.
        assert self.link.state is State.NEUTRAL
        self.lost = False
        self._reset_model()

    # --- what holds after every step ------------------------------------------------------

    @invariant()
    def at_most_one_reply_per_enq_or_frame(self) -> None:
        assert self.replies <= self.owed

    @invariant()
    def every_byte_is_counted(self) -> None:
        assert self.link.received == self.fed

    @invariant()
    def a_pending_commit_holds_the_link(self) -> None:
        assert (self.link.state is State.AWAITING_DECISION) == self.undecided


TestReceiver = Receiver.TestCase
TestReceiver.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


SENDER = LinkSettings(role=Role.HOST)
_PHASES = {
    "neutral": State.NEUTRAL,
    "establishing": State.ESTABLISHING,
    "sending": State.SENDING,
}
#: What a receiver may put on the line while we send: its replies, and noise (no ENQ, so
#: the link never becomes the receiver here; the Receiver machine covers that side).
_reply_bytes = st.sampled_from([ACK, ACK, NAK, EOT, 0x0D, 0x78])


class Sender(RuleBasedStateMachine):
    """The link sending messages, the receiver that replies to it in reads of one or more
    bytes, and time. A reply answers only what was on the wire before it arrived: once a
    reply makes the link send (a frame, EOT, ENQ), the rest of that read is not read."""

    @initialize()
    def start(self) -> None:
        self.link = Link(SENDER)
        self.now = 0.0
        self.fed = 0
        self.phase = "neutral"
        self.queue: list[tuple[int, list[bytes]]] = []
        self.index = 0
        self.attempts = 0
        self.not_before = 0.0
        self.timer: float | None = None
        self.out = bytearray()
        self.events: list[Event] = []

    # --- the model ------------------------------------------------------------------------

    @property
    def deadline(self) -> float | None:
        if self.phase == "neutral":
            return self.not_before if self.queue else None
        return self.timer

    def _establish(self) -> None:
        if self.phase == "neutral" and self.queue and self.now >= self.not_before:
            self.out.append(ENQ)
            self.phase = "establishing"
            self.timer = self.now + SENDER.reply_timeout

    def _neutral(self, not_before: float | None = None) -> None:
        self.phase = "neutral"
        self.timer = None
        if not_before is not None:
            self.not_before = max(self.not_before, not_before)
        self._establish()

    def _send_frame(self, first: bool) -> None:
        self.attempts = 1 if first else self.attempts + 1
        self.out += self.queue[0][1][self.index]
        self.timer = self.now + SENDER.reply_timeout

    def _finish(self) -> None:
        message_id, _ = self.queue.pop(0)
        self.out.append(EOT)
        self.events.append(MessageSent(message_id))
        self._neutral()

    def _abort(self, reason: str, timed_out: bool) -> None:
        message_id, _ = self.queue.pop(0)
        self.out.append(EOT)
        if timed_out:
            self.events.append(TimedOut("reply", f"{reason} within {SENDER.reply_timeout:g} s"))
        self.events.append(SendFailed(message_id, reason))
        self._neutral()

    def _read(self, chunk: bytes) -> None:
        for byte in chunk:
            if self.phase == "establishing":
                if byte == ACK:
                    self.phase = "sending"
                    self.index = 0
                    self._send_frame(first=True)
                    return  # the rest came before frame 1 was sent
                if byte == NAK:
                    retry_at = self.now + SENDER.busy_retry
                    self.events.append(Busy(retry_at))
                    self._neutral(retry_at)
                # anything else is no reply to an ENQ
            elif self.phase == "sending":
                message_id, frames = self.queue[0]
                last = self.index + 1 == len(frames)
                if byte == ACK or (byte == EOT and last):
                    self.index += 1
                    if self.index == len(frames):
                        self._finish()
                    else:
                        self._send_frame(first=True)
                elif byte == EOT:
                    retry_at = self.now + SENDER.interrupt_holdoff
                    self.out.append(EOT)
                    self.events.append(SendInterrupted(message_id, retry_at))
                    self._neutral(retry_at)
                elif self.attempts >= SENDER.max_attempts:
                    self._abort(f"{self.attempts} attempts refused", timed_out=False)
                else:
                    self._send_frame(first=False)
                return  # every reply to a frame makes the link send something
            # neutral: only an ENQ means anything, and this receiver sends none

    # --- driving the link -----------------------------------------------------------------

    def _settle(self) -> None:
        assert self.link.data_to_send() == bytes(self.out)
        assert _drain(self.link) == self.events
        assert self.link.state is _PHASES[self.phase]
        assert self.link.deadline == self.deadline
        self.out.clear()
        self.events.clear()

    @rule(
        records=st.lists(
            st.binary(max_size=300).map(lambda b: bytes(0x41 + c % 26 for c in b)),
            min_size=1,
            max_size=3,
        )
    )
    def send_message(self, records: list[bytes]) -> None:
        message_id = self.link.send_message(records, self.now)
        frames: list[bytes] = []
        for record in records:
            frames += build_frames(record + b"\r", len(frames) + 1)
        self.queue.append((message_id, frames))
        self._establish()
        self._settle()

    @rule(chunk=st.lists(_reply_bytes, min_size=1, max_size=4).map(bytes))
    def replies(self, chunk: bytes) -> None:
        """What the receiver sent, read in one go: one reply, a doubled one, or several."""
        self.link.receive_data(chunk, self.now)
        self.fed += len(chunk)
        self._read(chunk)
        self._settle()

    @rule(pause=st.sampled_from([0.1, 1.0, 9.9, 10.0, 14.9, 15.0, 20.0]))
    def time_passes(self, pause: float) -> None:
        self.now += pause
        self.link.handle_timer(self.now)
        if self.phase == "neutral":
            self._establish()
        elif self.timer is not None and self.now >= self.timer:
            what = "ENQ" if self.phase == "establishing" else "frame"
            self._abort(f"no reply to {what}", timed_out=True)
        self._settle()

    @invariant()
    def every_byte_is_counted(self) -> None:
        assert self.link.received == self.fed


TestSender = Sender.TestCase
TestSender.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


@settings(max_examples=300, deadline=None)
@example(data=b"\x05\x02\x05\x05", cuts=[3], pauses=[FRAME_TIMEOUT], keep=[]).via(
    "once two ACKs for one ENQ"
)
@example(
    data=b"\x05" + build_frame(1, b"R|1", False) + build_frame(2, b"|5.4\r", True) + b"\x04",
    cuts=[1, 5],
    pauses=[],
    keep=[False],
).via("a message, its commit refused")
@given(
    data=st.binary(),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=10),
    pauses=st.lists(_pause, max_size=10),
    keep=st.lists(st.booleans(), max_size=10),
)
def test_any_bytes_in_any_pieces(
    data: bytes, cuts: list[int], pauses: list[float], keep: list[bool]
) -> None:
    link = Link(SETTINGS)
    now = 0.0
    owed = replies = 0
    decisions = iter(keep)
    for i, piece in enumerate(_pieces_of(data, cuts)):
        link.receive_data(piece, now)
        owed += sum(byte in OWES_A_REPLY for byte in piece)
        now += pauses[i] if i < len(pauses) else 0.0
        link.handle_timer(now)
        while True:
            seen = _drain(link)
            owed += sum(isinstance(e, FrameRejected) and e.kind == "frame_too_long" for e in seen)
            if not any(isinstance(e, TextReceived) for e in seen):
                break
            if next(decisions, True):
                link.acknowledge(now)
            else:
                link.refuse(now)
        replies += len(link.data_to_send())
    assert replies <= owed
    assert link.received == len(data)
