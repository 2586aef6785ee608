"""Results as HL7 v2.5.1 ORU^R01: byte-exact for a known result, escaped whatever the
analyser wrote, and valid by hl7apy's strict rules for every capture of the corpus."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hypothesis import given
from hypothesis import strategies as st

from middleware.domain import Comment, Measurement, Patient, ReagentUse, Result
from middleware.hl7.ack import read_answer
from middleware.hl7.render import render_capture
from middleware.hl7.results import Reported, escape, oru_r01, timestamp, value_type
from tests.conftest import CORPUS, ROOT

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
DONE = datetime(2026, 11, 30, 11, 5, tzinfo=UTC)


def glucose(value: str = "5.2", **more: object) -> Result:
    fields: dict[str, object] = {
        "specimen_id": "S1",
        "test_code": "GLU",
        "instrument_test_code": "GLU",
        "value": Measurement.parse(value),
        "units": "mmol/L",
        "reference_range": "3.9-5.8",
        "abnormal_flags": ("N",),
        "completed_at": DONE,
        "instrument": "chem-1",
        "patient_id": "PAT1",
    }
    return Result(**(fields | more))  # type: ignore[arg-type]


def strict(text: str) -> None:
    message = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    assert message.validate()


def test_a_released_result_byte_by_byte() -> None:
    reagent = ReagentUse("GLU reagent", "L42", expiry=date(2027, 1, 31))
    result = glucose(module="m2", reagents=(reagent,), operator="tech|1")
    text = oru_r01(
        "MW1",
        AT,
        "S1",
        Patient("PAT1", "F", date(1980, 1, 2)),
        [Reported(result, comments=("accepted with reservation: lipaemic",))],
    )
    assert text.split("\r") == [
        "MSH|^~\\&|LIS-MIDDLEWARE|LAB|LIS|LAB|20261130120000+0000||ORU^R01^ORU_R01|MW1|P|2.5.1",
        'PID|1||PAT1^^^^MR||""||19800102|F',
        "OBR|1||S1|chem-1^chem-1 results^L|||20261130110500+0000" + "|" * 18 + "F",
        "OBX|1|NM|GLU^^L||5.2|mmol/L|3.9-5.8|N|||F|||20261130110500+0000||tech\\F\\1||"
        "chem-1~chem-1/m2|20261130110500+0000",
        "NTE|1|L|accepted with reservation: lipaemic",
        "NTE|2|L|reagent GLU reagent lot L42 expiry 2027-01-31",
    ]
    strict(text)


def test_value_types_say_what_the_value_is() -> None:
    assert value_type(glucose("5.2")) == ("NM", "5.2")
    assert value_type(glucose("<15")) == ("SN", "<^15")
    assert value_type(glucose(">=2.5")) == ("SN", ">=^2.5")
    assert value_type(glucose("POS^weak")) == ("ST", "POS\\S\\weak")


def test_statuses_and_comments_travel() -> None:
    text = oru_r01(
        "MW2",
        AT,
        "S1",
        None,
        [
            Reported(glucose(comments=(Comment("haemolysis\r\nsuspected"),)), status="P"),
            Reported(glucose("<1", test_code="K"), status="C"),
        ],
    )
    segments = text.split("\r")
    assert segments[1] == 'PID|1||PAT1^^^^MR||""'
    assert segments[2].endswith("|C")  # the report is corrected when one result is
    assert segments[3].split("|")[11] == "P" and segments[5].split("|")[11] == "C"
    assert segments[4] == "NTE|1|L|haemolysis\\.br\\suspected"
    strict(text)


def test_a_specimen_without_patient_is_still_a_valid_message() -> None:
    text = oru_r01("MW3", AT, "S9", None, [Reported(glucose(patient_id=""))])
    assert text.split("\r")[1] == 'PID|1||UNKNOWN^^^^U||""'
    strict(text)
    with pytest.raises(ValueError, match="at least one result"):
        oru_r01("MW4", AT, "S9", None, [])


def test_timestamps_are_utc_with_their_offset() -> None:
    assert timestamp(None) == ""
    assert timestamp(datetime(2026, 1, 2, 3, 4, 5)) == "20260102030405+0000"


@given(st.text(max_size=60))
def test_escaped_text_stays_in_its_field_and_reads_back(text: str) -> None:
    escaped = escape(text)
    assert not set(escaped) & {"|", "^", "&", "~", "\r", "\n", "\x0b", "\x1c"}
    result = glucose(comments=(Comment(text),), units=text, reference_range=text)
    message = oru_r01("MW5", AT, text or "S", Patient(text or "P"), [Reported(result)])
    parsed = hl7.parse(message)
    assert [str(segment[0]) for segment in parsed] == ["MSH", "PID", "OBR", "OBX", "NTE"]
    obx = parsed.segment("OBX")
    assert str(obx[6]) == escaped


# --- the corpus ------------------------------------------------------------------------------

# ASTM captures, and the HL7 analysers send (read by their HL7 driver, sent on as ours).
CAPTURES = [
    capture
    for kind in ("astm", "hl7")
    if (CORPUS / kind).is_dir()
    for capture in sorted((CORPUS / kind).iterdir())
]


@pytest.mark.parametrize("version", ["2.5.1", "2.3.1"])
@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_every_capture_renders_to_messages_hl7apy_finds_valid(capture: Path, version: str) -> None:
    messages = render_capture(capture.read_bytes(), AT, version=version)
    for text in messages:
        strict(text)
        parsed = hl7.parse(text)
        assert str(parsed.segment("MSH")[12]) == version
        assert str(parsed.segment("MSH")[9]).startswith("ORU^R01")
    ids = [str(hl7.parse(m).segment("MSH")[10]) for m in messages]
    assert len(ids) == len(set(ids))


def test_the_render_command_prints_one_segment_per_line() -> None:
    capture = CORPUS / "astm" / "vitros-3600_raw_censored-values.bin"
    done = subprocess.run(
        [sys.executable, "-m", "middleware", "hl7", "render", str(capture)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("MSH|^~\\&|") and any(line.startswith("OBX|") for line in lines)
    assert "|SN|" in done.stdout and "<^15" in done.stdout
    older = subprocess.run(
        [sys.executable, "-m", "middleware", "hl7", "render", str(capture), "--version", "2.3.1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert older.returncode == 0 and "|ORU^R01|" in older.stdout and "|2.3.1" in older.stdout
    assert done.stderr.strip().endswith("message(s)")
    missing = subprocess.run(
        [sys.executable, "-m", "middleware", "hl7", "render", "/nonexistent"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert missing.returncode == 2 and "cannot read" in missing.stderr


# --- the LIS's answers ---------------------------------------------------------------------


def test_an_answer_says_its_code_the_message_it_names_and_why() -> None:
    answer = read_answer(
        "MSH|^~\\&|LIS|LAB|MW|LAB|20261130||ACK^R01^ACK|A1|P|2.5.1\r"
        "MSA|AE|MW123|unknown test\rERR|||207^Application internal error^HL70357|E"
    )
    assert (answer.code, answer.control_id, answer.accepted) == ("AE", "MW123", False)
    assert answer.text.startswith("unknown test; ERR|")
    assert read_answer("MSH|^~\\&|L|L|M|L|1||ACK|A2|P|2.5.1\nMSA|ca|MW9").accepted
    for text in ("", "MSH|^~\\&|x", "MSH|^~\\&|L|L|M|L|1||ACK|A|P|2.5.1\rMSA|ZZ|MW1"):
        with pytest.raises(ValueError):
            read_answer(text)


@given(st.text(max_size=300) | st.builds(lambda s: "MSH|^~\\&|" + s, st.text(max_size=300)))
def test_any_text_is_an_answer_or_a_clear_refusal(text: str) -> None:
    try:
        answer = read_answer(text)
    except ValueError as exc:
        assert str(exc)
    else:
        assert answer.code in ("AA", "AE", "AR", "CA", "CE", "CR")


def test_numbers_are_plain_digits_and_utf8_is_declared() -> None:
    result = glucose("1.2E+3", units="µmol/L")
    assert value_type(result) == ("NM", "1200")
    text = oru_r01("MW6", AT, "S1", None, [Reported(result)])
    assert text.split("\r")[0].endswith("|2.5.1||||||UNICODE UTF-8")
    strict(text)
