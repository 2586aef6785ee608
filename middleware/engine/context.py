"""What the engine needs to know about a result besides the result itself."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from middleware.domain import Patient, Result, Specimen


@dataclass(frozen=True, slots=True)
class PreviousResult:
    """The patient's last earlier result of the same test, for delta checks."""

    value: Decimal
    completed_at: datetime


@dataclass(frozen=True, slots=True)
class SampleCondition:
    """What the analyser or the LIS reported about the tube."""

    haemolysis: Decimal | None = None
    icterus: Decimal | None = None
    lipaemia: Decimal | None = None
    volume_ul: Decimal | None = None
    temperature: str = ""  # ambient, refrigerated, frozen; empty when unknown


@dataclass(frozen=True, slots=True)
class ResultContext:
    result: Result
    now: datetime
    specimen: Specimen | None = None
    patient: Patient | None = None
    previous: PreviousResult | None = None
    condition: SampleCondition = field(default_factory=SampleCondition)
    other_patient_ids: tuple[str, ...] = ()
    """Patients this specimen id was already seen with (one id, one patient)."""


__all__ = ["Patient", "PreviousResult", "ResultContext", "SampleCondition"]
