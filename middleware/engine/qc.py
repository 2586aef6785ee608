"""QC before release: is the QC of a test on an instrument in control right now?

What the release rule needs of an instrument and test is a :class:`TestQc`: the latest
evaluation of each control level, the event that voids QC since (a reagent lot change, a
calibration, maintenance), an open corrective action, a method lock, the lots in use and
the Westgard stream; of each control lot, a :class:`LotQc`: its Westgard window, the
statistics that give the lab its own limits after 20 runs (Q3), and the CV and bias cycle
(Q6). Both are immutable values. The :class:`QcGate` holds only the rules: each of its
methods takes the state and an event and gives back the new state, so the caller keeps
the state where it likes (the store keeps it as rows, changed in the transaction that
stores the result) and nothing is ever rebuilt.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
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
    measured_at: datetime | None = None
    """The control's own time, on its analyser's clock (R.13): a bracketed patient result
    is closed by a control measured after it, the two times read off one clock."""
    unusable: str = ""
    """Why this control could not be evaluated (no number, an expired control lot): the
    level has no valid QC until one that can be comes. Its status is then ``reject``
    with no violation: a version that does not know this reads it as no valid QC."""


@dataclass(frozen=True, slots=True)
class Statistics:
    """Count, sum and sum of squares of control values, exactly: the mean and SD follow,
    and the numbers stay as short as the values' decimals allow."""

    n: int = 0
    total: Fraction = Fraction(0)
    squares: Fraction = Fraction(0)

    def add(self, value: Fraction) -> Statistics:
        return Statistics(self.n + 1, self.total + value, self.squares + value * value)

    @property
    def mean(self) -> Fraction:
        return self.total / self.n if self.n else Fraction(0)

    @property
    def variance(self) -> Fraction:
        if self.n < 2:
            return Fraction(0)
        return (self.squares - self.total * self.total / self.n) / (self.n - 1)


@dataclass(frozen=True, slots=True)
class LotQc:
    """What is remembered of one control lot on one instrument and test."""

    material: str = ""
    window: westgard.Window = westgard.NO_WINDOW
    """Its Westgard window over closed runs."""
    statistics: Statistics = Statistics()
    """Q3: every result of the lot."""
    runs: tuple[str, ...] = ()
    """Q3: the distinct runs those results came in, up to the number that counts."""
    cycle: Statistics = Statistics()
    """Q6: the results of the control cycle in progress."""
    over_limit_cycles: int = 0
    """Q6: consecutive cycles over the CV or bias limit."""
    approved: Target | None = None
    """Q3: the lab's own mean and SD, once a biologist approved them."""
    epoch: int = 0
    """The test's windows its window belongs to (:attr:`TestQc.epoch`); an older one is
    read as empty."""


@dataclass(frozen=True, slots=True)
class TestQc:
    """What is remembered of the QC of one test on one instrument."""

    run_number: int = 0
    run_closed: bool = True
    """The run's controls are over (a patient result came, or its failure was dealt with):
    the next control opens a new run."""
    levels: Mapping[str, LevelState] = field(default_factory=dict)
    """The latest evaluation of each control level: read-only, since a state may be shared
    (the store keeps parsed states); a new evaluation makes a new mapping."""
    void_reason: str = ""
    void_at: datetime | None = None
    corrective_action_since: datetime | None = None
    corrective_action_reason: str = ""
    corrective_action_run: str = ""
    """The latest run that failed while the corrective action is open: the re-run that
    closes it is a later run."""
    last_in_control_at: datetime | None = None
    accepted_run_at: datetime | None = None
    """Q9: when QC was last in control at the end of a run accepted whole; a failure lists
    for review the results released after it."""
    locked: str = ""
    lots_in_use: frozenset[str] | None = None
    """Reagent lots of the last result: a change voids QC."""
    stream: westgard.Stream = westgard.NO_STREAM
    basis: str = ""
    """The rule set and control targets the Westgard windows were judged with."""
    epoch: int = 0
    """Counts the times the windows started again, when their basis changed."""


NO_QC = TestQc()
NO_LOT_QC = LotQc()

#: Of those, the findings of a QC that failed or could not be judged: what a control sent
#: after a patient result in the same message holds it for (Q2).
QC_FAILURE_CODES = frozenset(
    {"method-locked", "corrective-action-open", "qc-rejected", "qc-unevaluated"}
)

