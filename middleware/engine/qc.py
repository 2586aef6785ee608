"""QC before release: is the QC of a test on an instrument in control right now?

For each instrument and test the gate keeps what the release rule needs: the latest
evaluation of each control level, events that void QC since (a reagent lot change, a
calibration, maintenance), an open corrective action, a method lock, and the control
statistics that give the lab its own limits after 20 runs. It is pure: the caller gives
it control results and times, and asks it for findings.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from fractions import Fraction

from middleware.domain import ControlResult
from middleware.engine import westgard
from middleware.engine.decision import Finding
from middleware.engine.rules import ControlLot, ControlMaterial, QcPolicy, Rules, RuleSet, Target

#: Q3: the lab's own limits once this many results in as many runs exist.
RESULTS_FOR_OWN_LIMITS = 20


def _policy_matches(policy: QcPolicy, instrument: str, test: str) -> bool:
    instrument_ok = "*" in policy.instruments or instrument in policy.instruments
    return instrument_ok and test in policy.tests


def to_westgard(chosen: RuleSet) -> westgard.RuleSet:
    return westgard.RuleSet(
        rules=tuple(chosen.rules),
        warnings=tuple(chosen.warnings),
        traditional=chosen.traditional,
        include_rejected=chosen.include_rejected,
    )


@dataclass(frozen=True, slots=True)
class LevelState:
    at: datetime
    run: str
    status: westgard.Status
    violations: tuple[str, ...]


@dataclass(slots=True)
class _Accumulator:
    """Welford's running mean and variance, and the runs seen, for one control lot."""

    n: int = 0
    mean: Fraction = Fraction(0)
    m2: Fraction = Fraction(0)
    runs: set[str] = field(default_factory=set)

    def add(self, value: Fraction, run: str) -> None:
        self.n += 1
        delta = value - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (value - self.mean)
        if len(self.runs) < RESULTS_FOR_OWN_LIMITS:
            self.runs.add(run)

    @property
    def sd(self) -> Fraction:
        return self.m2 / (self.n - 1) if self.n > 1 else Fraction(0)


@dataclass(frozen=True, slots=True)
class LimitsProposal:
    """Q3: the lab's own mean and SD, ready for a biologist to approve."""

    instrument: str
    test: str
    lot: str
    mean: Decimal
    sd: Decimal
    results: int


@dataclass(slots=True)
class _TestState:
    run_number: int = 0
    last_was_patient: bool = True
    levels: dict[str, LevelState] = field(default_factory=dict)
    void_reason: str = ""
    void_at: datetime | None = None
    corrective_action_since: datetime | None = None
    corrective_action_reason: str = ""
    last_in_control_at: datetime | None = None
    locked: str = ""
    # Q6 cycles are per control lot: each level has its own mean, so pooling the levels
    # would read a spread between them as imprecision.
    over_limit_cycles: dict[str, int] = field(default_factory=dict)
    cycles: dict[str, _Accumulator] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class QcOutcome:
    """What recording one control result did."""

    evaluation: westgard.Evaluation | None
    run: str
    level: str
    target: Target | None
    provisional: bool
    """True while the manufacturer's target and SD are in use (Q3)."""
    problem: str = ""
    """Why the result could not be evaluated (no policy, no target)."""
    opened_corrective_action: bool = False
    review_since: datetime | None = None
    """When rejected: results of this test released after this time need review."""
    locked: str = ""


