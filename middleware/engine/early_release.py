"""Early release (Q13): a held result that only waits for QC, of a test and priority the
biologist named, goes to the LIS as preliminary; it stays held here until its QC decides,
and the final result, or a notice that the QC failed, follows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import get_args

from middleware.engine.context import ResultContext
from middleware.engine.decision import EARLY_RELEASE, Action, Finding
from middleware.engine.rules import EarlyRelease, QcWait

#: Every wait for QC a result may be sent early past, by a rule or by a biologist.
QC_WAITS = frozenset(get_args(QcWait))


def qc_waits(findings: Iterable[Finding]) -> frozenset[str] | None:
    """The waits for QC a held result waits for (``qc-missing:1`` is a ``qc-missing``),
    when it is held for nothing else; None when it is not held, or held for anything
    about itself (a critical value, a failed delta, its sample) or for a QC failure."""
    holds = [f for f in findings if f.action is not Action.RELEASE]
    if not holds or any(f.action is Action.REJECT for f in holds):
        return None
    waits = frozenset(f.code.split(":", 1)[0] for f in holds)
    return waits if waits <= QC_WAITS else None


def early_release(
    findings: Sequence[Finding], ctx: ResultContext, rules: Sequence[EarlyRelease]
) -> Finding | None:
    """The finding that lets the result go as preliminary, or None. Every hold must be
    a wait for QC the rule names; a result held for anything else never goes."""
    waits = qc_waits(findings)
    if waits is None:
        return None
    for rule in rules:
        if (
            ctx.result.test_code in rule.tests
            and ctx.priority in rule.priorities
            and waits <= set(rule.while_waiting_for)
        ):
            return Finding(
                EARLY_RELEASE,
                f"sent to the LIS as preliminary ({', '.join(sorted(waits))}; "
                f"priority {ctx.priority})",
                Action.RELEASE,
                comment=rule.comment,
            )
    return None
