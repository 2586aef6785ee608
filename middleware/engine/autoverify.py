"""Autoverification: instrument flags, measurable range, critical values, reference ranges
by sex and age, and delta checks against the patient's previous result."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal

from middleware.domain import Result
from middleware.engine.context import Patient, PreviousResult, ResultContext
from middleware.engine.decision import Finding, note
from middleware.engine.rules import Autoverification, DeltaCheck, Range

# E1394 R.9 result status: X = the test could not be done.
_NOT_DONE = {"X"}

# The statuses (R.9 in E1394, OBX-11 in HL7 table 0085) of a value that is a result to
# report: final, corrected, preliminary (sent as such), operator verified, previously
# transmitted, with new information, changed to final, a MIC level, an answer to a query.
_REPORTABLE = frozenset({"", "F", "C", "P", "V", "R", "N", "U", "M", "Q"})
_NOT_REPORTABLE = {
    "I": "pending in the instrument",
    "S": "partial",
    "W": "of questionable validity, or wrong",
    "D": "to be deleted",
    "O": "an order's detail, not a result",
}


def matching_range(
    ranges: Sequence[Range], result: Result, patient: Patient | None
) -> Range | None:
    """The range of the result's test for this patient: a sex-specific one before one for
    either sex; an age-limited one only when the age is known and inside it."""
    sex = patient.sex if patient else ""
    age = None
    if patient is not None and result.completed_at is not None:
        age = patient.age_years(result.completed_at.date())
    best: Range | None = None
    for candidate in ranges:
        if candidate.test != result.test_code:
            continue
        if candidate.sex not in ("*", sex):
            continue
        limited = candidate.age_min_years > 0 or candidate.age_max_years < 150
        inside = age is not None and candidate.age_min_years <= age < candidate.age_max_years
        if limited and not inside:
            continue
        if best is None or (best.sex == "*" and candidate.sex != "*"):
            best = candidate
    return best


def flag_findings(result: Result, options: Autoverification) -> Iterator[Finding]:
    if result.status in _NOT_DONE:
        yield Finding("test-not-done", f"the analyser could not do {result.test_code}")
    elif result.status not in _REPORTABLE:
        # Never to the LIS as final: a person looks at what the analyser said of it.
        meaning = _NOT_REPORTABLE.get(result.status, "neither final nor corrected")
        yield Finding(
            f"result-status:{result.status}",
            f"the analyser marked the result of {result.test_code} {result.status}: {meaning}",
        )
    elif not result.value.text.strip():
        # An analyser that could not measure may still call the result final (a Dimension
        # with an error comment, an AU with data flags): an empty value must not reach the
        # LIS as the final result, whether or not the test has ranges to check.
        yield Finding("no-value", f"the analyser sent no value for {result.test_code}")
    holds_any = "*" in options.hold_instrument_flags
    for flag in result.instrument_flags:
        if holds_any or any(_names(flag, listed) for listed in options.hold_instrument_flags):
            yield Finding("instrument-flag", f"the analyser flagged the result: {flag}")
    for flag in result.abnormal_flags:
        if flag in options.hold_abnormal_flags:
            yield Finding(f"flag:{flag}", f"the analyser marked the result {flag}", urgent=True)


def _names(flag: str, listed: str) -> bool:
    """Whether a flag listed in the rules is this one: the same, or its name where the
    flag carries its value (a Sysmex Q-flag, ``Blasts?=140``) or its code its text (a
    Dimension Vista's ``E521 Above Assay Range``)."""
    return flag == listed or (
        flag.startswith(listed) and flag[len(listed) : len(listed) + 1] in ("=", " ")
    )


def range_findings(
    ctx: ResultContext, ranges: Sequence[Range], options: Autoverification
) -> Iterator[Finding]:
    result = ctx.result
    limits = matching_range(ranges, result, ctx.patient)
    if limits is None:
        return
    value, censor = result.value.number, result.value.censor
    if value is None:
        yield Finding("non-numeric", f"{result.test_code} = {result.value.text!r} is not a number")
        return
    # A censored value says only which side of its limit the truth is on.
    may_be_low = censor in ("", "<", "<=")
    may_be_high = censor in ("", ">", ">=")
    if options.hold_outside_measurable_range:
        yield from _measurable(result, limits)
    shown = f"{result.test_code} {result.value.text}"
    if limits.critical_high is not None and may_be_high and value >= limits.critical_high:
        limit = limits.critical_high
        yield Finding(
            "critical-high", f"{shown} at or above the critical limit {limit}", urgent=True
        )
    if limits.critical_low is not None and may_be_low and value <= limits.critical_low:
        limit = limits.critical_low
        yield Finding(
            "critical-low", f"{shown} at or below the critical limit {limit}", urgent=True
        )
    if censor == "":
        if limits.high is not None and value > limits.high:
            yield note("above-reference", f"above the reference range ({limits.low}-{limits.high})")
        if limits.low is not None and value < limits.low:
            yield note("below-reference", f"below the reference range ({limits.low}-{limits.high})")


def _measurable(result: Result, limits: Range) -> Iterator[Finding]:
    value, censor = result.value.number, result.value.censor
    assert value is not None
    high, low = limits.measurable_high, limits.measurable_low
    # ">40" when the range ends at 40 is the analyser saying "beyond": dilute and repeat.
    if high is not None and (value > high or (censor in (">", ">=") and value >= high)):
        yield Finding("above-measurable-range", f"{result.value.text} beyond the measurable "
                      f"range (to {high}): dilute and repeat")  # fmt: skip
    if low is not None and censor == "" and value < low:
        yield Finding("below-measurable-range",
                      f"{value} below the measurable range (from {low})")  # fmt: skip


def delta_findings(
    result: Result, previous: PreviousResult | None, checks: Sequence[DeltaCheck]
) -> Iterator[Finding]:
    if previous is None or result.value.number is None or result.value.censor:
        return
    completed = result.completed_at
    for check in checks:
        if check.test != result.test_code:
            continue
        window = timedelta(hours=float(check.window_hours))
        if completed is not None and completed - previous.completed_at > window:
            continue
        change = result.value.number - previous.value
        if check.absolute is not None and abs(change) > check.absolute:
            yield Finding("delta", f"changed by {change:+} since {previous.value} "
                          f"(limit {check.absolute})")  # fmt: skip
        elif check.percent is not None and previous.value != 0:
            percent = abs(change) / abs(previous.value) * Decimal(100)
            if percent > check.percent:
                yield Finding("delta", f"changed by {percent:.0f}% since {previous.value} "
                              f"(limit {check.percent}%)")  # fmt: skip


def autoverify(
    ctx: ResultContext,
    ranges: Sequence[Range],
    checks: Sequence[DeltaCheck],
    options: Autoverification,
) -> list[Finding]:
    if not options.enabled:
        return [Finding("autoverification-off", "autoverification is switched off")]
    findings = [*flag_findings(ctx.result, options), *range_findings(ctx, ranges, options)]
    if options.hold_failed_delta:
        findings += delta_findings(ctx.result, ctx.previous, checks)
    return findings
