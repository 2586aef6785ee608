"""MLLP framing (HL7 v2 over TCP) as a sans-I/O core, like :mod:`middleware.astm.link`.

A message travels as ``<VT> message <FS><CR>``. :class:`MllpReader` is fed the bytes a
connection receives, in pieces of any size, and gives back events: each whole message,
and what was not a message (bytes outside a block, a block cut short by a new ``<VT>`` or
by the end of the stream, a block longer than the bound), each with the stream offsets
of its bytes so that a shell can account for every byte it received. It reads no socket
and no clock. :func:`frame` wraps a message for sending.

Tolerated, because senders do it: a block ended by ``<FS>`` without the ``<CR>``
(``MessageReceived.missing_cr``), taken once other bytes follow, the stream ends, or the
shell says the sender went quiet after it (:meth:`MllpReader.quiet`: a sender that waits
for our answer sends nothing more). Not tolerated: a message longer than the bound, which
is discarded up to the next ``<VT>`` rather than held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

VT, FS, CR = 0x0B, 0x1C, 0x0D
START, END = bytes((VT,)), bytes((FS, CR))

#: The largest message kept: an ORU of a full panel with comments is a few kilobytes.
DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
#: Of a message too long to keep, its first bytes are: enough for its MSH (and control id).
HEAD_KEPT = 1024
#: How long a shell waits for the CR after a block's FS before it calls the sender quiet
#: (:meth:`MllpReader.quiet`): the CR comes with the FS, or not at all.
CR_WAIT_SECONDS = 0.5


def frame(message: bytes) -> bytes:
    """``message`` as one MLLP block. HL7 text never holds VT or FS; a message that does
    could not be read back, so it is refused here rather than sent."""
    if VT in message or FS in message:
        raise ValueError("an HL7 message cannot hold the MLLP framing bytes VT (0x0B) or FS (0x1C)")
    return START + message + END


@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: bytes
    """The message, without its framing."""
    start: int
    """Stream offset of its ``<VT>``."""
    end: int
    """Stream offset just after its ``<FS><CR>`` (or ``<FS>``)."""
    missing_cr: bool = False


@dataclass(frozen=True, slots=True)
class Discarded:
    """Bytes that were not a whole message, and why."""

    data: bytes
    """What was discarded (for a message too long, only its first ``HEAD_KEPT`` bytes)."""
    start: int
    end: int
    reason: str
    """``outside-block``, ``cut-by-new-block``, ``cut-by-end-of-stream``, ``too-long``."""


Event = MessageReceived | Discarded


class MllpReader:
    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        self.max_message_bytes = max_message_bytes
        self._buffer = bytearray()
        self._pos = 0  # what is before it in _buffer is consumed (dropped once per call)
        self._start = 0  # stream offset of _buffer[_pos]
        self._in_block = False  # _buffer[_pos] is the block's VT
        self._scanned = 0  # _buffer[_pos:_pos + _scanned] holds nothing that ends the part
        self._skipping = False  # inside a block too long to keep; _buffer holds nothing
        self._skip_start = 0
        self._skipped_head = b""

    @property
    def received(self) -> int:
        """How many bytes were fed so far: the stream offset of the next one."""
        return self._start + len(self._buffer) - self._pos

    def receive_data(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._skipping:
            data = self._skip(data, events)
        self._buffer += data
        while self._step(events):
            pass
        del self._buffer[: self._pos]
        self._pos = 0
        return events

    @property
    def awaiting_cr(self) -> bool:
        """Whether the bytes so far end with a block's ``<FS>``, its ``<CR>`` not come."""
        return self._in_block and not self._skipping and self._buffer.endswith(bytes((FS,)))

    def quiet(self) -> list[Event]:
        """The sender has sent nothing more for a while: a block ended by ``<FS>`` alone
        is whole (its sender waits for our answer); anything else still waits."""
        return self.end_of_stream() if self.awaiting_cr else []

    def end_of_stream(self) -> list[Event]:
        """The connection closed: what is pending ends here, and is said so."""
        events: list[Event] = []
        pending = len(self._buffer) - self._pos
        if self._skipping:
            events.append(self._too_long(self.received))
        elif self._in_block and self._buffer.endswith(bytes((FS,))):
            if pending - 2 > self.max_message_bytes:
                head = bytes(self._buffer[self._pos : self._pos + HEAD_KEPT])
                events.append(Discarded(head, self._start, self._start + pending, "too-long"))
                self._consume(pending)
            else:
                self._message(pending, pending - 1, True, events)
        elif pending:
            reason = "cut-by-end-of-stream" if self._in_block else "outside-block"
            events.append(self._cut(pending, reason))
        self._in_block = False
        return events

    # --- scanning: each byte is looked at a bounded number of times -----------------------

    def _step(self, events: list[Event]) -> bool:
        """Take what the front of the unconsumed bytes allows; False when it needs more."""
        buffer, pos = self._buffer, self._pos
        pending = len(buffer) - pos
        if not self._in_block:
            found = buffer.find(VT, pos + self._scanned)
            if found < 0:
                self._scanned = pending
                if pending > self.max_message_bytes:
                    events.append(self._cut(pending, "outside-block"))
                return False
            if found > pos:
                events.append(self._cut(found - pos, "outside-block"))
            self._in_block, self._scanned = True, 1
            return True
        fs = buffer.find(FS, pos + self._scanned)
        vt = buffer.find(VT, pos + self._scanned, fs if fs >= 0 else len(buffer))
        if vt >= 0:
            events.append(self._cut(vt - pos, "cut-by-new-block"))
            return True
        if fs < 0:
            self._scanned = pending
            if pending > self.max_message_bytes + 1:
                self._skipping, self._skip_start = True, self._start
                self._skipped_head = bytes(buffer[pos : pos + HEAD_KEPT])
                self._consume(pending)
            return False
        fs -= pos
        if fs + 1 == pending:
            self._scanned = fs
            return False  # its CR may still come
        after = buffer[pos + fs + 1]
        if fs > self.max_message_bytes + 1:
            through = fs + 2 if after == CR else fs + 1
            head = bytes(buffer[pos : pos + min(HEAD_KEPT, through)])
            events.append(Discarded(head, self._start, self._start + through, "too-long"))
            self._consume(through)
            return True
        missing_cr = after != CR
        self._message(fs + 1 if missing_cr else fs + 2, fs, missing_cr, events)
        return True

    def _consume(self, length: int) -> None:
        self._pos += length
        self._start += length
        self._in_block, self._scanned = False, 0

    def _message(self, length: int, fs: int, missing_cr: bool, events: list[Event]) -> None:
        message = bytes(self._buffer[self._pos + 1 : self._pos + fs])
        events.append(MessageReceived(message, self._start, self._start + length, missing_cr))
        self._consume(length)

    def _cut(self, length: int, reason: str) -> Discarded:
        data = bytes(self._buffer[self._pos : self._pos + length])
        cut = Discarded(data, self._start, self._start + length, reason)
        self._consume(length)
        return cut

    def _skip(self, data: bytes, events: list[Event]) -> bytes:
        """Inside a block too long to keep: drop bytes up to its FS, or up to a new VT."""
        fs, vt = data.find(FS), data.find(VT)
        ends = [i for i in (fs, vt) if i >= 0]
        if not ends:
            self._start += len(data)
            return b""
        end = min(ends)
        through = end
        if end == fs:  # the block's own end, and its CR when it is there
            through = end + 2 if data[end + 1 : end + 2] == bytes((CR,)) else end + 1
        self._start += through
        events.append(self._too_long(self._start))
        return data[through:]

    def _too_long(self, end: int) -> Discarded:
        self._skipping, self._in_block = False, False
        return Discarded(self._skipped_head, self._skip_start, end, "too-long")
