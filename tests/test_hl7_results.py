"""Results as HL7 v2.5.1 ORU^R01 and OUL^R22: byte-exact for a known result, escaped
whatever the analyser wrote, and valid by hl7apy's strict rules for every capture of the
corpus, in every type, version and configuration the LIS section allows."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
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
from middleware.hl7.results import (
    CatalogEntry,
    PerformingLab,
    Reported,
    Sender,
    escape,
    oru_r01,
    oul_r22,
    timestamp,
    value_type,
)
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
        "OBR|1||S1|chem-1^chem-1 results^L|||20261130110500+0000"
        + "|" * 15
        + "20261130120000+0000|||F",
        "OBX|1|NM|GLU^^L||5.2|mmol/L|3.9-5.8|N|||F|||20261130110500+0000||tech\\F\\1||"
        "chem-1~chem-1/m2|20261130110500+0000",
        "NTE|1|L|accepted with reservation: lipaemic",
        "NTE|2|L|reagent GLU reagent lot L42 expiry 2027-01-31",
    ]
    strict(text)


LAB = PerformingLab("Central lab", "1 rue Pasteur", "Lyon", "69007", "FRA", "D17", "Martin", "Anne")
CATALOG = {"GLU": CatalogEntry("Glucose", "2345-7", "LN", "HEXOKINASE")}


def test_an_oul_r22_byte_by_byte() -> None:
    reagent = ReagentUse("GLU reagent", "L42", expiry=date(2027, 1, 31), serial="C7")
    result = glucose(module="m2", reagents=(reagent,), comments=(Comment("slightly lipaemic"),))
    sender = Sender(message_type="OUL^R22", tests=CATALOG, performing_lab=LAB)
    text = oul_r22(
        "MW1",
        AT,
        "S1",
        Patient("PAT1", "F", date(1980, 1, 2)),
        [Reported(result, comments=("accepted with reservation: lipaemic",))],
        sender,
    )
    assert text.split("\r") == [
        "MSH|^~\\&|LIS-MIDDLEWARE|LAB|LIS|LAB|20261130120000+0000||OUL^R22^OUL_R22|MW1|P|2.5.1",
        'PID|1||PAT1^^^^MR||""||19800102|F',
        'SPM|1|S1||""',
        "SAC|||S1",
        "OBR|1||S1|chem-1^chem-1 results^L|||20261130110500+0000"
        + "|" * 15
        + "20261130120000+0000|||F",
        "OBX|1|NM|2345-7^Glucose^LN^GLU^^L||5.2|mmol/L|3.9-5.8|N|||F|||20261130110500+0000"
        "|||HEXOKINASE^^L|chem-1~chem-1/m2|20261130110500+0000||||Central lab"
        "|1 rue Pasteur^^Lyon^^69007^FRA|D17^Martin^Anne",
        "SID|GLU reagent^^L|L42|C7",
        "NTE|1|L|accepted with reservation: lipaemic",
        "NTE|2|L|slightly lipaemic",
        "NTE|3|L|reagent GLU reagent lot L42 expiry 2027-01-31",
    ]
    strict(text)
    with pytest.raises(ValueError, match=r"v2\.5\.1"):
        oul_r22("MW2", AT, "S1", None, [Reported(result)], Sender(version="2.3.1"))
    with pytest.raises(ValueError, match="at least one result"):
        oul_r22("MW2", AT, "S1", None, [], sender)


def test_reagent_lots_as_observations_of_their_own() -> None:
    lots = (ReagentUse("GLU R1", "L42"), ReagentUse("GLU R2", "M7", expiry=date(2027, 3, 1)))
    sender = Sender(reagent_lots="observation")
    text = oru_r01(
        "MW1",
        AT,
        "S1",
        None,
        [
            Reported(glucose(reagents=lots, comments=(Comment("lipaemic"),))),
            Reported(glucose("4.1", test_code="K")),
        ],
        sender,
    )
    segments = text.split("\r")[3:]
    assert [s.split("|")[:6] for s in segments] == [
        ["OBX", "1", "NM", "GLU^^L", "1", "5.2"],
        ["NTE", "1", "L", "lipaemic"],  # the result's note stays with the result
        ["OBX", "2", "ST", "REAGENT-LOT^reagent lot^L", "1.1", "GLU R1 lot L42"],
        ["OBX", "3", "ST", "REAGENT-LOT^reagent lot^L", "1.2", "GLU R2 lot M7 expiry 2027-03-01"],
        ["OBX", "4", "NM", "K^^L", "", "4.1"],
    ]
    assert segments[2].split("|")[11] == "F"
    strict(text)


def test_names_lis_codes_methods_and_the_performing_laboratory() -> None:
    catalog = CATALOG | {"K": CatalogEntry(name="Potassium")}
    sender = Sender(tests=catalog, performing_lab=LAB)
    text = oru_r01(
        "MW1", AT, "S1", None, [Reported(glucose()), Reported(glucose(test_code="K"))], sender
    )
    glu, k = (s.split("|") for s in text.split("\r")[3:5])
    assert glu[3] == "2345-7^Glucose^LN^GLU^^L" and glu[17] == "HEXOKINASE^^L"
    assert k[3] == "K^Potassium^L" and k[17] == ""
    assert glu[23:26] == ["Central lab", "1 rue Pasteur^^Lyon^^69007^FRA", "D17^Martin^Anne"]
    strict(text)
    # 2.3.1 has the method but no performing laboratory fields.
    old = oru_r01("MW2", AT, "S1", None, [Reported(glucose())], replace(sender, version="2.3.1"))
    obx = old.split("\r")[3].split("|")
    assert obx[17] == "HEXOKINASE^^L" and len(obx) == 18
    strict(old)


def test_text_beyond_ascii_is_declared_in_a_character_set_its_version_knows() -> None:
    unit = glucose(units="µmol/L")
    newer = oru_r01("MW4", AT, "S1", None, [Reported(unit)])
    assert newer.split("\r")[0].endswith("|2.5.1||||||UNICODE UTF-8")
    # 2.3.1's table 0211 has no UTF-8: 8859/1, which holds µ.
    older = oru_r01("MW5", AT, "S1", None, [Reported(unit)], Sender(version="2.3.1"))
    assert older.split("\r")[0].endswith("|2.3.1||||||8859/1")
    beyond = oru_r01("MW6", AT, "S1", None, [Reported(glucose(units="µg/m³ ≥"))],
                     Sender(version="2.3.1"))  # fmt: skip
    assert beyond.split("\r")[0].endswith("|2.3.1||||||UNICODE UTF-8")  # 8859/1 has no ≥


def test_value_types_say_what_the_value_is() -> None:
    assert value_type(glucose("5.2")) == ("NM", "5.2")
    assert value_type(glucose("<15")) == ("SN", "<^15")
    assert value_type(glucose(">=2.5")) == ("SN", ">=^2.5")
    assert value_type(glucose("POS^weak")) == ("ST", "POS\\S\\weak")
    # Longer than an ST's 199 characters, or on two lines: FT, whose \.br\ is a line.
    assert value_type(glucose("x" * 199))[0] == "ST"
    assert value_type(glucose("x" * 200))[0] == "FT"
    assert value_type(glucose("line 1\nline 2")) == ("FT", "line 1\\.br\\line 2")


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


SENDERS = {
    "oru-2.3.1": Sender(version="2.3.1"),
    # 2.5.1 with everything a configuration can add (hl7apy's validation is slow: the
    # plain 2.5.1 messages are these without some fields).
    "oru-2.5.1": Sender(reagent_lots="observation", tests=CATALOG, performing_lab=LAB),
    "oul-2.5.1": Sender(message_type="OUL^R22", tests=CATALOG, performing_lab=LAB),
}


@pytest.mark.parametrize("sender", SENDERS.values(), ids=SENDERS.keys())
@pytest.mark.parametrize("capture", CAPTURES, ids=[c.name for c in CAPTURES])
def test_every_capture_renders_to_messages_hl7apy_finds_valid(
    capture: Path, sender: Sender
) -> None:
    messages = render_capture(capture.read_bytes(), AT, sender=sender)
    for number, text in enumerate(messages):
        # hl7apy takes a second a message: the ASTM captures are checked whole, the long
        # HL7 logs (hundreds of alike messages, from one analyser) on their first three.
        if capture.parent.name == "astm" or number < 3:
            strict(text)
        parsed = hl7.parse(text)
        assert str(parsed.segment("MSH")[12]) == sender.version
        assert str(parsed.segment("MSH")[9]).startswith(sender.message_type)
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


def _render(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "middleware", "hl7", "render", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_render_takes_the_type_and_the_configurations_lis_section(tmp_path: Path) -> None:
    capture = str(CORPUS / "astm" / "vitros-3600_raw_censored-values.bin")
    oul = _render(capture, "--type", "OUL_R22")
    assert oul.returncode == 0, oul.stderr
    assert "|OUL^R22^OUL_R22|" in oul.stdout and "\nSPM|1|" in oul.stdout
    config = tmp_path / "config.yaml"
    config.write_text(
        "lis:\n  host: 127.0.0.1\n  port: 2575\n  message_type: OUL^R22\n"
        "  tests:\n    '950': {name: Calcium, code: 17861-6, coding_system: LN, method: ARSENAZO}\n"
        "  performing_laboratory: {name: Central lab, city: Lyon}\n"
    )
    configured = _render(capture, "--config", str(config))
    assert configured.returncode == 0, configured.stderr
    assert "|OUL^R22^OUL_R22|" in configured.stdout
    assert "|17861-6^Calcium^LN^950^^L|" in configured.stdout
    assert "|ARSENAZO^^L|" in configured.stdout and "|Central lab|^^Lyon" in configured.stdout
    # The command line wins over the configuration.
    assert (
        "|ORU^R01^ORU_R01|" in _render(capture, "--config", str(config), "--type", "ORU_R01").stdout
    )
    refused = _render(capture, "--config", str(config), "--version", "2.3.1")
    assert refused.returncode == 2 and "OUL^R22 is HL7 v2.5.1" in refused.stderr
    config.write_text("lis:\n  host: h\n  port: 1\n  message_type: OUL^R22\n  version: 2.3.1\n")
    bad = _render(capture, "--config", str(config))
    assert bad.returncode == 2 and "configuration refused" in bad.stderr
    assert "message_type OUL^R22 is HL7 v2.5.1" in bad.stderr


# --- the LIS's answers ---------------------------------------------------------------------


def test_an_answer_says_its_code_the_message_it_names_and_why() -> None:
    answer = read_answer(
        "MSH|^~\\&|LIS|LAB|MW|LAB|20261130||ACK^R01^ACK|A1|P|2.5.1\r"
        "MSA|AE|MW123|unknown test\rERR|||207^Application internal error^HL70357|E"
    )
    assert (answer.code, answer.control_id, answer.accepted) == ("AE", "MW123", False)
    assert answer.text.startswith("unknown test; ERR|")
    assert read_answer("MSH|^~\\&|L|L|M|L|1||ACK|A2|P|2.5.1\nMSA|ca|MW9").accepted
    # CR LF between segments, as many LISes write them, and a trailing one.
    crlf = read_answer("MSH|^~\\&|L|L|M|L|1||ACK|A3|P|2.5.1\r\nMSA|AA|MW10\r\n")
    assert (crlf.code, crlf.control_id) == ("AA", "MW10")
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
