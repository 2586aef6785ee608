"""Which protocol bytes are in: told from an analyser's first bytes on a port that takes
either, and named when they are not the one a line is configured for.

An analyser plugged into a port set up for another protocol sends bytes the link reads
as noise: an HL7 analyser's MLLP blocks on an ASTM port wait for an ENQ that never comes,
an ASTM analyser's ENQ on an HL7 port is no MLLP block, and a Siemens Dimension in its
own LIS protocol polls forever unanswered. Each side keeps those bytes as noise; this
says what they are and what to configure, once per connection, so that a lab sees why
nothing arrives instead of an analyser reporting a host error.

On a port that takes either (an instrument with ``driver: auto`` and no ``protocol``),
the first bytes an analyser sends choose: an MLLP block opens with VT and its MSH (a
UTF-8 byte order mark between them passed over), an ASTM transfer with ENQ. A VT alone
is not enough: line noise before an ENQ may hold one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Spoken:
    protocol: str
    """``hl7``, ``astm`` or ``dimension``."""
    advice: str
    """What to configure, for a person."""


#: What opens an MLLP block: VT and the message's MSH, or a UTF-8 byte order mark and
#: the MSH, as some senders write them.
_OPENINGS = (b"\x0bMSH", b"\x0b\xef\xbb\xbfMSH")
_OPENING = re.compile(rb"\x0b(?:\xef\xbb\xbf)?MSH")
_MLLP = re.compile(_OPENING.pattern + rb".")
# A Dimension block: STX, the message's letter, FS (no frame number, unlike E1381).
_DIMENSION = re.compile(rb"\x02[A-Z]\x1c")

HL7 = Spoken(
    "hl7",
    "the analyser sends HL7 v2 over MLLP: configure the instrument with protocol: hl7 "
    "(or an HL7 driver)",
)
ASTM = Spoken(
    "astm",
    "the analyser speaks ASTM E1381 (it sent ENQ): configure the instrument with "
    "protocol: astm, or remove its HL7 driver",
)
DIMENSION = Spoken(
    "dimension",
    "the analyser speaks the Siemens Dimension LIS protocol (STX, a letter, FS), which is "
    "not ASTM E1381 and is not supported: set its host interface to ASTM where it has one",
)


def opens_mllp(first: bytes) -> bool:
    """Whether the first bytes of a connection open an MLLP block (VT and MSH, before any
    ENQ): HL7; otherwise the connection is read as ASTM, which keeps any noise as such."""
    found, enquiry = _OPENING.search(first), first.find(b"\x05")
    return found is not None and (enquiry < 0 or found.start() < enquiry)


def undecided(first: bytes) -> bool:
    """Whether the first bytes end in what may be the start of an MLLP block, with no
    ENQ or block before it: the next bytes tell."""
    if b"\x05" in first or _OPENING.search(first):
        return False
    return any(first.endswith(opening[:n]) for opening in _OPENINGS
               for n in range(1, len(opening)))  # fmt: skip


def spoken_on_astm_line(data: bytes) -> tuple[Spoken, int] | None:
    """The other protocol bytes received outside any ASTM transfer are in, if any, and
    the offset of its first block."""
    for pattern, spoken in ((_MLLP, HL7), (_DIMENSION, DIMENSION)):
        found = pattern.search(data)
        if found is not None:
            return spoken, found.start()
    return None


def spoken_on_hl7_line(data: bytes) -> Spoken | None:
    """The other protocol a piece received on an HL7 line is in, if any: an ASTM analyser
    opens each transfer with an ENQ sent alone; no HL7 text holds STX."""
    if data.startswith(b"\x05"):
        return ASTM
    if _DIMENSION.search(data):
        return DIMENSION
    return None
