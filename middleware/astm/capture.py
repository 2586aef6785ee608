"""Reading captures that lab IT is sent: wire bytes, frames, plain records, monitor logs.

Unlike the link layer, which answers a live peer and refuses what is wrong, a capture is
read to the end: every problem is reported with its offset in the file, and whatever
text could be recovered is still returned, so that a person can see what was sent.

Accepted inputs:

* raw wire bytes (ENQ, frames, EOT; replies of the other side are skipped);
* frames without ENQ/EOT;
* plain E1394 records separated by CR, CR LF or LF (``#`` lines are comments);
* serial-monitor logs that write control characters as ``<STX>``, ``[STX]`` or, at the
  start of a line, ``^B``. When a log writes ``[CR]`` itself, its line breaks are only
  the monitor's and are dropped; lines starting with `` - `` are the other direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from middleware.astm.frames import (
    ACK,
    CR,
    ENQ,
    EOT,
    ETB,
    ETX,
    LF,
    MAX_TEXT,
    NAK,
    STX,
    FrameProblem,
    FrameTolerances,
    check_frame,
    checksum,
)

_NAMES = {
    "NUL": 0x00, "SOH": 0x01, "STX": 0x02, "ETX": 0x03, "EOT": 0x04, "ENQ": 0x05,
    "ACK": 0x06, "BEL": 0x07, "BS": 0x08, "HT": 0x09, "TAB": 0x09, "LF": 0x0A,
    "VT": 0x0B, "FF": 0x0C, "CR": 0x0D, "SO": 0x0E, "SI": 0x0F, "DLE": 0x10,
    "DC1": 0x11, "DC2": 0x12, "DC3": 0x13, "DC4": 0x14, "NAK": 0x15, "SYN": 0x16,
    "ETB": 0x17, "CAN": 0x18, "EM": 0x19, "SUB": 0x1A, "ESC": 0x1B, "FS": 0x1C,
    "GS": 0x1D, "RS": 0x1E, "US": 0x1F,
}  # fmt: skip
_ALTERNATIVES = b"|".join(n.encode() for n in _NAMES)
_MNEMONIC = re.compile(rb"<(" + _ALTERNATIVES + rb")>|\[(" + _ALTERNATIVES + rb")\]", re.IGNORECASE)
# Caret notation is ambiguous with the component delimiter, so it is read only where a
# control character must be: a run at the start of a line, or ^C/^W with a checksum at
# the end of one.
_CARET_START = re.compile(rb"^((?:\^[BCDEFUW])+)", re.MULTILINE)
_CARET_END = re.compile(rb"\^([CW])([0-9A-Fa-f]{2})?$", re.MULTILINE)
_CARET = {ord("B"): STX, ord("C"): ETX, ord("D"): EOT, ord("E"): ENQ,
          ord("F"): ACK, ord("U"): NAK, ord("W"): ETB}  # fmt: skip


_CONTROL = re.compile(b"[" + re.escape(bytes((STX, ENQ, EOT))) + b"]")
_FRAME_END = re.compile(b"[" + re.escape(bytes((ETX, ETB, STX, ENQ, EOT))) + b"]")


@dataclass(frozen=True, slots=True)
class CaptureError:
    kind: str
    detail: str
    offset: int
    frame: int | None = None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"kind": self.kind, "detail": self.detail, "offset": self.offset}
        if self.frame is not None:
            out["frame"] = self.frame
        return out


@dataclass(slots=True)
class CapturedMessage:
    """Record texts of one message (H to L), each with its offset in the capture."""

    lines: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    errors: list[CaptureError] = field(default_factory=list)
    """Link-level problems in the frames this message was read from."""


@dataclass(slots=True)
class Capture:
    form: str  # "wire", "records" or "log"
    messages: list[CapturedMessage]
    errors: list[CaptureError]


# --- logs -----------------------------------------------------------------------------


def looks_like_log(data: bytes) -> bool:
    return bool(_MNEMONIC.search(data)) or bool(_CARET_START.search(data))


def translate_log(data: bytes) -> tuple[bytes, list[int]]:
    """Log text to bytes, with the offset in the log of every byte produced."""
    drops_breaks = re.search(rb"[<\[](CR|LF)[>\]]", data, re.IGNORECASE) is not None
    # A log that names control characters (<STX>, [STX]) does not also write them in
    # caret notation: there a line starting with ^B is data (a component such as ^B12II).
    carets = _MNEMONIC.search(data) is None
    out = bytearray()
    where: list[int] = []
    pos = 0
    for line in data.splitlines(keepends=True):
        start = pos
        pos += len(line)
        if line.startswith(b" - ") or line.strip(b" -\r\n") == b"":
            continue  # the other direction's replies, or a separator
        body = line.rstrip(b"\r\n")
        caret_end = _CARET_END.search(body) if carets else None
        tail = b""
        if caret_end:
            tail = bytes((_CARET[ord(caret_end.group(1))],)) + (caret_end.group(2) or b"")
            body = body[: caret_end.start()]
        head = b""
        caret_start = _CARET_START.match(body) if carets else None
        if caret_start:
            head = bytes(_CARET[c] for c in caret_start.group(1)[1::2])
            body = body[caret_start.end() :]
            out += head
            where.extend([start] * len(head))
            start += caret_start.end()
        last = 0
        for match in _MNEMONIC.finditer(body):
            out += body[last : match.start()]
            where.extend(range(start + last, start + match.start()))
            name = (match.group(1) or match.group(2)).decode().upper()
            out.append(_NAMES[name])
            where.append(start + match.start())
            last = match.end()
        out += body[last:]
        where.extend(range(start + last, start + len(body)))
        if tail:
            out += tail
            where.extend([start + len(body)] * len(tail))
        if not drops_breaks and line.endswith((b"\n", b"\r")):
            out.append(LF)
            where.append(pos - 1)
    return bytes(out), where


# --- frames ---------------------------------------------------------------------------


@dataclass(slots=True)
class _Frame:
    number: int | None
    text: bytes
    final: bool
    offset: int
    problem: FrameProblem | None


class _FrameReader:
    """Walks a byte stream, turning frames into record texts and noting every problem."""

    def __init__(self, data: bytes, where: list[int] | None, tolerances: FrameTolerances,
                 max_text: int, rewritten_breaks: bool) -> None:  # fmt: skip
        self.data = data
        self.where = where
        self.tolerances = tolerances
        self.max_text = max_text
        self.rewritten_breaks = rewritten_breaks
        self.errors: list[CaptureError] = []
        # frame-group texts, with their offsets and the problems of their frames
        self.texts: list[tuple[bytes, int, list[CaptureError]]] = []
        self._group = bytearray()
        self._group_errors: list[CaptureError] = []
        self._group_offset = 0
        self._expected: int | None = None
        self._last_good: _Frame | None = None
        self._pending_bad: _Frame | None = None

    def offset(self, i: int) -> int:
        if self.where is None:
            return i
        if not self.where:
            return 0
        return self.where[min(i, len(self.where) - 1)]

    def error(self, kind: str, detail: str, i: int, frame: int | None = None) -> None:
        self.errors.append(CaptureError(kind, detail, self.offset(i), frame))

    def frame_error(self, kind: str, detail: str, i: int, frame: int | None) -> None:
        self.error(kind, detail, i, frame)
        self._group_errors.append(self.errors[-1])

    def run(self) -> None:
        data = self.data
        n = len(data)
        # Replies and line ends between frames are skipped in one search.
        found = _CONTROL.search(data)
        while found:
            i = found.start()
            byte = data[i]
            if byte == STX:
                i = self._frame(i)
            else:
                self._end_transmission(i, started=byte == ENQ)
                i += 1
            found = _CONTROL.search(data, i)
        self._end_transmission(n, started=False)

    def _end_transmission(self, i: int, started: bool) -> None:
        self._flush_pending()
        if self._group:
            self.error("incomplete", "transmission ended inside a record (no ETX frame)", i)
            self._group.clear()
            self._group_errors = []
        self._expected = 1 if started else None
        self._last_good = None

    def _frame(self, start: int) -> int:
        data = self.data
        n = len(data)
        stop = _FRAME_END.search(data, start + 1)
        end = stop.start() if stop else n
        if end >= n or data[end] in (STX, ENQ, EOT):
            self.error("incomplete", "frame without ETB/ETX", start)
            return end
        body = data[start + 1 : end + 1]
        i = end + 1
        received: bytes | None = None
        if i + 1 < n and all(c in b"0123456789ABCDEFabcdef" for c in data[i : i + 2]):
            received = data[i : i + 2]
            i += 2
        if i < n and data[i] == CR:
            i += 1
        if i < n and data[i] == LF:
            i += 1
        self._take(self._check(body, received, start), start)
        return i

    def _check(self, body: bytes, received: bytes | None, start: int) -> _Frame:
        result = check_frame(body, received, self.tolerances, self.max_text)
        if (
            isinstance(result, FrameProblem)
            and result.kind == "checksum"
            and received
            and self.rewritten_breaks
            and LF in body
        ):
            # A log that rewrote CR as LF still carries the wire's checksum.
            restored = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            if checksum(restored) == received.upper():
                result = check_frame(restored, received, self.tolerances, self.max_text)
        if isinstance(result, FrameProblem):
            # A refused frame's text is still shown, as it came, control characters and
            # all: the problem is reported, and a person sees what was sent.
            inner = body[:-1]
            numbered = len(inner) > 0 and 0x30 <= inner[0] <= 0x37
            number = inner[0] - 0x30 if numbered else None
            text = inner[1:] if numbered else inner
            return _Frame(number, text, body[-1] == ETX, start, result)
        return _Frame(result.number, result.text, result.final, start, None)

    def _take(self, frame: _Frame, start: int) -> None:
        pending = self._pending_bad
        if pending is not None:
            self._pending_bad = None
            if frame.problem is None and frame.number == pending.number:
                pass  # the bad frame was refused and sent again: the link recovered
            else:
                self._use(pending)
        if frame.problem is not None and frame.problem.kind in ("checksum", "control_character"):
            self._pending_bad = frame
            return
        self._use(frame)

    def _use(self, frame: _Frame) -> None:
        if frame.problem is not None:
            self.frame_error(frame.problem.kind, _frame_detail(frame, frame.problem.detail),
                       frame.offset, frame.number)  # fmt: skip
        last = self._last_good
        if frame.number is not None:
            if last is not None and last.number == frame.number and last.text == frame.text:
                return  # sent again after a lost ACK
            restarts = (
                self.tolerances.numbering_restarts
                and frame.number == 1
                and frame.text[:1] in (b"H", b"h")
                and not self._group
            )
            if self._expected is not None and frame.number != self._expected and not restarts:
                self.frame_error("frame_number", _frame_detail(
                    frame, f"frame number {frame.number}, {self._expected} expected"),
                    frame.offset, frame.number)  # fmt: skip
            self._expected = (frame.number + 1) % 8
        if frame.problem is None:
            self._last_good = frame
        if not self._group:
            self._group_offset = frame.offset
        self._group += frame.text
        if frame.final and not (
            self.tolerances.records_span_frames and not self._group.endswith((b"\r", b"\n"))
        ):
            self.texts.append(
                (bytes(self._group), self.offset(self._group_offset), self._group_errors)
            )
            self._group.clear()
            self._group_errors = []

    def _flush_pending(self) -> None:
        if self._pending_bad is not None:
            pending = self._pending_bad
            self._pending_bad = None
            self._use(pending)


def _frame_detail(frame: _Frame, detail: str) -> str:
    number = "?" if frame.number is None else str(frame.number)
    return f"frame {number}: {detail}"


# --- grouping into messages -----------------------------------------------------------


def _group_messages(
    lines: list[tuple[str, int, list[CaptureError]]],
) -> list[CapturedMessage]:
    messages: list[CapturedMessage] = []
    current: CapturedMessage | None = None
    for line, offset, errors in lines:
        if current is None or line[:1] in ("H", "h"):
            current = CapturedMessage()
            messages.append(current)
        current.lines.append(line)
        current.offsets.append(offset)
        current.errors.extend(e for e in errors if e not in current.errors)
        if line[:1] in ("L", "l"):
            current = None
    return messages


# A frame number before a record: a host program that writes one before every record of a
# one-frame message, or records copied from a manual or a log.
_NUMBERED_RECORD = re.compile(r"[0-7][HPORCQMSLhporcqmsl]\|")


_LINE = re.compile(rb"[^\r\n]+")


def _record_lines(text: bytes, base: int, offsets: list[int] | None) -> list[tuple[str, int]]:
    out = []
    for match in _LINE.finditer(text):
        offset = base + match.start() if offsets is None else offsets[match.start()]
        out.append((match.group().decode("latin-1"), offset))
    return out


def read_capture(
    data: bytes, tolerances: FrameTolerances | None = None, max_text: int = MAX_TEXT
) -> Capture:
    """Read a capture in any of the accepted forms."""
    tolerances = tolerances or FrameTolerances()
    where: list[int] | None = None
    form = "records"
    rewritten_breaks = False
    if looks_like_log(data):
        form = "log"
        rewritten_breaks = re.search(rb"[<\[]CR[>\]]", data, re.IGNORECASE) is None
        data, where = translate_log(data)
        if rewritten_breaks:
            tolerances = replace(tolerances, line_feeds_in_text=True)
    if STX in data:
        if form == "records":
            form = "wire"
        reader = _FrameReader(data, where, tolerances, max_text, rewritten_breaks)
        reader.run()
        lines: list[tuple[str, int, list[CaptureError]]] = []
        for text, offset, frame_errors in reader.texts:
            for position, (line, _) in enumerate(_record_lines(text, offset, None)):
                if position and _NUMBERED_RECORD.match(line):
                    error = CaptureError(
                        "syntax",
                        f"record {line[1:2]!r} carries a frame number inside the text",
                        offset,
                    )
                    reader.errors.append(error)
                    frame_errors = [*frame_errors, error]
                    line = line[1:]
                lines.append((line, offset, frame_errors))
        return Capture(form, _group_messages(lines), reader.errors)
    lines = [
        # Records printed with their frame number (``1H|...``), as manuals and logs show
        # them: a record type is a letter, so a leading digit is only ever that number.
        (line[1:] if _NUMBERED_RECORD.match(line) else line, offset, [])
        for line, offset in _record_lines(data, 0, where)
        if not line.lstrip().startswith("#") and line.strip()
    ]
    return Capture(form, _group_messages(lines), [])
