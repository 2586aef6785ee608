"""What a write changed that the world outside the store wants to hear of (events to a
broker, metrics), told only once the transaction holding it has committed.

Store functions add notices to the connection they write with; the store writer starts
each transaction with an empty list and hands the list on after the commit, or drops it
with a rollback. So nothing is ever announced that the database does not hold, and a
write retried after a failed batch announces its changes once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class ResultDecided:
    """A release decision about a patient result: the engine's, or a person's."""

    result_id: int
    instrument: str
    specimen_id: str
    test_code: str
    action: str
    reasons: tuple[str, ...]
    urgent: bool
    decided_by: str
    at: datetime


@dataclass(frozen=True, slots=True)
class QcEvaluated:
    """A control result judged by the Westgard rules of its test's policy."""

    instrument: str
    test_code: str
    run: str
    level: str
    status: str
    violations: tuple[str, ...]
    warnings: tuple[str, ...]
    z: str | None
    at: datetime


@dataclass(frozen=True, slots=True)
class CorrectiveActionChanged:
    """A QC failure's corrective action, opened by the engine or closed by a person."""

    action_id: int
    instrument: str
    test_code: str
    change: Literal["opened", "closed"]
    detail: str
    by: str
    at: datetime


@dataclass(frozen=True, slots=True)
class OutboxChanged:
    """A message to the LIS queued, or its state changed by the LIS's answer or a person."""

    entry_id: int
    change: str
    state: str
    at: datetime


Notice = ResultDecided | QcEvaluated | CorrectiveActionChanged | OutboxChanged

_KEY = "middleware.notices"


def begin(conn: Connection) -> None:
    """A transaction starts: nothing told yet."""
    conn.info[_KEY] = []


def tell(conn: Connection, *notices: Notice) -> None:
    """Announce ``notices`` if the transaction commits. Outside the store writer (a tool
    writing on its own) nobody listens, and they are dropped."""
    told: list[Notice] | None = conn.info.get(_KEY)
    if told is not None:
        told.extend(notices)


def take(conn: Connection) -> list[Notice]:
    """What the transaction told; the list is gone afterwards."""
    told: list[Notice] = conn.info.pop(_KEY, [])
    return told


__all__ = [
    "CorrectiveActionChanged",
    "Notice",
    "OutboxChanged",
    "QcEvaluated",
    "ResultDecided",
    "begin",
    "take",
    "tell",
]
