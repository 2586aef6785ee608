"""The engine: for every patient result, release or hold and why; for every control, its
QC evaluation. It combines the QC gate, reagent lots, sample acceptance and
autoverification, and knows nothing of storage or HL7.

It holds the rules and the laboratory's zone, nothing else: what it must remember of an
instrument and test (a :class:`TestQc`) and of a control lot (a :class:`LotQc`) is given
to each call and returned changed, for the caller to keep.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, tzinfo

from middleware.domain import ControlResult, Result
from middleware.engine.acceptance import acceptance_findings
from middleware.engine.autoverify import autoverify
from middleware.engine.context import ResultContext
from middleware.engine.decision import EARLY_RELEASE, Decision, Finding, decide
from middleware.engine.early_release import early_release
from middleware.engine.qc import (
    QC_FAILURE_CODES,
    QC_FINDING_CODES,
    ControlStep,
    LotQc,
    QcGate,
    TestQc,
)
from middleware.engine.reagents import REAGENT_RECALLED, LotRegistry, lots_changed
from middleware.engine.rules import Rules
from middleware.zones import zone_or_host

#: The codes (before any ``:``) of what a held result's QC, a recall of its reagent lots
#: and early release find: what time changes, looked at anew whenever it is decided
#: again. Whether a lot had expired is a matter of when the result was made: it stands.
_LOOKED_AT_ANEW = QC_FINDING_CODES | {REAGENT_RECALLED, EARLY_RELEASE}


def standing_findings(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """Of a decision's findings, those about the result itself, its sample, patient and
    specimen: what deciding it again without its message cannot see, and keeps."""
    return tuple(f for f in findings if f.code.split(":", 1)[0] not in _LOOKED_AT_ANEW)


class Engine:
    rules: Rules
    gate: QcGate
    lots: LotRegistry
    delta_tests: frozenset[str]
    """The tests whose decisions look at the patient's previous result."""

    zone: tzinfo
    """The laboratory's: a lot's expiry is a date on its calendar."""

    def __init__(self, rules: Rules, zone: tzinfo | None = None) -> None:
        self.zone = zone_or_host(zone)
        self.replace_rules(rules)

    def replace_rules(self, rules: Rules) -> None:
        """New rules; the QC state the caller keeps stays valid under them."""
        self.rules = rules
        self.gate = QcGate(rules)
        self.lots = LotRegistry(rules.reagent_lots)
        options = rules.autoverification
        held_on_delta = options.enabled and options.hold_failed_delta
        self.delta_tests = frozenset(check.test for check in rules.delta_checks if held_on_delta)

    def _lot_change(self, state: TestQc, result: Result, at: datetime) -> TestQc:
        in_use, changed = lots_changed(state.lots_in_use, result)
        if in_use != state.lots_in_use:
            state = replace(state, lots_in_use=in_use)
        if changed:
            state = self.gate.void(state, "reagent-lot-changed", at)
        return state

    def record_control(
        self, state: TestQc, lots: Mapping[str, LotQc], control: ControlResult, at: datetime
    ) -> ControlStep:
        """``lots`` holds the states of the lots ``gate.lots_needed`` names."""
        return self.gate.record_control(
            self._lot_change(state, control.result, at),
            lots,
            control,
            at,
            at.astimezone(self.zone).date(),
        )

    def observe_patient(self, state: TestQc, result: Result, at: datetime) -> TestQc:
        """What a new patient result changes in its test's QC state: it may bring a new
        reagent lot, and it marks the end of its run's controls."""
        return self.gate.note_patient(self._lot_change(state, result, at))

    def decide(self, state: TestQc, ctx: ResultContext) -> tuple[TestQc, Decision]:
        """A new patient result: its decision, and its test's QC state after it."""
        state = self.observe_patient(state, ctx.result, ctx.now)
        return state, self.redecide(state, ctx)

    def confirm(self, decision: Decision, state: TestQc, ctx: ResultContext) -> Decision:
        """Q2: a patient result decided before controls of its test sent after it in the
        same message, confirmed once they are evaluated (``state``): a QC they failed, or
        could not judge, holds it too, before anything of it leaves."""
        result = ctx.result
        failed = [
            f
            for f in self.gate.findings(
                state, result.instrument, result.test_code, ctx.now, result.completed_at
            )
            if f.code.split(":", 1)[0] in QC_FAILURE_CODES
            and f.code not in {known.code for known in decision.findings}
        ]
        if not failed:
            return decision
        # Nothing held for a QC failure goes early: the early release it had is undone.
        kept = [f for f in decision.findings if f.code != EARLY_RELEASE]
        return decide([*kept, *failed])

    def redecide(
        self, state: TestQc, ctx: ResultContext, standing: Sequence[Finding] | None = None
    ) -> Decision:
        """The checks alone: for a new result, or a held one looked at again.

        A held result is looked at again without the message it came in: its patient (the
        ranges by sex and age), its sample's condition and its specimen are not known
        then. ``standing`` is what its decision before found of those
        (:func:`standing_findings`): they stand, and only what time changes (its QC, a
        recall of its reagent lots, whether it goes early) is looked at anew."""
        result = ctx.result
        rules = self.rules
        qc = self.gate.findings(
            state,
            result.instrument,
            result.test_code,
            ctx.now,
            result.completed_at,
            ctx.received_at,
        )
        # Judged on the day the result came, which is never before the day it was made:
        # an analyser's clock cannot make an expired lot look valid.
        today = ctx.now.astimezone(self.zone).date()
        lots = self.lots.findings(result, today, ctx.reported_lots, ctx.recalled_lots)
        if standing is None:
            findings = [
                *acceptance_findings(ctx, rules.acceptance),
                *qc,
                *lots,
                *autoverify(ctx, rules.ranges, rules.delta_checks, rules.autoverification),
            ]
        else:
            recalled = [f for f in lots if f.code.startswith(f"{REAGENT_RECALLED}:")]
            findings = [*qc, *recalled, *standing]
        early = early_release(findings, ctx, rules.early_release)
        return decide([*findings, early] if early is not None else findings)
