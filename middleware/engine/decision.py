"""Findings and the decision they add up to: release, hold or reject, and why.

Every rule is a pure function that yields findings; a finding has a code a machine can
act on and a message a person reads. The decision lists them all, so a held result says
every reason at once, not the first one found. The engine decides release for analytical
purposes only: biological validation belongs to the biologist, and no finding or decision
ever claims it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Action(enum.Enum):
    RELEASE = "release"
    HOLD = "hold"
    REJECT = "reject"  # the sample is refused; the reason goes to the LIS


#: The code of the finding that sends a held result to the LIS as preliminary (Q13).
EARLY_RELEASE = "early-release"


@dataclass(frozen=True, slots=True)
class Finding:
    code: str
    """Short and stable: ``qc-expired``, ``qc-rejected:2-2s``, ``critical-high``..."""
    message: str
    action: Action = Action.HOLD
    urgent: bool = False
    """Critical values: somebody must look now."""
    comment: str = ""
    """Text that must travel with the result to the LIS (accept with reservation)."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    findings: tuple[Finding, ...]

    @property
    def urgent(self) -> bool:
        return any(f.urgent for f in self.findings)

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(f.code for f in self.findings if f.action is not Action.RELEASE)

    @property
    def comments(self) -> tuple[str, ...]:
        return tuple(f.comment for f in self.findings if f.comment)

    @property
    def preliminary(self) -> bool:
        """Held, and sent to the LIS meanwhile as preliminary (Q13)."""
        return self.action is Action.HOLD and any(f.code == EARLY_RELEASE for f in self.findings)

    @property
    def biologically_validated(self) -> bool:
        """Never: that is the biologist's act, not a rule's."""
        return False


def decide(findings: Iterable[Finding]) -> Decision:
    """The strongest action any finding asks for; release when none asks for more."""
    found = tuple(findings)
    if any(f.action is Action.REJECT for f in found):
        return Decision(Action.REJECT, found)
    if any(f.action is Action.HOLD for f in found):
        return Decision(Action.HOLD, found)
    return Decision(Action.RELEASE, found)


def note(code: str, message: str, comment: str = "") -> Finding:
    """A finding that holds nothing (a warning, or a comment to pass on)."""
    return Finding(code, message, Action.RELEASE, comment=comment)