#: The codes (before any ``:``) of the findings :meth:`QcGate.findings` gives: a result
#: held for one of them waits for the QC of its test (Q1), not for a look at itself. The
#: void reasons are the events that void QC (:meth:`QcGate.void`).
QC_FINDING_CODES = frozenset(
    {
        "method-locked",
        "corrective-action-open",
        "qc-policy-missing",
        "qc-missing",
        "qc-expired",
        "qc-rejected",
        "qc-unevaluated",
        "awaiting-closing-qc",
        "reagent-lot-changed",
        "calibration",
        "maintenance",
    }
)


@dataclass(frozen=True, slots=True)
class LimitsProposal:
    """Q3: the lab's own mean and SD, ready for a biologist to approve."""

    instrument: str
    test: str
    lot: str
    mean: Decimal
    sd: Decimal
    results: int


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


@dataclass(frozen=True, slots=True)
class ControlStep:
    """The state after one control result, and what it did."""

    state: TestQc
    lots: dict[str, LotQc]
    """The lot states that changed, by lot."""
    outcome: QcOutcome


def _root(variance: Fraction) -> Fraction:
    return Fraction(math.sqrt(variance))


class QcGate:
    """The QC rules applied to state given by the caller; it keeps no state itself."""

    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        # Derived from the rules alone, once per instrument and test named by a policy.
        self._rule_sets: dict[tuple[str, str], westgard.RuleSet] = {}
        self._bases: dict[tuple[str, str], str] = {}
        # Every result asks for its test's policy several times: the policies naming each
        # test, in the rules' order (the first that matches the instrument applies).
        self._policies: dict[str, list[QcPolicy]] = {}
        for policy in rules.qc_policies:
            for test in policy.tests:
                self._policies.setdefault(test, []).append(policy)

    # --- configuration ---------------------------------------------------------------------

    def policy(self, instrument: str, test: str) -> QcPolicy | None:
        return next(
            (p for p in self._policies.get(test, ()) if _policy_matches(p, instrument, test)),
            None,
        )

    def rule_set(self, instrument: str, test: str) -> westgard.RuleSet:
        chosen = self._rule_sets.get((instrument, test))
        if chosen is None:
            policy = self.policy(instrument, test)
            chosen = to_westgard(
                self.rules.rule_set_for(policy) if policy else self.rules.rule_sets["default"]
            )
            if policy is not None:
                self._rule_sets[(instrument, test)] = chosen
        return chosen

    def basis(self, instrument: str, test: str) -> str:
        """What the Westgard windows of a test are judged with: its rule set and the
        rules' targets of every control lot for it. Windows judged against other targets
        (a corrected mean) or kept by another rule set would judge the next result
        wrongly: when this changes they start again. Approved limits do not change it:
        they refine a target of the same lot."""
        basis = self._bases.get((instrument, test))
        if basis is None:
            targets = sorted(
                f"{material.name}/{lot.lot}={lot.targets[test].mean}/{lot.targets[test].sd}"
                for material in self.rules.control_materials
                for lot in material.lots
                if test in lot.targets
            )
            text = f"{self.rule_set(instrument, test)!r};{';'.join(targets)}"
            basis = hashlib.sha256(text.encode()).hexdigest()[:32]
            self._bases[(instrument, test)] = basis
        return basis

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

    def lots_needed(self, state: TestQc, control: ControlResult) -> set[str]:
        """The lots whose state recording ``control`` reads: its own, and those of the
        open run, which it may close."""
        found = self.control_lot(control)
        needed = {found[1].lot} if found else set()
        if state.stream.run is not None:
            needed |= {lot for (_, lot), _ in state.stream.run.materials}
        return needed

    # --- events ----------------------------------------------------------------------------

    @staticmethod
    def note_patient(state: TestQc) -> TestQc:
        """A patient result came: the next control starts a new run."""
        return state if state.run_closed else replace(state, run_closed=True)

    @staticmethod
    def _opens_run(
        state: TestQc, run: str, level: str, at: datetime, policy: QcPolicy | None
    ) -> bool:
        """Whether a control of ``level`` at ``at`` opens a new run rather than joining
        ``run``, the open one. The controls measured together between patient results are
        a run, but a run also ends when one of its levels comes again after the run failed
        (the re-run after a failure is not judged with the failed results, whatever
        patients came meanwhile) and when its first control is older than the QC's
        validity (a run never spans days for R-4s and the within-run rules)."""
        if state.run_closed:
            return True
        current = [seen for seen in state.levels.values() if seen.run == run]
        if not current:
            return False
        mine = state.levels.get(level)
        if mine is not None and mine.run == run and any(s.status == "reject" for s in current):
            return True
        if policy is None:
            return False
        return at - min(seen.at for seen in current) > timedelta(hours=float(policy.validity_hours))

    @staticmethod
    def _next_run(state: TestQc, run: str) -> TestQc:
        """The open run closed and the next opened; a closing run without a failure, all
        of QC in control at its end, is the one a later failure reviews from."""
        closing = [seen for seen in state.levels.values() if seen.run == run]
        accepted = state.accepted_run_at
        if (
            closing
            and state.corrective_action_since is None
            and state.last_in_control_at is not None
            and all(seen.status != "reject" and not seen.unusable for seen in closing)
        ):
            accepted = state.last_in_control_at
        return replace(
            state, run_number=state.run_number + 1, run_closed=False, accepted_run_at=accepted
        )

    @staticmethod
    def void(state: TestQc, reason: str, at: datetime) -> TestQc:
        """An event after which earlier QC no longer counts (``reagent-lot-changed``,
        ``calibration``, ``maintenance``)."""
        return replace(state, void_reason=reason, void_at=at)

    def record_control(
        self,
        state: TestQc,
        lots: Mapping[str, LotQc],
        control: ControlResult,
        at: datetime,
        today: date,
    ) -> ControlStep:
        """``lots`` holds the states of the lots :meth:`lots_needed` names; ``today`` is
        the laboratory's date at ``at``, against which a control lot's expiry is read."""
        result = control.result
        instrument, test = result.instrument, result.test_code
        found = self.control_lot(control)
        level = found[1].level if found else control.level or control.control_material
        policy = self.policy(instrument, test)
        run = f"{instrument}/{test}/{state.run_number}"
        if self._opens_run(state, run, level, at, policy):
            state = self._next_run(state, run)
            run = f"{instrument}/{test}/{state.run_number}"
        if policy is None:
            return ControlStep(
                state, {}, QcOutcome(None, run, level, None, True, f"no QC policy for {test}")
            )
        if found is None or test not in found[1].targets:
            problem = (
                f"no target for {control.control_material or '?'} lot {control.lot or '?'} {test}"
            )
            return ControlStep(state, {}, QcOutcome(None, run, level, None, True, problem))
        material, lot = found
        unusable = ""
        number = result.value.number
        if lot.expiry is not None and today > lot.expiry:
            unusable = f"control lot {lot.lot} expired on {lot.expiry:%Y-%m-%d}"
        elif number is None or result.value.censor:
            # A censored value (">500") may well be out of control: it cannot say by how
            # much, so the level waits for a control that can be judged.
            unusable = f"control value {result.value.text!r} is not a number"
        if unusable or number is None:
            levels = dict(state.levels)
            levels[level] = LevelState(
                at, run, "reject", (), result.completed_at, unusable=unusable
            )
            state = replace(state, levels=levels)
            return ControlStep(state, {}, QcOutcome(None, run, level, None, True, unusable))
        mine = lots.get(lot.lot, NO_LOT_QC)
        target = mine.approved or lot.targets[test]
        rule_set = self.rule_set(instrument, test)
        basis = self.basis(instrument, test)
        if state.basis != basis:
            state = replace(state, basis=basis, epoch=state.epoch + 1, stream=westgard.NO_STREAM)
        epoch = state.epoch

        def window(name: str) -> westgard.Window:
            kept = lots.get(name, NO_LOT_QC)
            return kept.window if kept.epoch == epoch else westgard.NO_WINDOW

        keys = {(material.name, lot.lot), *westgard.closing(state.stream, run)}
        windows = {key: window(key[1]) for key in keys}
        step = westgard.evaluate(
            rule_set,
            state.stream,
            windows,
            westgard.QcResult(
                run=run,
                material=material.name,
                lot=lot.lot,
                value=number,
                mean=target.mean,
                sd=target.sd,
                instrument=instrument,
                test=test,
            ),
        )
        changed = {
            name: replace(
                lots.get(name, NO_LOT_QC), material=key_material, window=closed, epoch=epoch
            )
            for (key_material, name), closed in step.windows.items()
        }
        evaluation = step.evaluation
        value = Fraction(number)
        mine = changed.get(lot.lot, mine)
        if mine.epoch != epoch:
            mine = replace(mine, window=westgard.NO_WINDOW, epoch=epoch)
        runs = mine.runs
        if len(runs) < RESULTS_FOR_OWN_LIMITS and run not in runs:
            runs = (*runs, run)
        mine = replace(
            mine, material=material.name, statistics=mine.statistics.add(value), runs=runs
        )
        levels = dict(state.levels)
        levels[level] = LevelState(
            at, run, evaluation.status, evaluation.violations, result.completed_at
        )
        state = replace(state, levels=levels, stream=step.stream)
        state, mine = self._cycle(policy, state, mine, value, target)
        changed[lot.lot] = mine
        opened = False
        review_since = None
        if evaluation.status == "reject":
            if state.corrective_action_since is None:
                opened = True
                state = replace(
                    state,
                    corrective_action_since=at,
                    corrective_action_reason=",".join(evaluation.violations),
                )
            # The latest run that failed: a re-run that fails too must itself be re-run.
            state = replace(state, corrective_action_run=run)
            # Not the last time QC was in control: that may be a level of this very run,
            # measured before the one that failed it, after the patients to review.
            review_since = state.accepted_run_at
        elif not self._level_findings(state, instrument, test, at):
            state = replace(state, last_in_control_at=at)
        outcome = QcOutcome(
            evaluation,
            run,
            level,
            target,
            provisional=mine.approved is None,
            opened_corrective_action=opened,
            review_since=review_since,
            locked=state.locked,
        )
        return ControlStep(state, changed, outcome)

    @staticmethod
    def _cycle(
        policy: QcPolicy, state: TestQc, lot: LotQc, value: Fraction, target: Target
    ) -> tuple[TestQc, LotQc]:
        """Q6: CV and bias over each control cycle of a lot; two consecutive cycles of a
        lot over the limits lock the method."""
        # Per control lot: each level has its own mean, so pooling the levels would read
        # a spread between them as imprecision.
        if policy.max_cv_percent is None and policy.max_bias_percent is None:
            return state, lot
        cycle = lot.cycle.add(value)
        if cycle.n < RESULTS_FOR_OWN_LIMITS:
            return state, replace(lot, cycle=cycle)
        mean = cycle.mean
        cv = _root(cycle.variance) / mean * 100 if mean else Fraction(0)
        # Rule files refuse a mean of 0 under a bias limit; under a CV limit alone it is fine.
        expected = Fraction(target.mean)
        bias = abs(mean - expected) / expected * 100 if expected else Fraction(0)
        over = (policy.max_cv_percent is not None and cv > Fraction(policy.max_cv_percent)) or (
            policy.max_bias_percent is not None and bias > Fraction(policy.max_bias_percent)
        )
        over_limit = lot.over_limit_cycles + 1 if over else 0
        lot = replace(lot, cycle=Statistics(), over_limit_cycles=over_limit)
        if over_limit >= 2:
            state = replace(
                state,
                locked=(
                    f"CV {float(cv):.1f}% / bias {float(bias):.1f}% over the limits "
                    "for two consecutive cycles"
                ),
            )
        return state, lot

    # --- people's acts ---------------------------------------------------------------------

    def close_corrective_action(
        self, state: TestQc, instrument: str, test: str, at: datetime
    ) -> TestQc:
        """Q9: close the open corrective action; only once a QC re-run is in control."""
        since = state.corrective_action_since
        if since is None:
            raise ValueError(f"no corrective action is open for {test} on {instrument}")
        problems = self._level_findings(state, instrument, test, at)
        # Every level the policy asks for, measured after the failure in a run after the
        # latest that failed: a level measured after the failure but in a failed run is
        # no re-run. (Levels outside the policy, of a lot since retired, hold nothing.)
        policy = self.policy(instrument, test)
        wanted = policy.levels if policy is not None else tuple(state.levels)
        after = _run_number(state.corrective_action_run)
        rerun = all(
            level.at > since and _run_number(level.run) > after
            for name in wanted
            if (level := state.levels.get(name)) is not None
        )
        if problems or not rerun:
            raise ValueError(
                f"QC of {test} on {instrument} is not in control again since the failure: "
                + (", ".join(f.code for f in problems) or "re-run every level first")
            )
        return replace(
            state,
            corrective_action_since=None,
            corrective_action_reason="",
            corrective_action_run="",
            last_in_control_at=at,
            run_closed=True,
        )

    @staticmethod
    def unlock(state: TestQc, lots: Mapping[str, LotQc]) -> tuple[TestQc, dict[str, LotQc]]:
        """Lift a method lock: the cycles over the limits start counting again."""
        return replace(state, locked=""), {
            name: replace(lot, over_limit_cycles=0)
            for name, lot in lots.items()
            if lot.over_limit_cycles
        }

    @staticmethod
    def proposal(instrument: str, test: str, lot: str, state: LotQc) -> LimitsProposal | None:
        """Q3: the lab's own limits of a lot with 20 results in 20 runs, until approved."""
        stats = state.statistics
        if state.approved is not None or stats.n < RESULTS_FOR_OWN_LIMITS:
            return None
        if len(state.runs) < RESULTS_FOR_OWN_LIMITS:
            return None
        places = Decimal("0.0001")
        sd = Decimal(math.sqrt(stats.variance)).quantize(places)
        mean = Decimal(stats.mean.numerator) / Decimal(stats.mean.denominator)
        return LimitsProposal(instrument, test, lot, mean.quantize(places), sd, stats.n)

    @staticmethod
    def approve(state: LotQc, proposal: LimitsProposal) -> LotQc:
        return replace(state, approved=Target(mean=proposal.mean, sd=proposal.sd))

    # --- the release question ----------------------------------------------------------------

    def _level_findings(
        self,
        state: TestQc,
        instrument: str,
        test: str,
        at: datetime,
        measured_at: datetime | None = None,
    ) -> list[Finding]:
        """Why the levels' QC is not valid at ``at``, for a result measured at
        ``measured_at`` by its analyser's clock when that is given."""
        policy = self.policy(instrument, test)
        if policy is None:
            return [Finding("qc-policy-missing", f"no QC policy covers {test} on {instrument}")]
        validity = timedelta(hours=float(policy.validity_hours))
        findings = []
        for level in policy.levels:
            seen = state.levels.get(level)
            if seen is None:
                findings.append(Finding(f"qc-missing:{level}", f"no QC result for level {level}"))
            elif at - seen.at > validity or _measured_apart(seen, measured_at) > validity:
                findings.append(
                    Finding(
                        "qc-expired",
                        f"QC level {level} is older than "
                        f"{policy.validity_hours} h ({seen.measured_at or seen.at:%Y-%m-%d %H:%M})",
                    )
                )
            elif seen.unusable:
                findings.append(
                    Finding(
                        f"qc-unevaluated:{level}",
                        f"QC level {level} could not be evaluated: {seen.unusable}",
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
        self,
        state: TestQc,
        instrument: str,
        test: str,
        at: datetime,
        measured_at: datetime | None = None,
        received_at: datetime | None = None,
    ) -> list[Finding]:
        """Why a patient result of ``test`` measured at ``measured_at`` (on its analyser's
        clock) and received at ``received_at`` (on ours; ``at`` for a result just come)
        may not be released at ``at``; none when QC is in control."""
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
        out += self._level_findings(state, instrument, test, at, measured_at)
        policy = self.policy(instrument, test)
        if policy is not None and policy.mode == "bracketed" and not out:
            closing = [state.levels.get(level) for level in policy.levels]
            received = received_at or at
            if not all(_closes(level, measured_at, received) for level in closing):
                out.append(
                    Finding(
                        "awaiting-closing-qc", "bracketed QC: waits for the QC that closes its run"
                    )
                )
        return out


def _closes(level: LevelState | None, measured_at: datetime | None, received: datetime) -> bool:
    """Whether a control closes the run of a patient result measured at ``measured_at``
    and received at ``received``: measured after it, both times on the analyser's clock
    (one behind or ahead by an hour moves both alike; our time of receipt against the
    analyser's would release a result before its closing QC). Without both times, or
    measured in the same second (the opening QC may be), received in a later message."""
    if level is None:
        return False
    mine = level.measured_at
    if measured_at is not None and mine is not None and mine != measured_at:
        return mine > measured_at
    return level.at > received


def _measured_apart(level: LevelState, measured_at: datetime | None) -> timedelta:
    """How long before a result its control was measured, both times read off the
    analyser's clock (QC sent late, after the link was down, is as old as it is, whatever
    that clock's error); none when either time is unknown."""
    if measured_at is None or level.measured_at is None:
        return timedelta(0)
    return measured_at - level.measured_at


def _run_number(run: str) -> int:
    """The number of a run the gate named (``instrument/test/7``); -1 for none (a state
    kept before the failed run was)."""
    number = run.rpartition("/")[2]
    return int(number) if number.isdigit() else -1


def _unique(findings: Iterable[Finding]) -> list[Finding]:
    seen: set[str] = set()
    out = []
    for finding in findings:
        if finding.code not in seen:
            seen.add(finding.code)
            out.append(finding)
    return out
