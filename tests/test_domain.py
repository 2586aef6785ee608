"""Domain objects: measurements as written, and the analysers' clock."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from middleware.domain import ControlResult, InstrumentMessage, Measurement, Result, Specimen


@pytest.mark.parametrize(
    ("text", "number", "censor"),
    [
        ("5.4", Decimal("5.4"), ""),
        ("7,41", Decimal("7.41"), ""),  # decimal comma
        ("<15", Decimal("15"), "<"),
        (">8", Decimal("8"), ">"),
        ("<=0.5", Decimal("0.5"), "<="),
        ("-1.2e3", Decimal("-1.2e3"), ""),
        ("No Result", None, ""),
        ("3+^3+^45", None, ""),
        ("", None, ""),
    ],
)
def test_measurement_keeps_text_number_and_censor(
    text: str, number: Decimal | None, censor: str
) -> None:
    value = Measurement.parse(text)
    assert (value.text, value.number, value.censor) == (text, number, censor)
    assert value.is_numeric == (number is not None and not censor)


def test_analyser_times_are_read_in_the_sites_zone_and_kept_in_utc() -> None:
    local = datetime(2026, 7, 1, 10, 30)  # summer time in Paris: UTC+2
    result = Result("S1", "GLU", "GLU", Measurement.parse("5"), completed_at=local)
    message = InstrumentMessage(
        "an1",
        specimens=[Specimen("S1", collected_at=local)],
        results=[result],
        controls=[ControlResult(result, "QC")],
    )
    moved = message.in_timezone(ZoneInfo("Europe/Paris"))
    expected = datetime(2026, 7, 1, 8, 30, tzinfo=UTC)
    assert moved.results[0].completed_at == expected
    assert moved.controls[0].result.completed_at == expected
    assert moved.specimens[0].collected_at == expected
    assert message.results[0].completed_at == local  # the original is left as it was
    already = InstrumentMessage(
        "an1", results=[Result("S1", "GLU", "GLU", Measurement.parse("5"), completed_at=expected)]
    )
    assert already.in_timezone(ZoneInfo("Asia/Tokyo")).results[0].completed_at == expected
