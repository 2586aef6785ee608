"""Reading HL7 captures that lab IT is sent: MLLP bytes as they crossed the wire, logs
that write the framing as ``[VT]``/``<FS>``, or plain files of messages.

Like the ASTM capture reader, it reads to the end and says where each problem is (the
offset in the file): a block cut short by the next one, bytes outside any block, a block
never closed. Answers of the other side that a log interleaves (unframed lines of an
ACK's MSH and MSA) are not the analyser's data and are passed over.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from middleware.astm.capture import CaptureError, looks_like_log, translate_log
from middleware.hl7.mllp import FS, VT, Discarded, MessageReceived, MllpReader

_MSH_LINE = re.compile(rb"^\s*MSH", re.MULTILINE)
# A log line of the other side's acknowledgment, written without framing: its MSH (of
# type ACK) and its MSA.
_ANSWER_LINE = re.compile(
    rb"^(?:MSH\|[^\r\n\[<]*\|ACK(?:\^[^\r\n\[<]*)?|MSA\|[^\r\n\[<]*)(?=\r?\n|\Z)", re.MULTILINE
)
_DESCRIBED = {
    "cut-by-new-block": "a message cut short by the start of the next one",
    "cut-by-end-of-stream": "a message never closed by FS before the end of the capture",
    "too-long": "a message longer than the bound; left out",
}


@dataclass(slots=True)
class CapturedHl7:
    data: bytes
    """The message without its framing."""
    offset: int
    errors: list[CaptureError] = field(default_factory=list)


@dataclass(slots=True)
class Hl7Capture:
    form: str  # "mllp", "log" or "messages"
    messages: list[CapturedHl7]
    errors: list[CaptureError]


def looks_like_hl7(data: bytes) -> bool:
    """Whether a capture holds HL7 rather than ASTM: MLLP framing, written or named, or a
    file whose first text is an MSH segment."""
    head = data[:4096]
    if VT in head or re.search(rb"[<\[]VT[>\]]", head, re.IGNORECASE):
        return True
    return head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"MSH")


def read_hl7_capture(data: bytes) -> Hl7Capture:
    form = "messages"
    where: list[int] | None = None
    if looks_like_log(data):
        form = "log"
        # Blanked rather than cut, so that offsets still point into the file.
        data = _ANSWER_LINE.sub(lambda m: b" " * len(m.group()), data)
        data, where = translate_log(data)

    def at(i: int) -> int:
        if where is None:
            return i
        return where[i] if i < len(where) else (where[-1] + 1 if where else 0)

    if VT not in data and FS not in data:
        return Hl7Capture(form, _plain_messages(data, at), [])
    if form == "messages":
        form = "mllp"
    reader = MllpReader()
    events = reader.receive_data(data) + reader.end_of_stream()
    messages: list[CapturedHl7] = []
    errors: list[CaptureError] = []
    for event in events:
        if isinstance(event, MessageReceived):
            captured = CapturedHl7(event.message, at(event.start + 1))
            if event.missing_cr:
                captured.errors.append(
                    CaptureError("framing", "FS without its CR", at(event.end - 1))
                )
            messages.append(captured)
        elif isinstance(event, Discarded):
            error = _discarded(event, at(event.start))
            if error is not None:
                errors.append(error)
    return Hl7Capture(form, messages, errors)


def _discarded(event: Discarded, offset: int) -> CaptureError | None:
    data = event.data
    if event.reason == "outside-block":
        text = data.strip(b" \t\r\n\x1c")
        if not text:
            return None  # line breaks between messages, or the end of the other side's

        shown = text[:40].decode("latin-1")
        return CaptureError("outside-block", f"bytes outside any message: {shown!r}", offset)
    return CaptureError(event.reason, _DESCRIBED.get(event.reason, event.reason), offset)


def _plain_messages(data: bytes, at: Callable[[int], int]) -> list[CapturedHl7]:
    """A file of messages without framing: each begins at a line starting with MSH."""
    starts = [m.start() for m in _MSH_LINE.finditer(data)]
    out = []
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(data)
        chunk = data[start:end]
        lead = len(chunk) - len(chunk.lstrip())
        out.append(CapturedHl7(chunk.strip(), at(start + lead)))
    return out