class QcGate:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self._states: dict[tuple[str, str], _TestState] = {}
        self._evaluators: dict[str, westgard.Evaluator] = {}
        self._stats: dict[tuple[str, str, str], _Accumulator] = {}
        self._approved: dict[tuple[str, str, str], Target] = {}

    # --- configuration ---------------------------------------------------------------------

    def replace_rules(self, rules: Rules) -> None:
        self.rules = rules
        self._evaluators.clear()

    def policy(self, instrument: str, test: str) -> QcPolicy | None:
        return next(
            (p for p in self.rules.qc_policies if _policy_matches(p, instrument, test)), None
        )

    def _evaluator(self, instrument: str) -> westgard.Evaluator:
        evaluator = self._evaluators.get(instrument)
        if evaluator is None:
            per_test: dict[str, westgard.RuleSet] = {}
            for policy in self.rules.qc_policies:
                if "*" in policy.instruments or instrument in policy.instruments:
                    for test in policy.tests:
                        per_test.setdefault(test, to_westgard(self.rules.rule_set_for(policy)))
            default = to_westgard(self.rules.rule_sets["default"])
            evaluator = self._evaluators[instrument] = westgard.Evaluator(default, per_test)
        return evaluator

    def control_lot(self, control: ControlResult) -> tuple[ControlMaterial, ControlLot] | None:
        """The rules' material and lot of a control result: by lot number (or a sample id
        that is the lot number), else by the material's name when it has a single lot."""
        # Analysers that send no lot often name the sample after it.
        wanted = control.lot or control.control_material
        for material in self.rules.control_materials:
            for lot in material.lots:
                if lot.lot == wanted:
                    return material, lot
        name = control.control_material.strip().lower()
        for material in self.rules.control_materials:
            if material.name.lower() == name and len(material.lots) == 1:
                return material, material.lots[0]
        return None

    def _state(self, instrument: str, test: str) -> _TestState:
        key = (instrument, test)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _TestState()
        return state

    # --- events ----------------------------------------------------------------------------

    def note_patient(self, instrument: str, test: str) -> None:
        """A patient result came: the next control starts a new run."""
        self._state(instrument, test).last_was_patient = True

    def void(self, instrument: str, test: str, reason: str, at: datetime) -> None:
        """An event after which earlier QC no longer counts (``reagent-lot-changed``,
        ``calibration``, ``maintenance``)."""
        state = self._state(instrument, test)
        state.void_reason, state.void_at = reason, at

    def record_control(self, control: ControlResult, at: datetime) -> QcOutcome:
        result = control.result
        instrument, test = result.instrument, result.test_code
        state = self._state(instrument, test)
        if state.last_was_patient:
            state.run_number += 1
            state.last_was_patient = False
        run = f"{instrument}/{test}/{state.run_number}"
        found = self.control_lot(control)
        level = found[1].level if found else control.level or control.control_material
        if self.policy(instrument, test) is None:
            return QcOutcome(None, run, level, None, True, f"no QC policy for {test}")
        if found is None or test not in found[1].targets:
            return QcOutcome(
                None,
                run,
                level,
                None,
                True,
                f"no target for {control.control_material or '?'} lot {control.lot or '?'} {test}",
            )
        material, lot = found
        if result.value.number is None or result.value.censor:
            return QcOutcome(
                None, run, level, None, True, f"control value {result.value.text!r} is not a number"
            )
        key = (instrument, test, lot.lot)
        target = self._approved.get(key, lot.targets[test])
        provisional = key not in self._approved
        evaluation = self._evaluator(instrument).evaluate(
            westgard.QcResult(
                run=run,
                material=material.name,
                lot=lot.lot,
                value=result.value.number,
                mean=target.mean,
                sd=target.sd,
                instrument=instrument,
                test=test,
            )
        )
        value = Fraction(result.value.number)
        self._stats.setdefault(key, _Accumulator()).add(value, run)
        state.levels[level] = LevelState(at, run, evaluation.status, evaluation.violations)
        outcome_lock = self._cycle(state, instrument, test, lot.lot, value, target)
        opened = False
        review_since = None
        if evaluation.status == "reject":
            if state.corrective_action_since is None:
                opened = True
                state.corrective_action_since = at
                state.corrective_action_reason = ",".join(evaluation.violations)
            review_since = state.last_in_control_at
        elif not self._level_findings(instrument, test, at):
            state.last_in_control_at = at
        return QcOutcome(
            evaluation,
            run,
            level,
            target,
            provisional,
            opened_corrective_action=opened,
            review_since=review_since,
            locked=outcome_lock,
        )

    def _cycle(
        self,
        state: _TestState,
        instrument: str,
        test: str,
        lot: str,
        value: Fraction,
        target: Target,
    ) -> str:
        """Q6: CV and bias over each control cycle of a lot; two consecutive cycles of a
        lot over the limits lock the method."""
        policy = self.policy(instrument, test)
        if policy is None or (policy.max_cv_percent is None and policy.max_bias_percent is None):
            return ""
        cycle = state.cycles.setdefault(lot, _Accumulator())
        cycle.add(value, "")
        if cycle.n < RESULTS_FOR_OWN_LIMITS:
            return ""
        mean = cycle.mean
        cv = Fraction(math.sqrt(cycle.sd)) / mean * 100 if mean else Fraction(0)
        # Rule files refuse a mean of 0 under a bias limit; under a CV limit alone it is fine.
        expected = Fraction(target.mean)
        bias = abs(mean - expected) / expected * 100 if expected else Fraction(0)
        state.cycles[lot] = _Accumulator()
        over = (policy.max_cv_percent is not None and cv > Fraction(policy.max_cv_percent)) or (
            policy.max_bias_percent is not None and bias > Fraction(policy.max_bias_percent)
        )
        state.over_limit_cycles[lot] = state.over_limit_cycles.get(lot, 0) + 1 if over else 0
        if state.over_limit_cycles[lot] >= 2:
            state.locked = (
                f"CV {float(cv):.1f}% / bias {float(bias):.1f}% over the limits "
                "for two consecutive cycles"
            )
        return state.locked

    # --- people's acts ---------------------------------------------------------------------

    def reopen_corrective_action(
        self, instrument: str, test: str, reason: str, since: datetime
    ) -> None:
        """An action still open in the records (after a restart)."""
        state = self._state(instrument, test)
        state.corrective_action_since = since
        state.corrective_action_reason = reason.removeprefix("qc-rejected:")

    def close_corrective_action(self, instrument: str, test: str, at: datetime) -> None:
        """Q9: close the open corrective action; only once a QC re-run is in control."""
        state = self._state(instrument, test)
        if state.corrective_action_since is None:
            raise ValueError(f"no corrective action is open for {test} on {instrument}")
        problems = self._level_findings(instrument, test, at)
        rerun = all(level.at > state.corrective_action_since for level in state.levels.values())
        if problems or not rerun:
            raise ValueError(
                f"QC of {test} on {instrument} is not in control again since the failure: "
                + (", ".join(f.code for f in problems) or "re-run every level first")
            )
        state.corrective_action_since = None
        state.corrective_action_reason = ""
        state.last_in_control_at = at

    def unlock(self, instrument: str, test: str) -> None:
        state = self._state(instrument, test)
        state.locked = ""
        state.over_limit_cycles.clear()

    def proposals(self) -> list[LimitsProposal]:
        """Q3: lots with 20 results in 20 runs whose own limits are not approved yet."""
        out = []
        for (instrument, test, lot), stats in self._stats.items():
            if (instrument, test, lot) in self._approved:
                continue
            if stats.n >= RESULTS_FOR_OWN_LIMITS and len(stats.runs) >= RESULTS_FOR_OWN_LIMITS:
                sd = Decimal(math.sqrt(stats.sd)).quantize(Decimal("0.0001"))
                mean = Decimal(stats.mean.numerator) / Decimal(stats.mean.denominator)
                out.append(
                    LimitsProposal(
                        instrument, test, lot, mean.quantize(Decimal("0.0001")), sd, stats.n
                    )
                )
        return out

    def approve(self, proposal: LimitsProposal) -> None:
        key = (proposal.instrument, proposal.test, proposal.lot)
        self._approved[key] = Target(mean=proposal.mean, sd=proposal.sd)

    # --- the release question ----------------------------------------------------------------

    def _level_findings(self, instrument: str, test: str, at: datetime) -> list[Finding]:
        policy = self.policy(instrument, test)
        state = self._state(instrument, test)
        if policy is None:
            return [Finding("qc-policy-missing", f"no QC policy covers {test} on {instrument}")]
        validity = timedelta(hours=float(policy.validity_hours))
        findings = []
        for level in policy.levels:
            seen = state.levels.get(level)
            if seen is None:
                findings.append(Finding(f"qc-missing:{level}", f"no QC result for level {level}"))
            elif at - seen.at > validity:
                findings.append(
                    Finding(
                        "qc-expired",
                        f"QC level {level} is older than "
                        f"{policy.validity_hours} h ({seen.at:%Y-%m-%d %H:%M})",
                    )
                )
            elif seen.status == "reject":
                rules = ",".join(seen.violations)
                findings.append(
                    Finding(f"qc-rejected:{rules}", f"QC level {level} rejected by {rules}")
                )
            elif state.void_at is not None and seen.at <= state.void_at:
                findings.append(
                    Finding(
                        state.void_reason,
                        f"QC level {level} predates a {state.void_reason} "
                        f"at {state.void_at:%Y-%m-%d %H:%M}",
                    )
                )
        return _unique(findings)

    def findings(
        self, instrument: str, test: str, at: datetime, measured_at: datetime | None = None
    ) -> list[Finding]:
        """Why a patient result of ``test`` measured at ``measured_at`` may not be released
        at ``at``; none when QC is in control."""
        state = self._state(instrument, test)
        out: list[Finding] = []
        if state.locked:
            out.append(
                Finding("method-locked", f"{test} on {instrument} is locked: {state.locked}")
            )
        if state.corrective_action_since is not None:
            out.append(
                Finding(
                    "corrective-action-open",
                    f"QC failure (qc-rejected:{state.corrective_action_reason}) awaits its "
                    "corrective action",
                )
            )
        out += self._level_findings(instrument, test, at)
        policy = self.policy(instrument, test)
        if policy is not None and policy.mode == "bracketed" and not out:
            measured = measured_at or at
            closing = [state.levels.get(level) for level in policy.levels]
            if not all(level is not None and level.at >= measured for level in closing):
                out.append(
                    Finding(
                        "awaiting-closing-qc", "bracketed QC: waits for the QC that closes its run"
                    )
                )
        return out


def _unique(findings: Iterable[Finding]) -> list[Finding]:
    seen: set[str] = set()
    out = []
    for finding in findings:
        if finding.code not in seen:
            seen.add(finding.code)
            out.append(finding)
    return out
