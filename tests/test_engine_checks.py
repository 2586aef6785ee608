"""Autoverification, sample acceptance, reagent lots and the decision they make."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from middleware.domain import Measurement, ReagentUse, Result, Specimen
from middleware.engine.acceptance import acceptance_findings
from middleware.engine.autoverify import autoverify, matching_range
from middleware.engine.context import Patient, PreviousResult, ResultContext, SampleCondition
from middleware.engine.decision import Action, Finding, decide
from middleware.engine.engine import Engine, standing_findings
from middleware.engine.qc import NO_QC
from middleware.engine.reagents import LotRegistry, lots_changed
from middleware.engine.rules import (
    Acceptance,
    Autoverification,
    DeltaCheck,
    Range,
    ReagentLot,
    load_rules,
)
from tests.conftest import ROOT

NOW = datetime(2026, 3, 1, 9, 0)
ADULT_MAN = Patient("P1", "M", date(1970, 5, 1))
RANGES = [
    Range(test="HGB", sex="M", age_min_years=Decimal(18), low=Decimal(13), high=Decimal(17),
          critical_low=Decimal(7), critical_high=Decimal(20)),
    Range(test="HGB", sex="*", low=Decimal(11), high=Decimal(16)),
    Range(test="GLU", low=Decimal("3.9"), high=Decimal("6.1"), critical_low=Decimal("2.5"),
          critical_high=Decimal(25), measurable_low=Decimal("0.1"), measurable_high=Decimal(40)),
]  # fmt: skip
OPTIONS = Autoverification()


def result(test: str, value: str, **extra: object) -> Result:
    fields: dict[str, object] = {
        "specimen_id": "S1", "test_code": test, "instrument_test_code": test,
        "value": Measurement.parse(value), "patient_id": "P1", "instrument": "chem-1",
        "completed_at": NOW, "status": "F",
    }  # fmt: skip
    fields.update(extra)
    return Result(**fields)  # type: ignore[arg-type]


def codes(ctx: ResultContext, checks: list[DeltaCheck] | None = None) -> list[str]:
    return [f.code for f in autoverify(ctx, RANGES, checks or [], OPTIONS)]


def ctx_of(r: Result, **extra: object) -> ResultContext:
    return ResultContext(r, NOW, patient=ADULT_MAN, **extra)  # type: ignore[arg-type]


# --- ranges --------------------------------------------------------------------------------


def test_range_by_sex_and_age() -> None:
    r = result("HGB", "14")
    assert matching_range(RANGES, r, ADULT_MAN) is RANGES[0]
    assert matching_range(RANGES, r, Patient("P2", "F", date(1970, 1, 1))) is RANGES[1]
    child = Patient("P3", "M", date(2020, 1, 1))
    assert matching_range(RANGES, r, child) is RANGES[1]  # the adult range does not apply
    assert matching_range(RANGES, r, None) is RANGES[1]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15", []),
        ("12.9", ["below-reference"]),
        ("17.1", ["above-reference"]),
        ("7", ["critical-low", "below-reference"]),  # on the critical limit counts
        ("7.1", ["below-reference"]),
        ("20", ["critical-high", "above-reference"]),
        ("No Result", ["non-numeric"]),
    ],
)
def test_reference_and_critical_limits(value: str, expected: list[str]) -> None:
    assert codes(ctx_of(result("HGB", value))) == expected


def test_critical_values_are_held_and_urgent() -> None:
    decision = decide(autoverify(ctx_of(result("HGB", "6.2")), RANGES, [], OPTIONS))
    assert decision.action is Action.HOLD and decision.urgent
    assert decision.reasons == ("critical-low",)


def test_reference_range_alone_does_not_hold() -> None:
    decision = decide(autoverify(ctx_of(result("HGB", "12.5")), RANGES, [], OPTIONS))
    assert decision.action is Action.RELEASE
    assert [f.code for f in decision.findings] == ["below-reference"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("41", ["above-measurable-range", "critical-high", "above-reference"]),
        (">40", ["above-measurable-range", "critical-high"]),
        ("<0.1", ["critical-low"]),  # censored low: only which side it is on is known
        ("0.05", ["below-measurable-range", "critical-low", "below-reference"]),
        (">8", []),  # above 8 says nothing beyond the reference limit
    ],
)
def test_measurable_range_and_censored_values(value: str, expected: list[str]) -> None:
    assert codes(ctx_of(result("GLU", value))) == expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        *((s, []) for s in ("F", "C", "P", "V", "R", "N", "U", "")),
        ("W", ["result-status:W"]),  # E1394: validity questionable; HL7: wrong
        ("D", ["result-status:D"]),  # HL7: delete the observation
        ("I", ["result-status:I"]),  # pending in the instrument
        ("S", ["result-status:S"]),  # partial
        ("O", ["result-status:O"]),  # HL7: an order's detail, no result
        ("Z", ["result-status:Z"]),  # neither standard's
    ],
)
def test_a_result_the_analyser_did_not_give_as_final_is_held(
    status: str, expected: list[str]
) -> None:
    assert codes(ctx_of(result("GLU", "5", status=status))) == expected


def test_instrument_flags_and_status() -> None:
    flagged = result("GLU", "5", instrument_flags=("ORL",), abnormal_flags=("HH",))
    assert codes(ctx_of(flagged)) == ["instrument-flag", "flag:HH"]
    assert codes(ctx_of(result("GLU", "", status="X"))) == ["test-not-done", "non-numeric"]
    assert codes(ctx_of(result("GLU", " "))) == ["no-value", "non-numeric"]
    assert codes(ctx_of(result("NOTE", ""))) == ["no-value"]  # held with no range too
    only_some = Autoverification(hold_instrument_flags=["ORL"])
    other = result("GLU", "5", instrument_flags=("W",))
    assert autoverify(ctx_of(other), RANGES, [], only_some) == []
    # A flag with its value (a Sysmex Q-flag) is listed by its name.
    q_flag = Autoverification(hold_instrument_flags=["Blasts?"])
    blasts = result("GLU", "5", instrument_flags=("Blasts?=140",))
    assert [f.code for f in autoverify(ctx_of(blasts), RANGES, [], q_flag)] == ["instrument-flag"]
    # A flag with its text (a Dimension Vista's condition) is listed by its code.
    vista = Autoverification(hold_instrument_flags=["E521", "Blast"])
    above = result("GLU", "5", instrument_flags=("E521 Above Assay Range",))
    assert [f.code for f in autoverify(ctx_of(above), RANGES, [], vista)] == ["instrument-flag"]
    assert autoverify(ctx_of(blasts), RANGES, [], vista) == []  # not by a part of its name


def test_delta_checks_absolute_and_percent_within_window() -> None:
    checks = [DeltaCheck(test="HGB", absolute=Decimal(2), window_hours=Decimal(72)),
              DeltaCheck(test="GLU", percent=Decimal(50))]  # fmt: skip
    before = PreviousResult(Decimal("14.0"), datetime(2026, 2, 28, 9, 0))
    assert "delta" in codes(ctx_of(result("HGB", "11.9"), previous=before), checks)
    assert "delta" not in codes(ctx_of(result("HGB", "12.0"), previous=before), checks)
    old = PreviousResult(Decimal("14.0"), datetime(2026, 2, 20, 9, 0))
    assert "delta" not in codes(ctx_of(result("HGB", "9"), previous=old), checks)
    glucose = PreviousResult(Decimal("5.0"), datetime(2026, 3, 1, 1, 0))
    assert "delta" in codes(ctx_of(result("GLU", "7.6"), previous=glucose), checks)
    assert "delta" not in codes(ctx_of(result("GLU", "7.5"), previous=glucose), checks)


def test_autoverification_never_validates_biologically() -> None:
    decision = decide(autoverify(ctx_of(result("HGB", "15")), RANGES, [], OPTIONS))
    assert decision.action is Action.RELEASE
    assert decision.biologically_validated is False


def test_autoverification_switched_off_holds_everything() -> None:
    off = Autoverification(enabled=False)
    assert decide(autoverify(ctx_of(result("HGB", "15")), RANGES, [], off)).action is Action.HOLD


# --- sample acceptance ---------------------------------------------------------------------

SERUM_K = Acceptance(name="potassium", tests=["K"], sample_types=["serum"], containers=["SST"],
                     max_haemolysis=Decimal(50), max_delay_minutes=Decimal(240),
                     min_volume_ul=Decimal(100), temperature="ambient")  # fmt: skip
LIPIDS = Acceptance(name="lipids", tests=["TG"], max_lipaemia=Decimal(200),
                    on_failure="accept-with-comment", comment="Lipaemic sample.")  # fmt: skip


def acceptance(r: Result, specimen: Specimen | None = None, **condition: object) -> list[Finding]:
    ctx = ResultContext(r, NOW, specimen=specimen,
                        condition=SampleCondition(**condition))  # type: ignore[arg-type]  # fmt: skip
    return acceptance_findings(ctx, [SERUM_K, LIPIDS])


def test_conforming_sample_is_accepted() -> None:
    tube = Specimen("S1", "P1", "serum", "SST", collected_at=datetime(2026, 3, 1, 7, 0))
    assert (
        acceptance(result("K", "4.1"), tube, haemolysis=Decimal(50), volume_ul=Decimal(100)) == []
    )


@pytest.mark.parametrize(
    ("specimen", "condition", "code"),
    [
        (Specimen("S1", "P1", "plasma", "SST"), {}, "wrong-sample-type"),
        (Specimen("S1", "P1", "serum", "EDTA"), {}, "wrong-container"),
        (Specimen("S1", "P1", "serum"), {"haemolysis": Decimal(51)}, "haemolysed"),
        (Specimen("S1", "P1", "serum"), {"volume_ul": Decimal(99)}, "insufficient-volume"),
        (Specimen("S1", "P1", "serum"), {"temperature": "frozen"}, "temperature"),
        (
            Specimen("S1", "P1", "serum", collected_at=datetime(2026, 3, 1, 4, 59)),
            {},
            "delay-exceeded",
        ),
    ],
)
def test_non_conforming_sample_is_rejected_with_reason(
    specimen: Specimen, condition: dict[str, object], code: str
) -> None:
    [finding] = acceptance(result("K", "4.1"), specimen, **condition)
    assert finding.code == code and finding.action is Action.REJECT
    assert finding.message.startswith("potassium: ")
    assert decide([finding]).action is Action.REJECT


def test_accept_with_reservation_carries_its_comment() -> None:
    [finding] = acceptance(result("TG", "2.0"), None, lipaemia=Decimal(250))
    decision = decide([finding])
    assert decision.action is Action.RELEASE
    assert decision.comments == ("Lipaemic sample.",)


def test_unidentified_sample_and_one_id_one_patient() -> None:
    criteria = [Acceptance(name="identified", tests=["*"])]
    nobody = ResultContext(result("K", "4", patient_id=""), NOW)
    assert [f.code for f in acceptance_findings(nobody, criteria)] == ["unidentified"]
    reused = ResultContext(result("K", "4"), NOW, other_patient_ids=("P1", "P9"))
    [finding] = acceptance_findings(reused, criteria)
    assert finding.code == "specimen-patient-mismatch" and "P9" in finding.message


# --- reagent lots ---------------------------------------------------------------------------


def test_expired_and_recalled_lots_hold_the_result() -> None:
    registry = LotRegistry([
        ReagentLot(reagent="GLU reagent", lot="A1", expiry=date(2026, 6, 30),
                   opened=date(2026, 1, 1), stability_days=30),
        ReagentLot(reagent="GLU reagent", lot="B2", expiry=date(2027, 1, 1), recalled=True),
        ReagentLot(reagent="GLU reagent", lot="C3", expiry=date(2027, 1, 1)),
    ])  # fmt: skip
    on = NOW.date()

    def held(lot: str, expiry: date | None = None) -> list[str]:
        r = result("GLU", "5", reagents=(ReagentUse("GLU reagent", lot, "GLU", expiry),))
        return [f.code for f in registry.findings(r, on, reported)]

    reported: dict[tuple[str, str], date | None] = {("GLU reagent", "Y8"): date(2026, 2, 1)}

    assert held("A1") == ["reagent-expired:A1"]  # opened 1 Jan, 30 days' stability
    assert held("B2") == ["reagent-recalled:B2"]
    assert held("C3") == []
    assert held("C3", expiry=date(2026, 2, 1)) == ["reagent-expired:C3"]  # what the analyser says
    assert held("Z9") == []  # unknown, with no expiry reported
    assert held("Y8") == ["reagent-expired:Y8"]  # the expiry the analyser first reported
    assert held("Y8", expiry=date(2027, 1, 1)) == ["reagent-expired:Y8"]


@pytest.mark.parametrize(
    ("zone", "at", "expired"),
    [
        # 1 March 23:30 UTC is already 2 March in Paris: the lot has expired there.
        ("Europe/Paris", datetime(2026, 3, 1, 23, 30, tzinfo=UTC), True),
        ("UTC", datetime(2026, 3, 1, 23, 30, tzinfo=UTC), False),
        # 2 March 02:00 UTC is still the evening of 1 March in New York.
        ("America/New_York", datetime(2026, 3, 2, 2, 0, tzinfo=UTC), False),
        ("UTC", datetime(2026, 3, 2, 2, 0, tzinfo=UTC), True),
    ],
)
def test_a_lot_expires_at_the_end_of_its_day_in_the_laboratory(
    zone: str, at: datetime, expired: bool
) -> None:
    rules = load_rules(ROOT / "rules").model_copy(
        update={"reagent_lots": [ReagentLot(reagent="GLU reagent", lot="A1",
                                            expiry=date(2026, 3, 1))]}
    )  # fmt: skip
    engine = Engine(rules, ZoneInfo(zone))
    # The analyser reports the lot's expiry too, on the same calendar.
    for reported in (None, date(2026, 3, 1)):
        made = result("GLU", "5.0", completed_at=at - timedelta(minutes=5),
                      reagents=(ReagentUse("GLU reagent", "A1", "GLU", reported),))  # fmt: skip
        decision = engine.redecide(NO_QC, ResultContext(made, at, patient=ADULT_MAN))
        assert ("reagent-expired:A1" in decision.reasons) is expired, (zone, at, reported)


def test_a_lot_change_is_what_replaced_the_lots_in_use() -> None:
    first = result("GLU", "5", reagents=(ReagentUse("GLU reagent", "A1"),))
    in_use, changed = lots_changed(None, first)
    assert in_use == frozenset({"GLU reagent:A1"}) and changed is None
    assert lots_changed(in_use, first) == (in_use, None)
    second = result("GLU", "5", reagents=(ReagentUse("GLU reagent", "B2"),))
    assert lots_changed(in_use, second) == (
        frozenset({"GLU reagent:B2"}),
        frozenset({"GLU reagent:B2"}),
    )
    no_lot = result("GLU", "5")
    assert lots_changed(in_use, no_lot) == (in_use, None)


# --- a held result decided again ------------------------------------------------------------


def test_a_held_result_decided_again_keeps_what_was_found_of_itself() -> None:
    """Without its message (no patient, no sample), a held result's ranges by sex, its
    sample's comment and whether its lot had expired when it was made stand as its first
    decision found them; its QC and a recall of its lot are looked at anew."""
    rules = load_rules(ROOT / "rules").model_copy(
        update={
            "reagent_lots": [
                ReagentLot(reagent="HGB reagent", lot="A1", expiry=date(2026, 3, 1)),
                ReagentLot(reagent="HGB reagent", lot="B2", expiry=date(2027, 1, 1),
                           recalled=True),
            ]
        }
    )  # fmt: skip
    engine = Engine(rules)
    state = NO_QC
    made = result("HGB", "5.0", instrument="haem-1",
                  reagents=(ReagentUse("HGB reagent", "A1", "HGB"),))  # fmt: skip
    woman = Patient("P1", "F", date(1980, 1, 1))
    first = engine.redecide(state, ResultContext(made, NOW, patient=woman))
    assert first.action is Action.HOLD and "critical-low" in first.reasons
    assert not any(c.startswith("reagent-expired") for c in first.reasons)
    lipaemic = Finding("lipaemia", "Lipaemic sample", Action.RELEASE, comment="Lipaemic.")
    standing = standing_findings([*first.findings, lipaemic])
    assert {f.code.split(":")[0] for f in standing} >= {"critical-low", "lipaemia"}
    assert not any(f.code.startswith("qc-") for f in standing)

    # A day later: lot A1 expired since, and nobody knows the patient any more.
    later = datetime(2026, 3, 2, 9, 0)
    again = engine.redecide(state, ResultContext(made, later), standing)
    assert "critical-low" in again.reasons and again.urgent
    assert "Lipaemic." in again.comments
    assert not any(c.startswith("reagent-expired") for c in again.reasons)
    assert any(c.startswith("qc-missing") for c in again.reasons)  # looked at anew
    # Without what stood, the same look finds neither the critical value nor the sex.
    assert "critical-low" not in engine.redecide(state, ResultContext(made, later)).reasons

    recalled = replace(made, reagents=(ReagentUse("HGB reagent", "B2", "HGB"),))
    assert (
        "reagent-recalled:B2"
        in engine.redecide(state, ResultContext(recalled, later), standing).reasons
    )
