"""The engine: for every patient result, release or hold and why; for every control, its
QC evaluation. It combines the QC gate, reagent lots, sample acceptance and
autoverification, and knows nothing of storage or HL7."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from middleware.domain import ControlResult, Result
from middleware.engine.acceptance import acceptance_findings
from middleware.engine.autoverify import autoverify
from middleware.engine.context import ResultContext
from middleware.engine.decision import Decision, decide
from middleware.engine.qc import QcGate, QcOutcome
from middleware.engine.reagents import LotChanges, LotRegistry
from middleware.engine.rules import Rules


@dataclass(frozen=True, slots=True)
class ControlOutcome:
    qc: QcOutcome
    lot_changed: frozenset[str] | None


class Engine:
    def __init__(self, rules: Rules) -> None:
        self.rules = rules
        self.gate = QcGate(rules)
        self.lots = LotRegistry(rules.reagent_lots)
        self.lot_changes = LotChanges()

    def forget(self) -> None:
        """Drop all QC and lot history (before replaying it from the store)."""
        self.gate = QcGate(self.rules)
        self.lots = LotRegistry(self.rules.reagent_lots)
        self.lot_changes = LotChanges()

    def replace_rules(self, rules: Rules) -> None:
        """New rules, same history: QC states stay; Westgard windows start again, since
        the rule sets that shaped them may have changed."""
        self.rules = rules
        self.gate.replace_rules(rules)
        self.lots = LotRegistry(rules.reagent_lots)

    def _lot_change(self, result: Result, at: datetime) -> frozenset[str] | None:
        changed = self.lot_changes.observe(result)
        if changed:
            self.gate.void(result.instrument, result.test_code, "reagent-lot-changed", at)
        return changed

    def record_control(self, control: ControlResult, at: datetime) -> ControlOutcome:
        changed = self._lot_change(control.result, at)
        return ControlOutcome(self.gate.record_control(control, at), changed)

    def decide(self, ctx: ResultContext) -> Decision:
        """A new patient result: it also marks the end of its run's controls."""
        result = ctx.result
        self._lot_change(result, ctx.now)
        self.gate.note_patient(result.instrument, result.test_code)
        return self.redecide(ctx)

    def redecide(self, ctx: ResultContext) -> Decision:
        """The checks alone: for a new result, or a held one looked at again."""
        result = ctx.result
        rules = self.rules
        qc = self.gate.findings(result.instrument, result.test_code, ctx.now, result.completed_at)
        return decide(
            [
                *acceptance_findings(ctx, rules.acceptance),
                *qc,
                *self.lots.findings(result, ctx.now.date()),
                *autoverify(ctx, rules.ranges, rules.delta_checks, rules.autoverification),
            ]
        )
