"""Sample acceptance: is the tube fit for the test? A failure rejects the sample (the
reason goes to the LIS) or accepts it with a comment that must travel with the result."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import timedelta
from decimal import Decimal

from middleware.engine.context import ResultContext
from middleware.engine.decision import Action, Finding
from middleware.engine.rules import Acceptance


def applies(criterion: Acceptance, test_code: str) -> bool:
    return "*" in criterion.tests or test_code in criterion.tests


def _failures(ctx: ResultContext, criterion: Acceptance) -> Iterator[tuple[str, str]]:
    specimen = ctx.specimen
    condition = ctx.condition
    kind = (specimen.specimen_type if specimen else "").strip().lower()
    allowed = {t.lower() for t in criterion.sample_types}
    if allowed and kind and kind not in allowed:
        yield "wrong-sample-type", f"sample type {kind!r}, expected {', '.join(sorted(allowed))}"
    container = (specimen.container if specimen else "").strip().lower()
    containers = {c.lower() for c in criterion.containers}
    if containers and container and container not in containers:
        yield (
            "wrong-container",
            f"container {container!r}, expected {', '.join(sorted(containers))}",
        )
    if (criterion.min_volume_ul is not None and condition.volume_ul is not None
            and condition.volume_ul < criterion.min_volume_ul):  # fmt: skip
        yield "insufficient-volume", f"{condition.volume_ul} uL, at least {criterion.min_volume_ul}"
    for code, limit, index in (
        ("haemolysed", criterion.max_haemolysis, condition.haemolysis),
        ("icteric", criterion.max_icterus, condition.icterus),
        ("lipaemic", criterion.max_lipaemia, condition.lipaemia),
    ):
        if limit is not None and index is not None and index > limit:
            yield code, f"{code} (index {index}, limit {limit})"
    if criterion.max_delay_minutes is not None and specimen is not None and specimen.collected_at:
        analysed = specimen.analysed_at or ctx.result.completed_at
        if analysed is not None:
            delay = analysed - specimen.collected_at
            if delay > timedelta(minutes=float(criterion.max_delay_minutes)):
                minutes = Decimal(delay.total_seconds()) / 60
                yield "delay-exceeded", (f"{minutes:.0f} min from collection to analysis, "
                                         f"limit {criterion.max_delay_minutes}")  # fmt: skip
    if (criterion.temperature and condition.temperature
            and condition.temperature != criterion.temperature):  # fmt: skip
        yield "temperature", f"kept {condition.temperature}, required {criterion.temperature}"


def acceptance_findings(ctx: ResultContext, criteria: Sequence[Acceptance]) -> list[Finding]:
    findings: list[Finding] = []
    result = ctx.result
    identified = bool(result.specimen_id) and bool(result.patient_id)
    required = any(c.require_identification and applies(c, result.test_code) for c in criteria)
    if not identified and required:
        missing = "specimen id" if not result.specimen_id else "patient identity"
        findings.append(Finding("unidentified", f"no {missing}: the sample is quarantined",
                                Action.REJECT))  # fmt: skip
    others = [p for p in ctx.other_patient_ids if p and p != result.patient_id]
    if others:
        findings.append(Finding(
            "specimen-patient-mismatch",
            f"specimen {result.specimen_id} was seen with patient {others[0]} before",
        ))  # fmt: skip
    for criterion in criteria:
        if not applies(criterion, result.test_code):
            continue
        for code, message in _failures(ctx, criterion):
            if criterion.on_failure == "reject":
                findings.append(Finding(code, f"{criterion.name}: {message}", Action.REJECT))
            else:
                comment = criterion.comment or f"{criterion.name}: {message}"
                findings.append(Finding(code, f"{criterion.name}: {message}", Action.RELEASE,
                                        comment=comment))  # fmt: skip
    return findings
