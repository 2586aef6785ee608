"""Mindray BS series chemistry (and the BIOBASE BK-200) in HL7 mode: patient results by
their barcode, QC messages as controls, calibrations never as patient results, and how the
family is found. The messages are written here after the layout of Mindray's BS host
interface manual (HL7 v2.3.1); none is a copy of a real one."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import drivers
from drivers.hl7 import Hl7Driver
from drivers.mindray_bs_hl7 import MindrayBSHl7Driver
from drivers.mindray_hl7 import MindrayHl7Driver
from middleware.domain import Order
from middleware.engine.qc import QcGate
from middleware.engine.rules import load_rules
from middleware.hl7.segments import parse_message
from tests.conftest import ROOT


def _msh(kind: str, sender: str = "Mindray|BS-480", control_id: str = "41") -> str:
    return f"MSH|^~\\&|{sender}|||20261103101500||ORU^R01|{control_id}|P|2.3.1||||{kind}||ASCII|||"


# MSH-16 = 0: OBR-2 the barcode, OBR-3 the sample no.; OBX-3 the test no., OBX-4 its name.
PATIENT = "\r".join([
    _msh("0"),
    "PID|1|PN-3391||7|Petrova^Ana||19710402000000|F|||||||||||||||||||||",
    "OBR|1|B26110377|15|Mindray^BS-480|N|20261103095000|20261103101200||||||||serum|||||",
    "OBX|1|NM|12|TBil|17.4| umol/L |3.4-20.5|N|||F||17.4|20261103101210||lab1||",
    "OBX|2|NM|5|ALT|61|U/L|-|H|||F||61|||lab1||",
    "OBX|3|NM|31|NEWTEST|2.25|g/L|0~5|N|||F||2.25|||lab1||",
])  # fmt: skip

# A BS set up with the host's test codes, and no sender: MSH-16 = 0, OBX-3 the host's code
# where the test no. would be, OBX-4 the name; OBR-3 the sample no., which starts again
# at 1 every day.
HOST_CODES = "\r".join([
    "MSH|^~\\&|||||20261104081500||ORU^R01|7|P|2.3.1||||0||ASCII|||",
    "PID|3|||||||O|||",
    "OBR|3|B26110412|1|^|N|20261104080200|20261104075900|20261104075900||1^12||||"
    "20261104075900|Serum",
    "OBX|1|NM|GLU|Glucose oxidase|5.8|mmol/L|-|N|||F||5.8|20261104081200|||0|",
    "OBX|2|NM|Na|Sodium ISE|141|mmol/L|-|N|||F||141|20261104081210|||0|",
    "OBX|3|NM|LPA|Lipoprotein a|212|mg/L|-|H|||F||212|20261104081220|||0|",
])  # fmt: skip

# MSH-16 = 2: no PID, no OBX; the OBR is the result.
QC = "\r".join([
    _msh("2", control_id="42"),
    "OBR|1|12|TBil|Mindray^BS-480||20261103070512|||||||Chem control 2|CC-45782|"
    "20290630000000||H|95.000000|4.000000|97.3|umol/L|||||||",
])  # fmt: skip

# MSH-16 = 1: a calibration, its result in the OBR too.
CALIBRATION = "\r".join([
    _msh("1", control_id="43"),
    "OBR|1|12|TBil|Mindray^BS-480|||20261103065000||Linear|1.0213|2||CAL-MULTI|CL-7731|"
    "|||||0.4471|",
])  # fmt: skip


def test_a_patient_message_has_its_barcode_as_specimen_id() -> None:
    options = drivers.DriverOptions(test_map={"12": "BILT"})
    reading = MindrayBSHl7Driver(options, "bs-480").read(parse_message(PATIENT))
    assert reading.problems == [] and not reading.controls
    (specimen,) = reading.specimens
    # OBR-2, never the sample no. of OBR-3 (kept as where the sample stood).
    assert (specimen.specimen_id, specimen.position, specimen.specimen_type) == (
        "B26110377", "15", "serum",
    )  # fmt: skip
    # PID-2; PID-4 is the bed.
    assert [p.patient_id for p in reading.patients] == ["PN-3391"]
    assert {r.specimen_id for r in reading.results} == {"B26110377"}
    # The test no. is the analyser's code; the laboratory's from the map of numbers, else
    # from the test's name, else the number as it came.
    assert [(r.instrument_test_code, r.test_code) for r in reading.results] == [
        ("12", "BILT"), ("5", "ALT"), ("31", "31"),
    ]  # fmt: skip
    tbil, alt, other = reading.results
    assert (tbil.value.number, tbil.units, tbil.reference_range) == (
        Decimal("17.4"), "umol/L", "3.4-20.5",
    )  # fmt: skip
    assert tbil.completed_at == datetime(2026, 11, 3, 10, 12, 10)  # OBX-14
    assert alt.completed_at == datetime(2026, 11, 3, 10, 12)  # OBR-7
    assert (alt.reference_range, alt.abnormal_flags) == ("", ("H",))  # "-": no range
    assert other.reference_range == "0-5"  # as the BK-200 writes it


def test_without_a_barcode_a_patient_result_has_no_specimen_id_and_says_so() -> None:
    text = PATIENT.replace("OBR|1|B26110377|15|", "OBR|1||15|")
    reading = MindrayBSHl7Driver().read(parse_message(text))
    assert {r.specimen_id for r in reading.results} == {""}
    assert reading.problems == [
        "OBR 1, OBR-2: no barcode, so no specimen id; sample no. '15' (OBR-3) is not one"
    ]


def test_a_qc_message_is_a_control_result() -> None:
    options = drivers.DriverOptions(test_map={"12": "TBIL"})
    reading = MindrayBSHl7Driver(options, "bs-480").read(parse_message(QC))
    assert reading.problems == [] and not reading.results
    (control,) = reading.controls
    assert (control.control_material, control.lot, control.level) == (
        "Chem control 2", "CC-45782", "H",
    )  # fmt: skip
    result = control.result
    assert (result.instrument_test_code, result.test_code) == ("12", "TBIL")
    assert (result.value.number, result.units, result.status) == (Decimal("97.3"), "umol/L", "F")
    assert result.completed_at == datetime(2026, 11, 3, 7, 5, 12)  # OBR-6
    assert result.instrument == "bs-480" and result.specimen_id == "Chem control 2"
    # Found in the rules by its lot, as the engine looks it up.
    found = QcGate(load_rules(ROOT / "rules")).control_lot(control)
    assert found is not None
    assert (found[0].name, found[1].lot) == ("Chemistry control", "CC-45782")
    # Without a number, the name stands for the test.
    named = QC.replace("OBR|1|12|TBil|", "OBR|1||TBil|")
    (by_name,) = MindrayBSHl7Driver().read(parse_message(named)).controls
    assert (by_name.result.instrument_test_code, by_name.result.test_code) == ("TBil", "TBIL")


def test_a_qc_message_that_cannot_be_read_says_why() -> None:
    no_value = QC.replace("|97.3|umol/L|", "||umol/L|")
    reading = MindrayBSHl7Driver().read(parse_message(no_value))
    assert not reading.controls and not reading.results
    assert reading.problems == ["OBR 1, OBR-20: the control of 12 has no value; left out"]
    with_obx = QC + "\rOBX|1|NM|12|TBil|97.3|umol/L|-|N|||F"
    reading = MindrayBSHl7Driver().read(parse_message(with_obx))
    assert len(reading.controls) == 1 and not reading.results
    assert reading.problems == [
        "OBR 1: 1 OBX in a QC message (MSH-16 = 2), where the OBR is the result; not read"
    ]
    unnamed = QC.replace("|Chem control 2|CC-45782|", "|||")
    (control,) = MindrayBSHl7Driver().read(parse_message(unnamed)).controls
    assert control.control_material == "" and control.lot == ""


def test_a_calibration_is_never_a_patient_result() -> None:
    reading = MindrayBSHl7Driver().read(parse_message(CALIBRATION))
    assert (reading.results, reading.controls, reading.specimens) == ([], [], [])
    # A problem and nothing else: the store keeps the message in quarantine with it.
    assert reading.problems == [
        "MSH-16 = 1: a calibration result (12 TBil), not a patient's or a control's; not read"
    ]
    # Even with OBX, and found by sender as by layout.
    with_obx = CALIBRATION + "\rOBX|1|NM|12|TBil|0.4471||-||||F"
    assert drivers.identify_hl7(parse_message(with_obx)).driver is MindrayBSHl7Driver
    assert not MindrayBSHl7Driver().read(parse_message(with_obx)).results
    other = MindrayBSHl7Driver().read(
        parse_message(PATIENT.replace("||||0||ASCII", "||||7||ASCII"))
    )
    assert not other.results and other.problems == [
        "MSH-16 = '7': not a kind of BS-series message (0 patient results, 1 calibration, "
        "2 QC); not read"
    ]
    # MSH-16 as HL7 has it (accept acknowledgment), from a clone: patient results.
    standard = MindrayBSHl7Driver().read(
        parse_message(PATIENT.replace("||||0||ASCII", "||||AL||ASCII"))
    )
    assert standard.results and not standard.problems


def test_bs_senders_and_the_bs_layout_are_recognised() -> None:
    for sender in ("Mindray|BS-480", "Mindray BS-200E|", "BS-240|Mindray", "BIOBASE|BK-200"):
        message = parse_message(PATIENT.replace("Mindray|BS-480", sender, 1))
        found = drivers.identify_hl7(message)
        assert found.driver is MindrayBSHl7Driver, sender
        assert "names the Mindray BS series" in found.reason
    # No sender at all: the test no. in OBX-3 with its name in OBX-4; a QC message by its OBR.
    for text in (PATIENT, QC):
        anonymous = parse_message(text.replace("Mindray|BS-480", "|", 1))
        found = drivers.identify_hl7(anonymous)
        assert found.driver is MindrayBSHl7Driver and "layout of the Mindray BS" in found.reason
    # Haematology stays with the BC driver, a standard ORU with the base reading.
    haematology = "\r".join([
        "MSH|^~\\&|BC-5380|Mindray|||20261103101500||ORU^R01|7|P|2.3.1",
        "OBR|1||S-1|00001^Automated Count^99MRC",
        "OBX|1|NM|6690-2^WBC^LN||6.1|10*9/L|||||F",
    ])  # fmt: skip
    assert drivers.identify_hl7(parse_message(haematology)).driver is MindrayHl7Driver
    standard = "\r".join([
        "MSH|^~\\&|CHEM-ONE|LAB|||20261103101500||ORU^R01|8|P|2.5.1",
        "OBR|1|PL-1|FIL-1|CHEM",
        "OBX|1|NM|GLU^Glucose||5.4|mmol/L|||||F",
        "OBX|2|NM|2345^Glucose^LN|1|5.4|mmol/L|||||F",
    ])  # fmt: skip
    assert drivers.identify_hl7(parse_message(standard)).driver is Hl7Driver


def test_a_host_query_answer_names_tests_by_their_number() -> None:
    query = "\r".join([
        "MSH|^~\\&|Mindray|BS-480|||20261103083000||QRY^Q02|Q1|P|2.3.1||||||ASCII",
        "QRD|20261103083000|R|D|1|||RD|B26110377|OTH|||T",
        "QRF|BS-480|20261103083000|20261103083000|||RCT|COR|ALL",
    ])  # fmt: skip
    driver = MindrayBSHl7Driver(drivers.DriverOptions(test_map={"12": "TBIL"}))
    message = parse_message(query)
    reading = driver.read(message)
    assert reading.problems == []
    (asked,) = reading.queries
    held = [Order("B26110377", ("TBIL", "ALT"))]
    now = datetime(2026, 11, 3, 8, 30, tzinfo=UTC)
    _, dsr = driver.answer_query(message, asked, held, now, UTC)
    tests = [line for line in dsr.split("\r") if line.startswith(("DSP|29|", "DSP|30|"))]
    # The site's number where it mapped one; the name otherwise.
    assert tests == ["DSP|29||12^^^|||", "DSP|30||ALT^^^|||"]


def test_host_codes_in_obx3_are_known_by_msh16_and_read_by_barcode() -> None:
    found = drivers.identify_hl7(parse_message(HOST_CODES))
    assert found.driver is MindrayBSHl7Driver
    assert "MSH-16 = 0" in found.reason and "name in OBX-4" in found.reason
    # The same sample no. the next day, another tube: two specimens, never one.
    next_day = HOST_CODES.replace("B26110412", "B26110598").replace("20261104", "20261105")
    auto = drivers.get_hl7("auto")
    first, second = (auto.read(parse_message(text)) for text in (HOST_CODES, next_day))
    assert first.problems == [] and second.problems == []
    assert [(s.specimen_id, s.position) for s in first.specimens + second.specimens] == [
        ("B26110412", "1"), ("B26110598", "1"),
    ]  # fmt: skip
    # The host's code is the analyser's code and, where the driver maps it (GLU, Na), the
    # laboratory's; another passes through as it came.
    assert [(r.instrument_test_code, r.test_code) for r in first.results] == [
        ("GLU", "GLU"), ("Na", "NA"), ("LPA", "LPA"),
    ]  # fmt: skip
    # The layout with a calibration's MSH-16 is the BS's too, and not read as a patient's.
    calibration = parse_message(HOST_CODES.replace("||||0||ASCII", "||||1||ASCII"))
    assert drivers.identify_hl7(calibration).driver is MindrayBSHl7Driver
    assert not auto.read(calibration).results
    # A standard message's MSH-16 (AL) is no sign, nor is a digit there with OBX-4 a sub-id.
    for text in (
        HOST_CODES.replace("||||0||ASCII", "||||AL||ASCII"),
        HOST_CODES.replace("|Glucose oxidase|", "|1|"),
    ):
        assert drivers.identify_hl7(parse_message(text)).driver is Hl7Driver
