"""QC before release: the gate between a patient result and the LIS."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from middleware.domain import ControlResult, Measurement, Result
from middleware.engine.qc import QcGate, QcOutcome
from middleware.engine.rules import Rules, load_rules
from tests.conftest import ROOT
from tests.qc_memory import InMemoryGate

Gate = InMemoryGate

T0 = datetime(2026, 3, 1, 8, 0)
LOT_1, LOT_2 = "CC-45781", "CC-45782"  # chemistry control levels 1 and 2 in rules/qc.yaml


@pytest.fixture
def gate() -> InMemoryGate:
    return InMemoryGate(load_rules(ROOT / "rules"))


def control(test: str, value: str, lot: str, instrument: str = "chem-1") -> ControlResult:
    result = Result(specimen_id="QC", test_code=test, instrument_test_code=test,
                    value=Measurement.parse(value), instrument=instrument)  # fmt: skip
    return ControlResult(result, "Chemistry control", lot)


def codes(
    gate: Gate,
    test: str,
    at: datetime,
    measured: datetime | None = None,
    received: datetime | None = None,
) -> list[str]:
    return [f.code for f in gate.findings("chem-1", test, at, measured, received)]


def in_control(gate: Gate, test: str, at: datetime, values: tuple[str, str]) -> None:
    gate.note_patient("chem-1", test)
    for value, lot in zip(values, (LOT_1, LOT_2), strict=True):
        outcome = gate.record_control(control(test, value, lot), at)
        assert outcome.evaluation is not None and outcome.evaluation.status == "accept"


def test_every_required_level_must_have_a_result(gate: Gate) -> None:
    assert codes(gate, "GLU", T0) == ["qc-missing:1", "qc-missing:2"]
    gate.record_control(control("GLU", "5.2", LOT_1), T0)
    assert codes(gate, "GLU", T0) == ["qc-missing:2"]
    gate.record_control(control("GLU", "15.6", LOT_2), T0)
    assert codes(gate, "GLU", T0) == []


def test_a_test_without_policy_is_held(gate: Gate) -> None:
    assert codes(gate, "AMY", T0) == ["qc-policy-missing"]
    outcome = gate.record_control(control("AMY", "50", LOT_1), T0)
    assert outcome.evaluation is None and outcome.problem == "no QC policy for AMY"


def test_qc_expires_after_its_validity_window(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    assert codes(gate, "GLU", T0 + timedelta(hours=24)) == []
    assert codes(gate, "GLU", T0 + timedelta(hours=24, seconds=1)) == ["qc-expired"]


def test_rejected_qc_holds_opens_a_corrective_action_and_lists_for_review(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    gate.note_patient("chem-1", "GLU")
    later = T0 + timedelta(hours=2)
    outcome = gate.record_control(control("GLU", "5.66", LOT_1), later)  # z = +3.07
    assert outcome.evaluation is not None and outcome.evaluation.violations == ("1-3s",)
    assert outcome.opened_corrective_action
    assert outcome.review_since == T0  # results released since the last good QC
    assert codes(gate, "GLU", later) == ["corrective-action-open", "qc-rejected:1-3s"]


def test_corrective_action_closes_only_after_a_good_rerun(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    gate.note_patient("chem-1", "GLU")
    failed_at = T0 + timedelta(hours=1)
    gate.record_control(control("GLU", "5.66", LOT_1), failed_at)
    with pytest.raises(ValueError, match="not in control again"):
        gate.close_corrective_action("chem-1", "GLU", failed_at)
    rerun = failed_at + timedelta(minutes=30)
    in_control(gate, "GLU", rerun, ("5.25", "15.5"))
    assert codes(gate, "GLU", rerun) == ["corrective-action-open"]  # held until closed
    gate.close_corrective_action("chem-1", "GLU", rerun)
    assert codes(gate, "GLU", rerun) == []
    with pytest.raises(ValueError, match="no corrective action"):
        gate.close_corrective_action("chem-1", "GLU", rerun)


def test_a_failure_reviews_from_the_last_run_accepted_whole(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    gate.note_patient("chem-1", "GLU")  # released under the run of T0
    later = T0 + timedelta(hours=2)
    first = gate.record_control(control("GLU", "5.27", LOT_1), later)  # level 1 in control...
    assert first.evaluation is not None and first.evaluation.status == "accept"
    failed = gate.record_control(control("GLU", "14.36", LOT_2), later)  # ...level 2 -3.1 SD
    assert failed.evaluation is not None and failed.evaluation.violations == ("1-3s",)
    # Not from level 1 of the failing run: the patients since the run of T0 are in doubt.
    assert failed.review_since == T0


def test_the_rerun_after_a_failure_is_not_judged_with_the_failed_results(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    gate.note_patient("chem-1", "GLU")
    failed_at = T0 + timedelta(hours=1)
    failed = gate.record_control(control("GLU", "5.73", LOT_1), failed_at)  # +3.5 SD: 1-3s
    assert failed.evaluation is not None and failed.evaluation.status == "reject"
    # Measured again at once, no patient between: a re-run, a run of its own, where +2.2 SD
    # is a warning; judged in the failed run, 2-2s with the failed +3.5.
    rerun = gate.record_control(control("GLU", "5.53", LOT_1), failed_at + timedelta(minutes=5))
    assert rerun.run != failed.run
    assert rerun.evaluation is not None and rerun.evaluation.status == "warning"


def test_a_run_never_spans_more_than_the_qc_validity(gate: Gate) -> None:
    gate.record_control(control("GLU", "5.575", LOT_1), T0)  # +2.5 SD, a warning
    gate.record_control(control("GLU", "15.6", LOT_2), T0)
    # No patient of the test the next day: R-4s is within a run, and this is another.
    next_day = gate.record_control(control("GLU", "4.825", LOT_1), T0 + timedelta(hours=25))
    assert next_day.evaluation is not None
    assert (next_day.evaluation.status, next_day.evaluation.warnings) == ("warning", ("1-2s",))


def test_closing_a_corrective_action_needs_every_level_from_a_later_run(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    gate.note_patient("chem-1", "GLU")
    failed_at = T0 + timedelta(hours=1)
    gate.record_control(control("GLU", "5.73", LOT_1), failed_at)  # 1-3s
    gate.record_control(control("GLU", "15.62", LOT_2), failed_at + timedelta(minutes=1))
    gate.note_patient("chem-1", "GLU")
    rerun = failed_at + timedelta(minutes=20)
    gate.record_control(control("GLU", "5.21", LOT_1), rerun)  # level 1 alone re-run
    # Level 2 was measured after the failure, but in the failed run.
    with pytest.raises(ValueError, match="re-run every level first"):
        gate.close_corrective_action("chem-1", "GLU", rerun)
    gate.record_control(control("GLU", "15.58", LOT_2), rerun)
    gate.close_corrective_action("chem-1", "GLU", rerun)
    assert codes(gate, "GLU", rerun) == []


def test_a_rerun_that_fails_must_itself_be_run_again_whole(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    gate.note_patient("chem-1", "GLU")
    failed_at = T0 + timedelta(hours=1)
    gate.record_control(control("GLU", "5.73", LOT_1), failed_at)  # 1-3s
    gate.record_control(control("GLU", "15.6", LOT_2), failed_at)
    gate.note_patient("chem-1", "GLU")
    again = failed_at + timedelta(minutes=20)
    gate.record_control(control("GLU", "5.73", LOT_1), again)  # the re-run fails too
    gate.record_control(control("GLU", "15.6", LOT_2), again)
    later = again + timedelta(minutes=20)
    gate.record_control(control("GLU", "5.2", LOT_1), later)  # level 1 alone, in control
    # Level 2's latest is of the re-run that failed: no re-run of it yet.
    with pytest.raises(ValueError, match="re-run every level first"):
        gate.close_corrective_action("chem-1", "GLU", later)
    gate.record_control(control("GLU", "15.6", LOT_2), later)
    gate.close_corrective_action("chem-1", "GLU", later)


def test_the_rerun_counts_in_the_windows_of_the_runs_after_it(gate: Gate) -> None:
    in_control(gate, "ALB", T0, ("32", "44"))  # the default rule set, with 4-1s
    gate.note_patient("chem-1", "ALB")
    failed_at = T0 + timedelta(hours=1)
    gate.record_control(control("ALB", "35.5", LOT_1), failed_at)  # +3.5 SD: 1-3s
    gate.record_control(control("ALB", "44", LOT_2), failed_at)
    rerun = failed_at + timedelta(minutes=10)  # at once, no patient between
    for value, lot in (("33.5", LOT_1), ("46.0", LOT_2)):  # +1.5 and +1.54 SD
        assert gate.record_control(control("ALB", value, lot), rerun).evaluation is not None
    gate.close_corrective_action("chem-1", "ALB", rerun)
    gate.note_patient("chem-1", "ALB")
    later = rerun + timedelta(minutes=30)
    gate.record_control(control("ALB", "33.5", LOT_1), later)
    fourth = gate.record_control(control("ALB", "46.0", LOT_2), later)
    # Four results in a row beyond +1 SD: the re-run's two and these.
    assert fourth.evaluation is not None and fourth.evaluation.violations == ("4-1s",)


def test_two_levels_beyond_2sd_in_one_run_reject_by_2_2s(gate: Gate) -> None:
    gate.record_control(control("GLU", "5.51", LOT_1), T0)  # z = +2.07: warning
    outcome = gate.record_control(control("GLU", "16.45", LOT_2), T0)  # z = +2.125
    assert outcome.evaluation is not None and outcome.evaluation.violations == ("2-2s",)
    assert "qc-rejected:2-2s" in codes(gate, "GLU", T0)


def test_lot_change_voids_qc_until_new_qc(gate: Gate) -> None:
    in_control(gate, "GLU", T0, ("5.2", "15.6"))
    changed = T0 + timedelta(hours=1)
    gate.void("chem-1", "GLU", "reagent-lot-changed", changed)
    assert codes(gate, "GLU", changed) == ["reagent-lot-changed"]
    in_control(gate, "GLU", changed + timedelta(minutes=20), ("5.1", "15.7"))
    assert codes(gate, "GLU", changed + timedelta(minutes=20)) == []


def test_bracketed_results_wait_for_the_closing_qc(gate: Gate) -> None:
    in_control(gate, "K", T0, ("4.0", "6.2"))
    measured = T0 + timedelta(minutes=30)
    assert codes(gate, "K", measured, measured) == ["awaiting-closing-qc"]
    closing = T0 + timedelta(hours=1)
    in_control(gate, "K", closing, ("4.02", "6.18"))
    # The controls carry no time of their own: received after the patient, they close it.
    assert codes(gate, "K", closing, measured, received=measured) == []
    # ...but a closing QC that fails keeps it held
    in_control(gate, "NA", T0, ("138", "155"))
    gate.note_patient("chem-1", "NA")
    gate.record_control(control("NA", "142", LOT_1), closing)  # z = +3.3
    assert "qc-rejected:1-3s" in codes(gate, "NA", closing, measured, received=measured)


def test_a_bracketed_result_is_not_closed_by_the_qc_received_before_it(gate: Gate) -> None:
    """Without the controls' own times, their receipt against the patient's own: a
    patient measured (by its analyser's clock) before controls received earlier is not
    closed by them."""
    in_control(gate, "K", T0, ("4.0", "6.2"))
    received = T0 + timedelta(seconds=2)
    an_hour_behind = T0 - timedelta(hours=1)
    assert codes(gate, "K", received, an_hour_behind) == ["awaiting-closing-qc"]
    assert codes(gate, "K", received, None) == ["awaiting-closing-qc"]
    # Received with it (the same message): not after it either.
    assert codes(gate, "K", T0, None, received=T0) == ["awaiting-closing-qc"]


def test_a_bracketed_result_is_closed_by_a_qc_measured_after_it_on_the_same_clock(
    gate: Gate,
) -> None:
    """The analyser's clock an hour behind (never put to summer time): the opening QC,
    received at 10:00, was measured at 9:00 by that clock and the patient at 9:30. Its
    receipt (10:00) is after 9:30; the closing QC is the one measured after 9:30."""
    behind = timedelta(hours=1)

    def measured(test: str, value: str, lot: str, at: datetime) -> ControlResult:
        found = control(test, value, lot)
        return replace(found, result=replace(found.result, completed_at=at - behind))

    gate.note_patient("chem-1", "K")
    for value, lot in (("4.0", LOT_1), ("6.2", LOT_2)):
        gate.record_control(measured("K", value, lot, T0), T0)
    patient_at = T0 - behind + timedelta(minutes=30)
    received = T0 + timedelta(minutes=31)
    assert codes(gate, "K", received, patient_at) == ["awaiting-closing-qc"]
    # Measured by that clock before the patient, though received after it: not closing.
    early = T0 + timedelta(minutes=29, seconds=59)
    gate.record_control(measured("K", "4.02", LOT_1, early), received)
    gate.record_control(measured("K", "6.18", LOT_2, early), received)
    assert codes(gate, "K", received, patient_at) == ["awaiting-closing-qc"]
    # Both times are to the second: a control of the patient's second may be its run's
    # opening QC, sent with it; it closes the run only when received after the patient.
    same_second = T0 + timedelta(minutes=30)
    gate.record_control(measured("K", "4.01", LOT_1, same_second), received)
    gate.record_control(measured("K", "6.19", LOT_2, same_second), received)
    assert codes(gate, "K", received, patient_at, received) == ["awaiting-closing-qc"]
    later = received + timedelta(seconds=5)
    gate.record_control(measured("K", "4.01", LOT_1, same_second), later)
    gate.record_control(measured("K", "6.19", LOT_2, same_second), later)
    assert codes(gate, "K", later, patient_at, received) == []


def test_missing_target_is_reported_not_guessed(gate: Gate) -> None:
    outcome = gate.record_control(control("GLU", "5.2", "UNKNOWN-LOT"), T0)
    assert outcome.evaluation is None
    assert outcome.problem == "no target for Chemistry control lot UNKNOWN-LOT GLU"


def test_own_limits_are_proposed_after_20_results_in_20_runs(gate: Gate) -> None:
    values = [Decimal("5.2") + Decimal(i % 5 - 2) / 20 for i in range(20)]
    for i, value in enumerate(values[:19]):
        gate.note_patient("chem-1", "GLU")
        outcome = gate.record_control(control("GLU", str(value), LOT_1), T0 + timedelta(hours=i))
        assert outcome.provisional
    assert gate.proposals() == []
    gate.note_patient("chem-1", "GLU")
    gate.record_control(control("GLU", str(values[19]), LOT_1), T0 + timedelta(hours=19))
    [proposal] = gate.proposals()
    assert (proposal.test, proposal.lot, proposal.results) == ("GLU", LOT_1, 20)
    assert proposal.mean == Decimal("5.2000")
    gate.approve(proposal)
    gate.note_patient("chem-1", "GLU")
    outcome = gate.record_control(control("GLU", "5.2", LOT_1), T0 + timedelta(hours=20))
    assert not outcome.provisional and outcome.target is not None
    assert outcome.target.sd == proposal.sd
    assert gate.proposals() == []


def test_twenty_results_in_one_run_propose_nothing(gate: Gate) -> None:
    for i in range(25):
        gate.record_control(control("GLU", "5.2", LOT_1), T0 + timedelta(minutes=i))
    assert gate.proposals() == []


def test_two_levels_in_control_do_not_lock_the_method(gate: Gate) -> None:
    # TP level 1 targets 52 and level 2 a higher mean: pooled, the two levels would read
    # as a CV and a bias far over 5 %; each level on its own is on target.
    targets = {LOT_1: Decimal("52.0"), LOT_2: _tp_mean(gate, LOT_2)}
    at = T0
    for run in range(60):
        gate.note_patient("chem-1", "TP")
        for lot, mean in targets.items():
            at += timedelta(minutes=30)
            outcome = gate.record_control(
                control("TP", str(mean + Decimal(run % 3 - 1) / 10), lot), at
            )
            assert not outcome.locked
    assert "method-locked" not in codes(gate, "TP", at)


def _tp_mean(gate: Gate, lot: str) -> Decimal:
    for material in gate.rules.control_materials:
        for found in material.lots:
            if found.lot == lot:
                return Decimal(found.targets["TP"].mean)
    raise AssertionError(f"no TP target for lot {lot}")


def test_two_cycles_over_the_cv_and_bias_limits_lock_the_method(gate: Gate) -> None:
    # TP: max CV 8 %, max bias 5 % (rules/qc.yaml); target level 1 mean 52, SD 1.5.
    biased = "55.0"  # bias 5.8 % (Westgard rejects these runs too; the lock is apart)
    for cycle in range(2):
        for i in range(20):
            gate.note_patient("chem-1", "TP")
            outcome = gate.record_control(
                control("TP", biased, LOT_1), T0 + timedelta(hours=cycle * 20 + i)
            )
        assert bool(outcome.locked) == (cycle == 1)
    assert codes(gate, "TP", T0 + timedelta(hours=40))[0] == "method-locked"
    gate.unlock("chem-1", "TP")
    assert "method-locked" not in codes(gate, "TP", T0 + timedelta(hours=40))


def _rules_with(tmp_path: Path, name: str, old: str, new: str) -> Rules:
    directory = tmp_path / name
    shutil.copytree(ROOT / "rules", directory)
    qc_file = directory / "qc.yaml"
    text = qc_file.read_text()
    assert old in text
    qc_file.write_text(text.replace(old, new))
    return load_rules(directory)


def _crp_run(gate: Gate, value: str, at: datetime) -> QcOutcome:
    gate.note_patient("chem-1", "CRP")
    return gate.record_control(control("CRP", value, LOT_1), at)


def test_windows_start_again_when_the_targets_they_were_judged_with_change(
    gate: Gate, tmp_path: Path
) -> None:
    # CRP level 1 targets 10 (SD 0.6); the lot in use really runs at 10.6, z = +1.
    for day in range(9):
        assert _crp_run(gate, "10.6", T0 + timedelta(days=day)).evaluation is not None
    # The lab corrects the mean: nine results at +1 SD of the wrong mean are no trend of
    # the right one.
    corrected = _rules_with(tmp_path, "corrected", "CRP: {mean: 10,", "CRP: {mean: 10.6,")
    gate.gate = QcGate(corrected)
    outcome = _crp_run(gate, "10.7", T0 + timedelta(days=9))
    assert outcome.evaluation is not None and outcome.evaluation.status == "accept"


def test_windows_stay_when_the_rules_change_elsewhere(gate: Gate, tmp_path: Path) -> None:
    for day in range(9):
        _crp_run(gate, "10.6", T0 + timedelta(days=day))
    elsewhere = _rules_with(tmp_path, "elsewhere", "validity_hours: 8", "validity_hours: 9")
    gate.gate = QcGate(elsewhere)
    outcome = _crp_run(gate, "10.6", T0 + timedelta(days=9))
    assert outcome.evaluation is not None and outcome.evaluation.violations == ("10x",)
