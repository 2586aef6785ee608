"""What every driver offers: link tolerances and a reading of decoded records."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from middleware.astm.frames import FrameTolerances
from middleware.astm.records import Record


@dataclass(frozen=True, slots=True)
class ReadResult:
    """One result as an analyser reported it, before any mapping to the lab's codes."""

    specimen_id: str
    test_code: str
    value: str
    units: str
    reference_range: str
    flags: tuple[str, ...]
    status: str
    completed_at: datetime | None
    control: bool
    patient_id: str = ""
    sequence: str = ""


@dataclass(frozen=True, slots=True)
class MessageReading:
    sender: str | None
    results: list[ReadResult] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


class Driver:
    """Base class; a driver overrides the tables and hooks that differ for its family."""

    name = "base"
    tolerances = FrameTolerances()
    frame_timeout = 30.0

    def read(self, records: tuple[Record, ...]) -> MessageReading:
        raise NotImplementedError


def parse_timestamp(text: str) -> datetime | None:
    """E1394 date and time (YYYYMMDD[HH[MM[SS]]]); None when absent or not a date."""
    digits = text.strip()
    if len(digits) < 8 or not digits[:14].isdigit():
        return None
    digits = digits[:14]
    parts = [int(digits[0:4]), int(digits[4:6]), int(digits[6:8])]
    for start in (8, 10, 12):
        chunk = digits[start : start + 2]
        parts.append(int(chunk) if len(chunk) == 2 else 0)
    try:
        return datetime(*parts)  # type: ignore[arg-type]
    except ValueError:
        return None
