"""Tests of each driver against real captures or its vendor's layout."""

from __future__ import annotations

from middleware.astm.records import Record, decode_record


def header(sender: str) -> list[Record]:
    """A message of one H record whose sender (H.5) is ``sender``, for detection."""
    return [decode_record(f"H|\\^&|||{sender}")]


def capture(lines: list[str]) -> bytes:
    """Records as a capture of them reads: one per line, in the analyser's Latin-1."""
    return "\r\n".join(lines).encode("latin-1")
