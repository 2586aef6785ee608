"""Reagent lots: the registry of the rule files, the checks that hold a result made with
an expired or recalled lot, and lot changes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date

from middleware.domain import Result
from middleware.engine.decision import Finding
from middleware.engine.rules import ReagentLot

#: The code (before its ``:lot``) of a finding that a result was made with a recalled lot.
REAGENT_RECALLED = "reagent-recalled"


@dataclass(frozen=True, slots=True)
class Lot:
    reagent: str
    lot: str
    expiry: date | None
    """Effective expiry: the earlier of the printed one and the end of stability once open."""
    recalled: bool = False


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

    def findings(
        self,
        result: Result,
        on: date,
        reported: Mapping[tuple[str, str], date | None],
        recalled: Mapping[tuple[str, str], str] | None = None,
    ) -> list[Finding]:
        """Expired and recalled lots among those a result used. A lot the rules do not
        name is judged by the expiry the analyser gave when it first reported it
        (``reported``, by reagent and lot) and the one it gives now. ``recalled``: lots a
        person recalled, by reagent and lot as reported, with the reason."""
        out: list[Finding] = []
        for use in result.reagents:
            if not use.lot:
                continue
            lot = self.find(use.reagent, use.lot)
            first = lot.expiry if lot is not None else reported.get((use.reagent, use.lot))
            expiries = [d for d in (first, use.expiry) if d is not None]
            name = f"{use.reagent} lot {use.lot}"
            why = (recalled or {}).get((use.reagent, use.lot))
            if why is not None:
                message = f"{name} is recalled: {why}" if why else f"{name} is recalled"
                out.append(Finding(f"{REAGENT_RECALLED}:{use.lot}", message))
            elif lot is not None and lot.recalled:
                out.append(Finding(f"{REAGENT_RECALLED}:{use.lot}", f"{name} is recalled"))
            elif expiries and min(expiries) < on:
                out.append(Finding(f"reagent-expired:{use.lot}", f"{name} expired {min(expiries)}"))
        return out


def lots_changed(
    before: frozenset[str] | None, result: Result
) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """The lots in use for a result's test after it, and those that replaced others (None
    when nothing changed): a change voids the test's QC."""
    lots = frozenset(f"{u.reagent}:{u.lot}" for u in result.reagents if u.lot)
    if not lots:
        return before, None
    if before is None or before == lots:
        return lots, None
    return lots, lots - before
