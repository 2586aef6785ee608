"""The QC gate with its state kept in dicts, as the store keeps it in rows: lets tests
speak of events and findings without a database, through the same pure functions."""

from __future__ import annotations

from datetime import datetime

from middleware.domain import ControlResult
from middleware.engine.decision import Finding
from middleware.engine.qc import NO_LOT_QC, NO_QC, LimitsProposal, LotQc, QcGate, QcOutcome, TestQc
from middleware.engine.rules import Rules


class InMemoryGate:
    def __init__(self, rules: Rules) -> None:
        self.gate = QcGate(rules)
        self.rules = rules
        self.tests: dict[tuple[str, str], TestQc] = {}
        self.lots: dict[tuple[str, str], dict[str, LotQc]] = {}

    def state(self, instrument: str, test: str) -> TestQc:
        return self.tests.get((instrument, test), NO_QC)

    def note_patient(self, instrument: str, test: str) -> None:
        self.tests[(instrument, test)] = QcGate.note_patient(self.state(instrument, test))

    def void(self, instrument: str, test: str, reason: str, at: datetime) -> None:
        self.tests[(instrument, test)] = QcGate.void(self.state(instrument, test), reason, at)

    def record_control(self, control: ControlResult, at: datetime) -> QcOutcome:
        key = (control.result.instrument, control.result.test_code)
        lots = self.lots.setdefault(key, {})
        step = self.gate.record_control(self.state(*key), lots, control, at, at.date())
        self.tests[key] = step.state
        lots.update(step.lots)
        return step.outcome

    def findings(
        self,
        instrument: str,
        test: str,
        at: datetime,
        measured: datetime | None = None,
        received: datetime | None = None,
    ) -> list[Finding]:
        state = self.state(instrument, test)
        return self.gate.findings(state, instrument, test, at, measured, received)

    def close_corrective_action(self, instrument: str, test: str, at: datetime) -> None:
        state = self.state(instrument, test)
        self.tests[(instrument, test)] = self.gate.close_corrective_action(
            state, instrument, test, at
        )

    def unlock(self, instrument: str, test: str) -> None:
        lots = self.lots.setdefault((instrument, test), {})
        self.tests[(instrument, test)], changed = QcGate.unlock(self.state(instrument, test), lots)
        lots.update(changed)

    def proposals(self) -> list[LimitsProposal]:
        found = (
            QcGate.proposal(instrument, test, lot, state)
            for (instrument, test), lots in self.lots.items()
            for lot, state in lots.items()
        )
        return [proposal for proposal in found if proposal is not None]

    def approve(self, proposal: LimitsProposal) -> None:
        lots = self.lots.setdefault((proposal.instrument, proposal.test), {})
        lots[proposal.lot] = QcGate.approve(lots.get(proposal.lot, NO_LOT_QC), proposal)
