"""What the engine needs to know about a result besides the result itself."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from middleware.domain import Patient, Result, Specimen


@dataclass(frozen=True, slots=True)
class PreviousResult:
    """The patient's last earlier result of the same test, for delta checks."""

    value: Decimal
    completed_at: datetime


#: Laboratory codes of the serum indices an analyser reports as results of their own;
#: a driver (or the instrument's test_map) maps the analyser's codes to these.
HAEMOLYSIS_INDEX, ICTERUS_INDEX, LIPAEMIA_INDEX = "SI-H", "SI-I", "SI-L"
SAMPLE_VOLUME = "SAMPLE-VOL"  # microlitres, where an analyser reports it


@dataclass(frozen=True, slots=True)
class SampleCondition:
    """What the analyser or the LIS reported about the tube."""

    haemolysis: Decimal | None = None
    icterus: Decimal | None = None
    lipaemia: Decimal | None = None
    volume_ul: Decimal | None = None
    temperature: str = ""  # ambient, refrigerated, frozen; empty when unknown

    @classmethod
    def from_results(cls, results: Iterable[Result]) -> SampleCondition:
        """The indices and volume a specimen's own results report."""
        found = {r.test_code: r.value.number for r in results if r.value.is_numeric}
        return cls(
            haemolysis=found.get(HAEMOLYSIS_INDEX),
            icterus=found.get(ICTERUS_INDEX),
            lipaemia=found.get(LIPAEMIA_INDEX),
            volume_ul=found.get(SAMPLE_VOLUME),
        )


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
    reported_lots: Mapping[tuple[str, str], date | None] = field(default_factory=dict)
    """Expiry of reagent lots (by reagent and lot) as analysers first reported them."""
    recalled_lots: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """Lots a person recalled (R4), by reagent and lot, with the reason given: the rule
    files are not the only place a recall is known."""
    priority: str = "R"
    """The specimen's order priority: S stat, A as soon as possible, R routine."""
    received_at: datetime | None = None
    """When the result was received, for one decided again later; ``now`` for a new one."""


__all__ = ["Patient", "PreviousResult", "ResultContext", "SampleCondition"]
