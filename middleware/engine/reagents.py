"""Reagent lots: the registry (from the rule files and from what analysers report), the
checks that hold a result made with an expired or recalled lot, and lot changes."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from middleware.domain import ReagentUse, Result
from middleware.engine.decision import Finding
from middleware.engine.rules import ReagentLot


@dataclass(frozen=True, slots=True)
class Lot:
    reagent: str
    lot: str
    expiry: date | None
    """Effective expiry: the earlier of the printed one and the end of stability once open."""
    recalled: bool = False
    source: str = "rules"  # rules, or the analyser that reported it first


class LotRegistry:
    def __init__(self, lots: Iterable[ReagentLot] = ()) -> None:
        self._lots: dict[tuple[str, str], Lot] = {}
        self._by_lot: dict[str, list[Lot]] = {}
        for configured in lots:
            self._add(
                Lot(
                    configured.reagent,
                    configured.lot,
                    configured.effective_expiry,
                    configured.recalled,
                )
            )

    def _add(self, lot: Lot) -> None:
        self._lots[(lot.reagent, lot.lot)] = lot
        self._by_lot.setdefault(lot.lot, []).append(lot)

    def find(self, reagent: str, lot: str) -> Lot | None:
        """By reagent and lot; by lot alone when the analyser names the reagent otherwise
        and only one registered reagent has that lot number."""
        found = self._lots.get((reagent, lot))
        if found is None:
            candidates = self._by_lot.get(lot, [])
            found = candidates[0] if len(candidates) == 1 else None
        return found

    def observe(self, use: ReagentUse, instrument: str) -> Lot:
        """The registry's entry for a lot an analyser reported, added when new."""
        known = self.find(use.reagent, use.lot)
        if known is None:
            known = Lot(use.reagent, use.lot, use.expiry, source=instrument)
            self._add(known)
        return known

    def findings(self, result: Result, on: date) -> list[Finding]:
        out: list[Finding] = []
        for use in result.reagents:
            if not use.lot:
                continue
            lot = self.observe(use, result.instrument)
            expiries = [d for d in (lot.expiry, use.expiry) if d is not None]
            name = f"{use.reagent} lot {use.lot}"
            if lot.recalled:
                out.append(Finding(f"reagent-recalled:{use.lot}", f"{name} is recalled"))
            elif expiries and min(expiries) < on:
                out.append(Finding(f"reagent-expired:{use.lot}", f"{name} expired {min(expiries)}"))
        return out


class LotChanges:
    """The lots last in use per instrument and test: a change voids the test's QC."""

    def __init__(self) -> None:
        self._in_use: dict[tuple[str, str], frozenset[str]] = {}

    def observe(self, result: Result) -> frozenset[str] | None:
        """The lots that replaced others for this result's test, or None when nothing changed."""
        lots = frozenset(f"{u.reagent}:{u.lot}" for u in result.reagents if u.lot)
        if not lots:
            return None
        key = (result.instrument, result.test_code)
        before = self._in_use.get(key)
        self._in_use[key] = lots
        if before is None or before == lots:
            return None
        return lots - before
