"""E1381 frame format: control characters, checksum, building and checking frames.

A frame on the wire is ``<STX> FN text <ETB|ETX> C1 C2 <CR><LF>``. The checksum is the
sum of the bytes from FN through ETB/ETX, modulo 256, written as two uppercase hex
characters. Nothing here keeps state; the link layer and the capture reader share it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUL = 0x00
SOH = 0x01
STX = 0x02
ETX = 0x03
EOT = 0x04
ENQ = 0x05
ACK = 0x06
LF = 0x0A
CR = 0x0D
DLE = 0x10
DC1 = 0x11
DC2 = 0x12
DC3 = 0x13
DC4 = 0x14
NAK = 0x15
SYN = 0x16
ETB = 0x17

#: Characters E1381 forbids inside frame text (LF is handled apart: a tolerance allows it).
RESTRICTED = frozenset({SOH, STX, ETX, EOT, ENQ, ACK, DLE, NAK, SYN, ETB, DC1, DC2, DC3, DC4})

_RESTRICTED_BUT_LF = re.compile(b"[" + re.escape(bytes(sorted(RESTRICTED))) + b"]")
_RESTRICTED_AND_LF = re.compile(b"[" + re.escape(bytes(sorted(RESTRICTED | {LF}))) + b"]")

#: Standard maximum of text characters in one frame.
MAX_TEXT = 240

_HEX = b"0123456789ABCDEF"


def checksum(body: bytes) -> bytes:
    """Two uppercase hex characters of sum(body) mod 256; body runs from FN through ETB/ETX."""
    total = sum(body) & 0xFF
    return bytes((_HEX[total >> 4], _HEX[total & 0x0F]))


def build_frame(number: int, text: bytes, final: bool) -> bytes:
    """One wire frame; ``number`` is taken mod 8, ``final`` picks ETX over ETB."""
    body = bytes((0x30 + number % 8,)) + text + bytes((ETX if final else ETB,))
    return bytes((STX,)) + body + checksum(body) + b"\r\n"


def split_text(text: bytes, max_text: int = MAX_TEXT) -> list[bytes]:
    """Cut one record's text into frame-sized pieces (at least one, possibly empty)."""
    if max_text <= 0:
        raise ValueError("max_text must be positive")
    if not text:
        return [b""]
    return [text[i : i + max_text] for i in range(0, len(text), max_text)]


def build_frames(text: bytes, first_number: int, max_text: int = MAX_TEXT) -> list[bytes]:
    """All frames of one record: intermediate ones end in ETB, the last in ETX."""
    pieces = split_text(text, max_text)
    last = len(pieces) - 1
    return [
        build_frame(first_number + i, piece, final=(i == last)) for i, piece in enumerate(pieces)
    ]


@dataclass(frozen=True, slots=True)
class FrameTolerances:
    """Departures from E1381 that real analysers need; each off by default."""

    long_frames: bool = False
    """Accept more than 240 text characters in a frame."""
    no_frame_numbers: bool = False
    """Accept frames whose text starts right after STX, without a frame number."""
    no_checksum: bool = False
    """Accept frames with no checksum (or a wrong one) after ETB/ETX."""
    line_feeds_in_text: bool = False
    """Accept CR LF (and lone LF) inside frame text."""
    records_span_frames: bool = False
    """A frame ending in ETX whose text does not end a record continues in the next frame."""
    numbering_restarts: bool = False
    """A frame 1 that starts an H record is taken even when another number was expected:
    some analysers send several messages in one transfer, each numbered from 1."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(cls.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Frame:
    """A frame as it arrived: its number (None when the analyser sends none), text, kind."""

    number: int | None
    text: bytes
    final: bool
    checksum: bytes | None


@dataclass(frozen=True, slots=True)
class FrameProblem:
    """Why a frame must be refused: ``kind`` is a short code, ``detail`` says it to a person."""

    kind: str
    detail: str


def check_frame(
    body: bytes, received_checksum: bytes | None, tolerances: FrameTolerances, max_text: int
) -> Frame | FrameProblem:
    """Validate a frame from its body (FN through ETB/ETX) and the checksum that followed.

    ``body`` ends with ETB or ETX. ``received_checksum`` is the two characters after it, or
    None when nothing checksum-like followed (only acceptable under ``no_checksum``).
    """
    terminator = body[-1]
    inner = body[:-1]
    number: int | None
    if inner[:1] and 0x30 <= inner[0] <= 0x37:
        number = inner[0] - 0x30
        text = inner[1:]
    elif tolerances.no_frame_numbers:
        number = None
        text = inner
    else:
        shown = inner[:1].decode("latin-1") or "nothing"
        return FrameProblem("frame_number", f"frame number missing or invalid: {shown!r}")
    if received_checksum is None:
        if not tolerances.no_checksum:
            return FrameProblem("checksum", "checksum missing after ETB/ETX")
    else:
        expected = checksum(body)
        if received_checksum.upper() != expected and not tolerances.no_checksum:
            return FrameProblem(
                "checksum",
                f"checksum {received_checksum.decode('latin-1')!r} received, "
                f"{expected.decode()!r} computed",
            )
    if len(text) > max_text and not tolerances.long_frames:
        return FrameProblem("frame_too_long", f"{len(text)} text characters, limit {max_text}")
    restricted = _RESTRICTED_BUT_LF if tolerances.line_feeds_in_text else _RESTRICTED_AND_LF
    found = restricted.search(text)
    if found:
        return FrameProblem(
            "control_character",
            f"control character 0x{found.group()[0]:02X} at text position {found.start()}",
        )
    return Frame(number, text, terminator == ETX, received_checksum)
