"""Hostile input: a field that cannot be read is refused on its own, with a problem that
names it, and the rest of the message stands; nothing from outside raises.

Bytes go through the real decoder and drivers (latin-1, as the pipeline decodes them),
the capture reader and ``lis-middleware decode``; property tests feed them anything.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import drivers
from drivers.base import parse_date, parse_timestamp
from middleware.astm.capture import read_capture
from middleware.astm.frames import ACK, DC1, DC2, DC3, DC4, DLE, NAK, SOH, SYN, build_frame
from middleware.astm.records import decode_message, split_records
from middleware.cli import main
from middleware.decode import decode_capture
from middleware.domain import (
    MAX_DIGITS,
    MAX_EXPONENT,
    MIN_EXPONENT,
    ControlResult,
    InstrumentMessage,
    Measurement,
    Order,
    Result,
    Specimen,
)
from middleware.engine.autoverify import autoverify
from middleware.engine.context import ResultContext
from middleware.engine.rules import Autoverification, Range
from middleware.hl7.segments import Hl7Error, parse_message
from middleware.store import Store, ingest

TOKYO = ZoneInfo("Asia/Tokyo")  # east of UTC: year 1 cannot go back to UTC
NEW_YORK = ZoneInfo("America/New_York")  # west of UTC: year 9999 cannot go forward


def message_bytes(p8: bytes = b"", o7: bytes = b"", o8: bytes = b"", o18: bytes = b"",
                  r2: bytes = b"1", r4: bytes = b"5.4", r13: bytes = b"") -> bytes:  # fmt: skip
    order = [b"O", b"1", b"S1", b"", b"^^^GLU", b"R", o7, o8, *[b""] * 9, o18]
    result = [b"R", r2, b"^^^GLU", r4, b"mmol/L", b"", b"N", b"", b"F", b"", b"", b"", r13]
    records = [
        b"H|\\^&|||analyser",
        b"P|1|PID1|||||" + p8 + b"|M",
        b"|".join(order),
        b"|".join(result),
        b"L|1|N",
    ]
    return b"\r".join(records) + b"\r"


def read(raw: bytes, driver: str = "generic") -> InstrumentMessage:
    """As the pipeline reads a message: latin-1 text, records, the driver."""
    lines = split_records(raw.decode("latin-1"))
    return drivers.get(driver).read(decode_message(lines).records)


def the_result(message: InstrumentMessage) -> Result:
    [result] = message.results
    assert result.value.number == Decimal("5.4")
    return result


# --- times --------------------------------------------------------------------------------

# Latin-1 bytes 0xB2, 0xB3 and 0xB9 are '²', '³' and '¹': str.isdigit() says yes to them.
SUPERSCRIPT_HOUR = b"20230101\xb22"
SUPERSCRIPT_DATE = b"2023\xb9\xb20101"


@pytest.mark.parametrize("bad", [SUPERSCRIPT_HOUR, SUPERSCRIPT_DATE, b"20231301", b"2023"])
def test_result_time_that_is_not_one_is_left_out_with_a_problem(bad: bytes) -> None:
    message = read(message_bytes(r13=bad))
    assert the_result(message).completed_at is None
    shown = bad.decode("latin-1")
    assert message.problems == [f"result 1, R.13: {shown!r} is not a date and time; left out"]


@pytest.mark.parametrize(
    ("field", "where", "moment"),
    [
        ("o7", "order 1, O.7", lambda m: m.orders[0].ordered_at),
        ("o8", "order 1, O.8", lambda m: m.specimens[0].collected_at),
        ("o18", "order 1, O.18", lambda m: m.specimens[0].received_at),
    ],
)
def test_order_times_that_are_not_times_are_left_out(
    field: str, where: str, moment: Callable[[InstrumentMessage], datetime | None]
) -> None:
    message = read(message_bytes(**{field: SUPERSCRIPT_HOUR}))
    the_result(message)
    assert moment(message) is None
    assert message.problems == [f"{where}: '20230101²2' is not a date and time; left out"]


def test_birth_date_that_is_not_a_date_is_left_out_and_the_patient_kept() -> None:
    message = read(message_bytes(p8=b"1980\xb30101"))
    [patient] = message.patients
    assert patient.patient_id == "PID1" and patient.sex == "M" and patient.birth_date is None
    assert message.problems == ["patient 1, P.8: '1980³0101' is not a date; left out"]
    the_result(message)


def test_good_times_are_read_and_raise_no_problem() -> None:
    message = read(message_bytes(p8=b"19800101", o7=b"20230101083000", r13=b"202301011200"))
    assert the_result(message).completed_at == datetime(2023, 1, 1, 12, 0)
    assert message.patients[0].birth_date == datetime(1980, 1, 1).date()
    assert message.orders[0].ordered_at == datetime(2023, 1, 1, 8, 30)
    assert message.problems == []


@pytest.mark.parametrize("r4", [b"", b"   ", b"^"])
def test_a_final_result_without_a_value_is_kept_with_a_problem(r4: bytes) -> None:
    # A Dimension sends R.9 F and an error comment when it could not measure.
    message = read(message_bytes(r4=r4))
    [result] = message.results
    assert result.value.text.strip() == "" and result.status == "F"
    assert message.problems == ["result 1, R.4: test GLU has no value; kept without one"]
    ctx = ResultContext(result, datetime(2026, 1, 1, tzinfo=UTC))
    no_ranges = [f.code for f in autoverify(ctx, [], [], Autoverification())]
    assert no_ranges == ["no-value"]


def test_a_test_not_done_without_a_value_is_no_problem() -> None:
    raw = message_bytes(r4=b"").replace(b"|N||F|", b"|N||X|")
    message = read(raw)
    assert message.results[0].status == "X"
    assert message.problems == []


@pytest.mark.parametrize(
    ("r6", "shown"),
    [
        (b"3.5 to 5.1", "3.5 to 5.1"),  # as E1394 writes it
        (b"0.000^4.00", "0.000-4.00"),  # as many analysers write it
        (b"^4.00", "<=4.00"),
        (b"0.5^", ">=0.5"),
        (b"10 to 20^normal", "10 to 20"),  # a range's name is not its upper limit
        (b"^", ""),
    ],
)
def test_a_reference_range_in_components_keeps_both_limits(r6: bytes, shown: str) -> None:
    raw = message_bytes().replace(b"|mmol/L||N|", b"|mmol/L|" + r6 + b"|N|")
    assert the_result(read(raw)).reference_range == shown


def test_other_scripts_digits_are_not_a_date() -> None:
    assert parse_timestamp("٢٠٢٣٠١٠١") is None  # Arabic-Indic digits
    assert parse_date("２０２３０１０１") is None  # fullwidth digits
    assert parse_timestamp(" 20230101 ") == datetime(2023, 1, 1)


def test_a_collection_time_not_to_the_minute_is_left_out_and_said() -> None:
    """Read as midnight, a collection on the day only would have a potassium analysed at
    17:05 rejected as 17 hours late."""
    day_only = read(message_bytes(o8=b"20261203"))
    [specimen] = day_only.specimens
    assert specimen.collected_at is None
    assert any("O.8: '20261203' gives the collection to the day or hour only" in p
               for p in day_only.problems), day_only.problems  # fmt: skip
    [specimen] = read(message_bytes(o8=b"202612031450")).specimens
    assert specimen.collected_at == datetime(2026, 12, 3, 14, 50)


def test_a_time_is_read_whole_or_refused_never_cut_short() -> None:
    """A +0000 cut off read the time as the analyser's wall clock, an hour or two wrong
    in Europe; an odd digit was dropped. An offset is honoured, a fraction of a second
    dropped, anything else refused (the driver then says so and leaves the time out)."""
    assert parse_timestamp("20261203003000+0000") == datetime(2026, 12, 3, 0, 30, tzinfo=UTC)
    assert parse_timestamp("20261203003000-0500") == datetime(2026, 12, 3, 5, 30, tzinfo=UTC)
    assert parse_timestamp("20261203003000.250") == datetime(2026, 12, 3, 0, 30)
    assert parse_timestamp("2026120300") == datetime(2026, 12, 3, 0, 0)
    for odd in ("202612031", "2026120300305", "20261203003000123", "20261203+01"):
        assert parse_timestamp(odd) is None, odd


@pytest.mark.parametrize(
    ("stamp", "zone", "shown"),
    [
        (b"00010101000000", TOKYO, "0001-01-01 00:00:00 in Asia/Tokyo"),
        (b"99991231235959", NEW_YORK, "9999-12-31 23:59:59 in America/New_York"),
    ],
)
def test_time_that_cannot_be_given_in_utc_is_left_out(stamp: bytes, zone: ZoneInfo,
                                                      shown: str) -> None:  # fmt: skip
    raw = message_bytes(o7=stamp, o8=stamp, o18=stamp, r13=stamp)
    message = read(raw).in_timezone(zone)
    result = the_result(message)
    assert result.completed_at is None
    specimen, order = message.specimens[0], message.orders[0]
    assert specimen.collected_at is None and specimen.received_at is None
    assert order.ordered_at is None
    assert message.problems == [
        f"{what} {shown} cannot be given in UTC; left out"
        for what in (
            # The results first: a specimen's times are placed before them.
            "result GLU of S1: completed",
            "specimen S1: collected",
            "specimen S1: received",
            "order of S1: ordered",
        )
    ]


def test_controls_times_are_placed_in_utc_or_left_out() -> None:
    result = Result("QC1", "GLU", "GLU", Measurement.parse("5"), completed_at=datetime(1, 1, 1))
    message = InstrumentMessage("an1", controls=[ControlResult(result, "QC")])
    moved = message.in_timezone(TOKYO)
    assert moved.controls[0].result.completed_at is None
    assert moved.problems == [
        "result GLU of QC1: completed 0001-01-01 00:00:00 in Asia/Tokyo cannot be given in UTC; "
        "left out"
    ]
    assert message.problems == []  # the message read is left as it was


PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    ("wall_clock", "received", "placed"),
    [
        # 25 October 2026: 02:30 comes twice in Paris, at 00:30 and at 01:30 UTC.
        ("2026-10-25 02:30", "2026-10-25 01:35", "2026-10-25 01:30"),
        ("2026-10-25 02:30", "2026-10-25 00:35", "2026-10-25 00:30"),
        # An analyser's clock a few minutes ahead of ours still reads as the second hour.
        ("2026-10-25 02:30", "2026-10-25 01:20", "2026-10-25 01:30"),
        # Sent hours later, the later reading is taken.
        ("2026-10-25 02:30", "2026-10-25 09:00", "2026-10-25 01:30"),
        ("2026-10-25 02:30", None, "2026-10-25 00:30"),
        # 29 March: 02:30 never comes; read as before the clocks went forward.
        ("2026-03-29 02:30", "2026-03-29 01:35", "2026-03-29 01:30"),
        ("2026-10-24 02:30", "2026-10-25 01:35", "2026-10-24 00:30"),
    ],
)
def test_an_hour_that_comes_twice_is_read_by_when_the_message_came(
    wall_clock: str, received: str | None, placed: str
) -> None:
    measured = datetime.fromisoformat(wall_clock)
    result = Result("S1", "GLU", "GLU", Measurement.parse("5"), completed_at=measured)
    message = InstrumentMessage("an1", results=[result])
    came = datetime.fromisoformat(received).replace(tzinfo=UTC) if received else None
    moved = message.in_timezone(PARIS, came)
    assert moved.results[0].completed_at == datetime.fromisoformat(placed).replace(tzinfo=UTC)
    assert moved.problems == []


@pytest.mark.parametrize(
    ("collected", "completed", "received", "placed"),
    [
        # Both in the first 02:xx (00:20 and 00:40 UTC), sent at 02:05 of the second
        # (01:05 UTC): 02:20 of the second would be 01:20, after the result. The first.
        ("02:20", "02:40", "01:05", ("00:20", "00:40")),
        # Both in the second hour, sent five minutes later: both the second.
        ("02:10", "02:40", "01:45", ("01:10", "01:40")),
        # Collected in the first hour, measured in the second: each its own.
        ("02:50", "02:10", "01:15", ("00:50", "01:10")),
    ],
)
def test_a_specimens_times_in_the_hour_that_comes_twice_come_before_its_results(
    collected: str, completed: str, received: str, placed: tuple[str, str]
) -> None:
    def at(clock: str, zone: ZoneInfo | None = None) -> datetime:
        hour, minute = map(int, clock.split(":"))
        return datetime(2026, 10, 25, hour, minute, tzinfo=zone)

    message = InstrumentMessage(
        "an1",
        specimens=[Specimen("S1", collected_at=at(collected), received_at=at(collected))],
        results=[Result("S1", "GLU", "GLU", Measurement.parse("5"), completed_at=at(completed))],
        orders=[Order("S1", ("GLU",), ordered_at=at(collected))],
    )
    moved = message.in_timezone(PARIS, at(received, UTC))
    (specimen,), (result,), (order,) = moved.specimens, moved.results, moved.orders
    assert (specimen.collected_at, result.completed_at) == (at(placed[0], UTC), at(placed[1], UTC))
    assert specimen.received_at == order.ordered_at == specimen.collected_at
    assert moved.problems == []


def test_specimens_without_an_id_bound_no_time() -> None:
    # Which unnamed specimen a result belongs to is not known: its time bounds none.
    at, measured = datetime(2026, 10, 25, 2, 50), datetime(2026, 10, 25, 2, 10)
    message = InstrumentMessage(
        "an1",
        specimens=[Specimen("", collected_at=at), Specimen("", collected_at=at)],
        results=[Result("", "GLU", "GLU", Measurement.parse("5"), completed_at=measured)],
    )
    moved = message.in_timezone(PARIS, datetime(2026, 10, 25, 1, 50, tzinfo=UTC))
    assert moved.results[0].completed_at == datetime(2026, 10, 25, 1, 10, tzinfo=UTC)
    assert [s.collected_at for s in moved.specimens] == [
        datetime(2026, 10, 25, 1, 50, tzinfo=UTC)
    ] * 2


def test_field_problems_alone_do_not_quarantine_the_message(tmp_path: Path) -> None:
    raw = message_bytes(r13=SUPERSCRIPT_HOUR, o7=b"99991231235959")
    reading = read(raw).in_timezone(NEW_YORK)
    assert len(reading.problems) == 2
    text = raw.decode("latin-1").rstrip("\r")
    delivery = ingest.Delivery("an1/test", "an1", raw, datetime(2026, 1, 1, tzinfo=UTC), text,
                             record_count=5, reading=reading)  # fmt: skip
    store = Store(f"sqlite:///{tmp_path / 'middleware.db'}")
    try:
        stored = asyncio.run(store.write(lambda conn: ingest.store_delivery(conn, delivery)))
    finally:
        store.close()
    assert not stored.quarantined and stored.results == 1


# --- sequence numbers and values ------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"99999999999999999999", b"\xb9", b"1_0"])
def test_sequence_number_that_is_not_one_is_refused(bad: bytes) -> None:
    message = read(message_bytes(r2=bad))
    assert the_result(message).sequence == 0
    assert message.problems == [
        f"R.2: {bad.decode('latin-1')!r} is not a sequence number; left out"
    ]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("1e999999999", "is out of range"),
        ("9E-999999", "is out of range"),
        ("-1e16", "is out of range"),
        ("1e-25", "is out of range"),
        ("1e99999999999999999999", "is out of range"),
        ("<1e999999999", "is out of range"),
        ("1234567890123456789012345", f"has more than {MAX_DIGITS} significant digits"),
    ],
)
def test_number_beyond_the_bounds_is_kept_as_text_with_a_problem(text: str, why: str) -> None:
    message = read(message_bytes(r4=text.encode()))
    [result] = message.results
    assert result.value == Measurement(text)
    [problem] = message.problems
    assert problem.startswith(f"result 1, R.4: {text!r} {why}")
    assert problem.endswith("kept as text only")


@pytest.mark.parametrize("text", ["NaN", "sNaN", "-Infinity", "Infinity", "inf", "1_0", "١٢"])
def test_nan_infinity_and_other_digits_are_text(text: str) -> None:
    assert Measurement.parse(text) == Measurement(text)


@pytest.mark.parametrize("text", ["1e15", "-9.99999999999999e15", "1e-24", "0.000", "<1E+3"])
def test_numbers_within_the_bounds_are_numbers(text: str) -> None:
    value = Measurement.parse(text)
    assert value.number == Decimal(text.lstrip("<"))


def test_the_engine_sees_a_refused_number_as_text_and_answers_at_once() -> None:
    ranges = [Range(test="GLU", low=Decimal("3.9"), high=Decimal("6.1"),
                    critical_high=Decimal(25), measurable_high=Decimal(40))]  # fmt: skip
    options = Autoverification(hold_outside_measurable_range=True)
    start = time.monotonic()
    for text in ("1e999999999", "9E-999999", ">1e999999999"):
        [result] = read(message_bytes(r4=text.encode())).results
        findings = autoverify(ResultContext(result, datetime(2026, 1, 1)), ranges, [], options)
        assert [f.code for f in findings] == ["non-numeric"]
    assert time.monotonic() - start < 1


# --- captures -----------------------------------------------------------------------------

LINK_CONTROLS = [ACK, NAK, DLE, DC1, DC2, DC3, DC4, SYN, SOH]


@pytest.mark.parametrize("control", LINK_CONTROLS)
def test_frame_of_a_link_control_character_is_reported(control: int) -> None:
    capture = read_capture(b"\x02" + bytes((control,)) + b"\x03")
    [error] = capture.errors
    assert error.kind == "frame_number" and error.offset == 0
    assert capture.messages[0].lines == [chr(control)]


@pytest.mark.parametrize("control", LINK_CONTROLS)
def test_control_character_inside_a_frame_is_reported_and_the_text_kept(control: int) -> None:
    record = b"R|1|^^^GLU|5.4" + bytes((control,)) + b"|mmol/L\r"
    data = (b"\x05" + build_frame(1, b"H|\\^&\r", True) + build_frame(2, record, True)
            + build_frame(3, b"L|1|N\r", True) + b"\x04")  # fmt: skip
    capture = read_capture(data)
    [error] = capture.errors
    assert error.kind == "control_character" and error.frame == 2
    assert f"control character 0x{control:02X}" in error.detail
    [message] = capture.messages
    assert message.lines[1] == record[:-1].decode("latin-1")


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"\x02\x06\x03", "frame_number"),
        (b"\x05" + build_frame(1, b"H|\\^&\x15\r", True) + b"\x04", "control_character"),
        (message_bytes(r13=SUPERSCRIPT_HOUR, r4=b"1e999999999"), "reading"),
    ],
)
def test_decode_command_reports_hostile_input_without_a_traceback(
    data: bytes, kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "capture.bin"
    path.write_bytes(data)
    status = main(["decode", str(path)])
    out = capsys.readouterr()
    assert status == 1 and "Traceback" not in out.err
    report = json.loads(out.out)
    assert kind in [e["kind"] for m in report["messages"] for e in m["errors"]]


def test_decode_names_the_refused_fields() -> None:
    report = decode_capture(message_bytes(r13=SUPERSCRIPT_HOUR, r4=b"1e999999999"))
    [message] = report.messages
    [row] = message["results"]
    assert row["value"] == "1e999999999" and row["numeric_value"] is None
    assert row["completed_at"] is None
    details = [e["detail"] for e in message["errors"] if e["kind"] == "reading"]
    assert details[0].startswith("result 1, R.4: '1e999999999' is out of range")
    assert details[1] == "result 1, R.13: '20230101²2' is not a date and time; left out"


# --- properties ---------------------------------------------------------------------------

# Digits of every kind (all of them str.isdigit()), and what sits around them in a date or
# a number.
DIGITS = st.text(st.sampled_from("0123456789²³¹٢５"), min_size=8, max_size=14)
DIGITISH = st.text(st.sampled_from("0123456789²³¹٢５ +-.,eE<>"), max_size=40)
ANY_TEXT = st.one_of(st.text(max_size=40), DIGITS, DIGITISH)
# The ends of the calendar, where a zone's offset leaves what a datetime can hold.
MOMENTS = st.one_of(
    st.datetimes(),
    st.datetimes(max_value=datetime(1, 1, 2)),
    st.datetimes(min_value=datetime(9999, 12, 30)),
)


@settings(max_examples=150)
@given(ANY_TEXT)
def test_parse_timestamp_never_raises(text: str) -> None:
    stamp = parse_timestamp(text)
    # A time with an offset is given in UTC, which may be another day.
    assert stamp is None or stamp.tzinfo is not None or stamp.strftime("%Y%m%d") == text.strip()[:8]
    assert parse_date(text) == (stamp.date() if stamp else None)


@settings(max_examples=150)
@given(
    st.one_of(
        ANY_TEXT, st.from_regex(r"\A[<>]?[-+]?[0-9]{0,30}\.?[0-9]{0,30}([eE][-+]?[0-9]{1,12})?\Z")
    )
)
def test_a_value_is_a_bounded_finite_number_or_text(text: str) -> None:
    value, problem = Measurement.read(text)
    assert value.text == text
    number = value.number
    if number is None:
        return
    assert problem == "" and number.is_finite()
    assert len(number.as_tuple().digits) <= MAX_DIGITS
    assert MIN_EXPONENT <= number.adjusted() <= MAX_EXPONENT


@settings(max_examples=100)
@given(MOMENTS, st.sampled_from([UTC, TOKYO, NEW_YORK, ZoneInfo("Pacific/Kiritimati")]))
def test_in_timezone_never_raises(moment: datetime, zone: ZoneInfo) -> None:
    message = InstrumentMessage(
        "an1",
        specimens=[Specimen("S1", collected_at=moment)],
        orders=[Order("S1", ("GLU",), ordered_at=moment)],
    )
    moved = message.in_timezone(zone, datetime(2026, 12, 2, 9, 30, tzinfo=UTC))
    placed = moved.specimens[0].collected_at
    assert (placed is None) == bool(moved.problems)
    assert placed is None or placed.tzinfo is UTC


FIELD = st.one_of(
    st.text(st.characters(max_codepoint=0xFF, blacklist_characters="\r\n"), max_size=20),
    st.text(st.sampled_from("0123456789²³¹^\\|&.eE-"), max_size=20),
    st.text(st.sampled_from("0123456789²³¹"), min_size=8, max_size=14),
    st.sampled_from(["00010101", "99991231235959", "1e999999999", "9E-999999", "sNaN"]),
)


ASTM_DRIVERS = [n for n in drivers.names() if drivers.protocol(n) == "astm"]
HL7_DRIVERS = [n for n in drivers.names() if drivers.protocol(n) == "hl7"]


@settings(max_examples=100)
@given(st.sampled_from(ASTM_DRIVERS), st.lists(FIELD, min_size=5, max_size=40))
def test_drivers_read_any_fields_without_raising(name: str, fields: list[str]) -> None:
    lines = [
        "H|\\^&|||" + fields[0] + "|||||||" + fields[1] + "|LIS2-A2|" + fields[2],
        "P|1|" + "|".join(fields[3:12]),
        "O|1|" + "|".join(fields[4:30]),
        "R|" + "|".join(fields[2:16]),
        "C|1|I|" + "|".join(fields[5:8]),
        "M|1|" + "|".join(fields[1:8]),
        "Q|1|" + "|".join(fields[3:16]),
        "L|1|N",
    ]
    message = drivers.get(name).read(decode_message(lines).records)
    message.in_timezone(TOKYO)


HL7_FIELD = st.one_of(
    FIELD,
    st.text(st.sampled_from("0123456789^~&\\.+-QPXNM"), max_size=20),
    st.sampled_from(["NM", "SN", "CWE", "IS", "Q", "X", "T", "<^5", "^1^:^128", "20260105+99"]),
)


@settings(max_examples=100)
@given(st.sampled_from(["auto", *HL7_DRIVERS]), st.lists(HL7_FIELD, min_size=5, max_size=40))
def test_hl7_drivers_read_any_fields_without_raising(name: str, fields: list[str]) -> None:
    text = "\r".join([
        "MSH|^~\\&|" + "|".join(fields[0:6]) + "|ORU^R01|" + "|".join(fields[6:12]),
        "PID|" + "|".join(fields[1:10]),
        "SPM|" + "|".join(fields[2:20]),
        "SAC|" + "|".join(fields[3:6]),
        "OBR|" + "|".join(fields[4:14]),
        "NTE|" + "|".join(fields[1:4]),
        "OBX|" + "|".join(fields[0:22]),
        "NTE|" + "|".join(fields[2:5]),
        "SID|" + "|".join(fields[3:7]),
        "OBX|" + "|".join(fields[5:25]),
    ]).replace("\n", " ")  # fmt: skip
    try:
        parsed = parse_message(text)
    except Hl7Error:
        return
    drivers.get_hl7(name).read(parsed).in_timezone(TOKYO)


CAPTURE_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(
        st.sampled_from([b"\x02", b"\x03", b"\x17", b"\x04", b"\x05", b"\x06", b"\x15", b"\x10",
                         b"\x01", b"\r", b"\n", b"1", b"H|\\^&", b"R|1|^^^A|", b"L|1", b"<STX>",
                         b"[ETX]", b"^B", b"\xb2", b"FF", b"00"]),
        max_size=40,
    ).map(b"".join),
)  # fmt: skip


@settings(max_examples=150)
@given(CAPTURE_BYTES)
def test_capture_reader_and_decode_never_raise(data: bytes) -> None:
    read_capture(data)
    report = decode_capture(data)
    json.dumps(report.as_dict())
