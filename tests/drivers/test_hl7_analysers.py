"""Analysers that speak HL7: the base reading of ORU^R01/OUL, the Mindray family (read from a
real Erba ELite 580 capture, and messages written after its layout), detection, and
``decode`` on HL7 captures."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import drivers
from drivers.hl7 import Hl7AutoDriver, Hl7Driver, parse_hl7_time
from drivers.mindray_hl7 import MindrayHl7Driver
from middleware.decode import decode_capture
from middleware.domain import Order
from middleware.hl7.capture import read_hl7_capture
from middleware.hl7.segments import parse_message
from tests.conftest import CORPUS, ROOT

ELITE = CORPUS / "hl7" / "erba-elite580_log_hl7-over-mllp.txt"
CITM = CORPUS / "hl7" / "roche-citm_oul-r21_reagent-lots.hl7"

GENERIC = "\r".join([
    "MSH|^~\\&|CHEM-ONE|LAB|||20260105101500||ORU^R01^ORU_R01|C-1|P|2.5.1",
    "PID|1||P-77^^^HOSP||Doe^Jane||19800214|F",
    "SPM|1|SMP-9&LAB^FIL-1||SER^Serum|||||||P||||||20260105091000+0100",
    "OBR|1|PL-1|FIL-1|CHEM^Chemistry|||20260105100000",
    "NTE|1||sample slightly turbid",
    "OBX|1|NM|GLU^Glucose^L||5.4|mmol/L|3.9-6.1|N|||F|||20260105100500||tech1||ANA-1^module 2|"
    "20260105100700+0100",
    "NTE|1||repeated once",
    "SID|GLU^Glucose reagent|LOT-42|CONT-7",
    "OBX|2|SN|CRP^C-reactive protein^L||<^5|mg/L|0-5||||F",
    "OBX|3|CWE|HBSAG^HBs antigen^L||NEG^Negative^L||||||F",
    "OBX|4|ST|NOTE^Remark^L||haemolysed||||||F",
    "OBX|5|NM|K^Potassium^L||||||||F",
    "OBX|6|NM|NA^Sodium^L||n/a|mmol/L|||||F",
    "OBX|7|NM|CL^Chloride^L||||||||X",
])  # fmt: skip


def test_a_collection_to_the_day_only_is_left_out_and_said() -> None:
    text = GENERIC.replace("20260105091000+0100", "20260105")
    reading = Hl7Driver(instrument="chem").read(parse_message(text))
    assert [s.collected_at for s in reading.specimens] == [None]
    assert any("'20260105' gives the collection to the day or hour only" in p
               for p in reading.problems), reading.problems  # fmt: skip


def test_the_base_reading_of_an_oru() -> None:
    reading = Hl7Driver(instrument="chem").read(parse_message(GENERIC))
    assert reading.sender == "CHEM-ONE LAB" and reading.driver == "hl7"
    assert [(p.patient_id, p.sex, str(p.birth_date)) for p in reading.patients] == [
        ("P-77", "F", "1980-02-14")
    ]
    (specimen,) = reading.specimens
    # SPM-2's first subcomponent; its collection time given with an offset, in UTC.
    assert specimen.specimen_id == "SMP-9"
    assert specimen.specimen_type == "Serum"
    assert specimen.collected_at == datetime(2026, 1, 5, 8, 10, tzinfo=UTC)
    assert [c.text for c in reading.comments] == ["sample slightly turbid"]
    by_code = {r.test_code: r for r in reading.results}
    glu = by_code["GLU"]
    assert glu.value.number == Decimal("5.4") and glu.units == "mmol/L"
    assert glu.reference_range == "3.9-6.1" and glu.abnormal_flags == ("N",)
    assert glu.status == "F" and glu.operator == "tech1" and glu.module == "ANA-1"
    # OBX-19 (analysis time) before OBX-14.
    assert glu.completed_at == datetime(2026, 1, 5, 9, 7, tzinfo=UTC)
    assert [c.text for c in glu.comments] == ["repeated once"]
    assert [(u.reagent, u.lot, u.serial) for u in glu.reagents] == [
        ("Glucose reagent", "LOT-42", "CONT-7")
    ]
    assert by_code["CRP"].value.censor == "<" and by_code["CRP"].value.number == 5
    assert by_code["HBSAG"].value.text == "Negative"
    assert by_code["NOTE"].value.text == "haemolysed"
    assert by_code["NA"].value.text == "n/a" and by_code["NA"].value.number is None
    # A test that could not be done is a result (its status says so); an empty value is not.
    assert by_code["CL"].status == "X" and by_code["CL"].value.text == ""
    assert "K" not in by_code
    assert [r.sequence for r in reading.results] == [1, 2, 3, 4, 6, 7]
    assert reading.problems == [
        "OBX 5, OBX-5: K has no value; left out",
        "OBX 6, OBX-5: 'n/a' is not a number as OBX-2 NM says; kept as text",
    ]


def test_statuses_hl7_reads_otherwise_than_e1394_are_flagged() -> None:
    """OBX-11 R (not verified) and N (not asked) are no results to report in HL7, where
    E1394's R.9 R and N are: flagged, they are held (hold_instrument_flags)."""
    text = GENERIC.replace("|||F|||20260105100500", "|||r |||20260105100500")
    text = text.replace("CRP^C-reactive protein^L||<^5|mg/L|0-5||||F", "CRP^C-reactive "
                        "protein^L||<^5|mg/L|0-5||||N")  # fmt: skip
    by_code = {
        r.test_code: r for r in Hl7Driver(instrument="chem").read(parse_message(text)).results
    }
    assert (by_code["GLU"].status, by_code["GLU"].instrument_flags) == (
        "R",
        ("OBX-11 R: results entered, not verified",),
    )
    assert by_code["CRP"].instrument_flags == ("OBX-11 N: not asked for",)
    assert by_code["HBSAG"].instrument_flags == ()


def test_in_an_oru_each_request_has_the_specimen_that_follows_it() -> None:
    # ORU^R01 v2.5.1: OBR, its OBX, then its SPM (and the OBX that describe the specimen).
    text = "\r".join([
        "MSH|^~\\&|CHEM-ONE|LAB|||20260105101500||ORU^R01^ORU_R01|C-2|P|2.5.1",
        "PID|1||P-1",
        "OBR|1|ORD-A||CHEM",
        "OBX|1|NM|GLU^Glucose||5.4|mmol/L|||||F",
        "SPM|1|SPEC-A||SER",
        "OBX|1|NM|VOL^Volume||1.5|mL|||||F",
        "OBR|2|ORD-B||LYTES",
        "OBX|1|NM|NA^Sodium||140|mmol/L|||||F",
        "SPM|1|SPEC-B||SER",
    ])  # fmt: skip
    reading = Hl7Driver().read(parse_message(text))
    assert [(r.specimen_id, r.test_code) for r in reading.results] == [
        ("SPEC-A", "GLU"), ("SPEC-B", "NA")
    ]  # fmt: skip
    assert [s.specimen_id for s in reading.specimens] == ["SPEC-A", "SPEC-B"]
    assert [c.text for c in reading.comments] == ["Volume: 1.5"]
    # SPM-2 with only the filler's id.
    filler = text.replace("SPM|1|SPEC-A|", "SPM|1|^FILL-A|")
    assert Hl7Driver().read(parse_message(filler)).results[0].specimen_id == "FILL-A"


def test_a_short_number_taken_from_obr3_beside_another_id_in_obr2_is_said() -> None:
    # OBR-3 is the filler's number: some analysers write there the number of the day's
    # run, which comes round again, and the tube's barcode in OBR-2.
    text = "\r".join([
        "MSH|^~\\&|CHEM-ONE|LAB|||20260105101500||ORU^R01|C-4|P|2.5.1",
        "OBR|1|B26010544|17|CHEM|||20260105100000",
        "OBX|1|NM|GLU^Glucose||5.4|mmol/L|||||F",
    ])  # fmt: skip
    reading = Hl7Driver().read(parse_message(text))
    assert [s.specimen_id for s in reading.specimens] == ["17"]
    assert reading.problems == [
        "OBR 1, OBR-3: the specimen id '17' is a short number, as an analyser numbers its "
        "runs, where OBR-2 holds 'B26010544'; check which of the two is the tube's id"
    ]
    # Nothing to say when OBR-3 looks like an id, or OBR-2 offers nothing else.
    for quiet in (
        text.replace("|B26010544|17|", "|B26010544|2601054417|"),
        text.replace("|B26010544|17|", "|B26010544|FIL-17|"),
        text.replace("|B26010544|17|", "||17|"),
        text.replace("|B26010544|17|", "|17|17|"),
    ):
        assert Hl7Driver().read(parse_message(quiet)).problems == []


def test_controls_by_specimen_role_processing_id_or_pattern() -> None:
    role_q = GENERIC.replace("|||||||P||||||2026", "|||||||Q||||||2026")
    reading = Hl7Driver().read(parse_message(role_q))
    assert not reading.results and len(reading.controls) == 6
    assert reading.controls[0].control_material == "SMP-9"
    qc_message = GENERIC.replace("|C-1|P|", "|C-1|Q|")
    assert len(Hl7Driver().read(parse_message(qc_message)).controls) == 6
    named = GENERIC.replace("SMP-9&LAB", "QC-HC-2411-N")
    options = drivers.DriverOptions(control_pattern=r"^QC-(?P<lot>HC-\d+-(?P<level>\w))$")
    (control, *_) = Hl7Driver(options).read(parse_message(named)).controls
    assert (control.lot, control.level) == ("HC-2411-N", "N")


def test_an_obr_without_obx_is_a_problem_not_an_empty_message() -> None:
    # Results written into the OBR (a layout the base reading does not know), or OBX lost.
    bare = "\r".join([
        "MSH|^~\\&|CHEM-ONE|LAB|||20260105101500||ORU^R01|C-3|P|2.5.1",
        "PID|1||P-1",
        "OBR|1|ORD-A|FIL-A|CHEM|||20260105100000|||||||QC-LOT-7|||H|5.0|0.2|5.1|mmol/L",
    ])  # fmt: skip
    reading = Hl7Driver().read(parse_message(bare))
    assert not reading.results and not reading.controls
    assert reading.problems == [
        "OBR 1: no OBX follows it; the request's results, if any, are not read"
    ]
    # Beside a request that has its OBX, the empty one is still said.
    mixed = bare + "\rOBR|2|ORD-B|FIL-B|CHEM\rOBX|1|NM|GLU^Glucose||5.4|mmol/L|||||F"
    reading = Hl7Driver().read(parse_message(mixed))
    assert [r.test_code for r in reading.results] == ["GLU"]
    assert reading.problems == [
        "OBR 1: no OBX follows it; the request's results, if any, are not read"
    ]


def test_a_message_that_carries_no_results_says_so() -> None:
    admission = "MSH|^~\\&|BS-200|Mindray|||20260105||ADT^A01|7|P|2.3.1\rEVN|A01"
    reading = Hl7Driver().read(parse_message(admission))
    assert not reading.results and reading.problems == ["MSH-9: a ADT^A01 carries no results"]


# After the Mindray BS-200 host interface manual (sample request, HL7 v2.3.1): the tube in
# QRD-8; the answer QCK^Q02, then DSR^Q03 with numbered DSP lines.
QRY = "\r".join([
    "MSH|^~\\&|Mindray|BS-200|||20261201083000||QRY^Q02|Q7|P|2.3.1||||||ASCII",
    "QRD|20261201083000|R|D|7|||RD|S240001~S2\\T\\B|OTH|||T",
    "QRF|BS-200|20261201083000|20261201083000|||RCT|COR|ALL",
])  # fmt: skip


def test_a_host_query_names_the_tubes_it_asks_about() -> None:
    reading = Hl7Driver().read(parse_message(QRY))
    assert reading.problems == [] and not reading.results
    (asked,) = reading.queries
    assert (asked.specimen_ids, asked.all_tests) == (("S240001", "S2&B"), True)
    without = QRY.replace("RD|S240001~S2\\T\\B|OTH", "RD||OTH")
    assert Hl7Driver().read(parse_message(without)).problems == ["QRD-8: no barcode asked about"]
    no_qrd = QRY.split("\r")[0]
    assert Hl7Driver().read(parse_message(no_qrd)).problems == [
        "QRY without a QRD segment: no tube asked about"
    ]
    # The analyser's acknowledgment of our answer is neither results nor a problem.
    ack = "MSH|^~\\&|Mindray|BS-200|||20261201083001||ACK^Q03|A1|P|2.3.1\rMSA|AA|MW1"
    read = Hl7Driver().read(parse_message(ack))
    assert (read.results, read.queries, read.problems) == ([], [], [])


def test_a_host_query_is_answered_qck_then_a_dsr_per_tube_held() -> None:
    message = parse_message(QRY)
    (asked,) = Hl7Driver().read(message).queries
    driver = Hl7Driver(drivers.DriverOptions(test_map={"1": "GLU"}))
    held = [
        Order("S240001", ("GLU", "ALT"), "S", patient_id="P|7", specimen_type="serum",
              collected_at=datetime(2026, 12, 1, 7, 30, tzinfo=UTC)),
        Order("S240001", ("GLU",), patient_id="P|7"),
    ]  # fmt: skip
    zone = timezone(timedelta(hours=1))
    now = datetime(2026, 12, 1, 7, 31, tzinfo=UTC)
    qck, dsr = driver.answer_query(message, asked, held, now, zone)
    head = qck.split("\r")
    assert head[0].startswith(
        "MSH|^~\\&|LIS-MIDDLEWARE|LAB|Mindray|BS-200|20261201083100||QCK^Q02|"
    )
    assert head[0].endswith("|P|2.3.1||||||ASCII")
    assert head[1:] == ["MSA|AA|Q7|Message accepted|||0|", "ERR|0|", "QAK|SR|OK|"]
    lines = dsr.split("\r")
    assert "|DSR^Q03|" in lines[0] and lines[1:4] == head[1:]
    # The query repeated as it came, escapes and all.
    assert lines[4:6] == [QRY.split("\r")[1], QRY.split("\r")[2]]
    display = lines[6:-1]
    assert len(display) == 30 and lines[-1] == "DSC||"
    assert display[0] == "DSP|1||P\\F\\7|||"
    assert display[20:26] == [
        "DSP|21||S240001|||", "DSP|22||S240001|||", "DSP|23||20261201083000|||",
        "DSP|24||Y|||", "DSP|25|||||", "DSP|26||serum|||",
    ]  # fmt: skip
    # The analyser's codes (its test no. 1 for glucose), each test once.
    assert display[28:] == ["DSP|29||1^^^|||", "DSP|30||ALT^^^|||"]
    # Nothing held for the other tube: no DSR for it; nothing at all: QAK NF.
    (only,) = driver.answer_query(message, asked, [], now, zone)
    assert only.split("\r")[3] == "QAK|SR|NF|"


def test_decode_shows_a_host_query() -> None:
    report = decode_capture(b"\x0b" + QRY.encode() + b"\x1c\r")
    assert report.ok
    (message,) = report.messages
    assert message["queries"] == [{"specimen_ids": ["S240001", "S2&B"], "test_codes": None}]


def test_hl7_times() -> None:
    assert parse_hl7_time("20260105") == datetime(2026, 1, 5)
    assert parse_hl7_time("202601051015") == datetime(2026, 1, 5, 10, 15)
    assert parse_hl7_time("20260105101530.123-0500") == datetime(2026, 1, 5, 15, 15, 30, tzinfo=UTC)
    for wrong in ("", "2026", "20261305", "F", "20260105+01"):
        assert parse_hl7_time(wrong) is None


def _elite_messages() -> list[str]:
    capture = read_hl7_capture(ELITE.read_bytes())
    return [m.data.decode() for m in capture.messages]


def test_the_erba_elite_580_capture_read_exactly() -> None:
    texts = _elite_messages()
    assert len(texts) == 95
    message = parse_message(next(t for t in texts if "ac84fae48b0e475996af764673f793fb" in t))
    found = drivers.identify_hl7(message)
    assert found.driver is MindrayHl7Driver and "ELite 580" in found.reason
    reading = MindrayHl7Driver(instrument="elite").read(message)
    assert reading.problems == [] and not reading.controls
    assert [r.instrument_test_code for r in reading.results][:6] == [
        "WBC", "NEU%", "LYM%", "MON%", "EOS%", "BAS%",
    ]  # fmt: skip
    assert len(reading.results) == 30
    by_code = {r.instrument_test_code: r for r in reading.results}
    wbc = by_code["WBC"]
    assert (wbc.specimen_id, wbc.value.number, wbc.units) == (
        "25059143",
        Decimal("6.75"),
        "10*3/uL",
    )
    assert (wbc.reference_range, wbc.abnormal_flags, wbc.status) == ("4.00-10.00", ("N",), "F")
    assert wbc.completed_at == datetime(2025, 6, 28, 17, 33, 10)
    assert by_code["MCHC"].abnormal_flags == ("L", "A")
    assert by_code["NEU%"].test_code == "NEUT%" and by_code["LYM#"].test_code == "LYMPH#"
    assert by_code["*ALY#"].value.number == Decimal("0.02")
    assert by_code["P-LCC"].units == "10*9/L"
    # How the sample was run: comments; nothing of it a result.
    assert [c.text for c in reading.comments] == [
        "Take Mode: A", "Blood Mode: W", "Test Mode: CBC+DIFF", "Ref Group: General",
    ]  # fmt: skip
    assert not {"Take Mode", "Age", "Ref Group", "Remark"} & set(by_code)


def test_the_elite_suspect_flags_go_to_every_result_of_the_sample() -> None:
    text = next(t for t in _elite_messages() if "69328e1baba04c178140bf2a6dd1df39" in t)
    reading = MindrayHl7Driver().read(parse_message(text))
    assert len(reading.results) == 30
    flags = ("Microcytes", "Anemia", "Hypochromia", "Iron Deficiency?", "PLT Abnormal Distribution")
    assert all(r.instrument_flags == flags for r in reading.results)


# Older BC firmware types every observation IS, its results too: a number with its units,
# or ***** where it could not give one; suspect flags are T or F without units, some of
# them LOINC-coded. Written after the layout of Mindray's BC host interface (HL7 v2.3.1),
# as the ELite capture and the vendor's examples show it.
BC_ALL_IS = "\r".join([
    "MSH|^~\\&|||||20261106093000||ORU^R01|12|P|2.3.1||||||UNICODE",
    "PID|1||^^^^MR",
    "PV1|1",
    "OBR|1||26110604|00001^Automated Count^99MRC|||20261106092800|||||||||||||||||HM||||||||admin",
    "OBX|1|IS|02001^Take Mode^99MRC||A||||||F",
    "OBX|2|IS|6690-2^WBC^LN||0.3|10*9/L|4.0-10.0|L~A|||F",
    "OBX|3|IS|731-0^LYM#^LN||*****|10*9/L|0.8-4.0|~N|||F",
    "OBX|4|IS|718-7^HGB^LN||132|g/L|110-160|~N|||F",
    "OBX|5|IS|32207-3^PDW^LN||16.2||15.0-17.0|~N|||F",
    "OBX|6|IS|15199-3^Microcytes^LN||T||||||F",
    "OBX|7|IS|13302^Anemia^99MRC||F||||||F",
    "OBX|8|IS|13610^Sample Check^99MRC||Clotted||||||F",
])  # fmt: skip


def test_results_typed_is_are_results_and_flags_are_t_or_f() -> None:
    reading = MindrayHl7Driver().read(parse_message(BC_ALL_IS))
    by_code = {r.instrument_test_code: r for r in reading.results}
    assert list(by_code) == ["WBC", "LYM#", "HGB", "PDW"]
    assert (by_code["WBC"].value.number, by_code["WBC"].units) == (Decimal("0.3"), "10*9/L")
    assert by_code["PDW"].value.number == Decimal("16.2")  # a number, though without units
    # Kept as the analyser wrote it, never a number, and said.
    lymph = by_code["LYM#"]
    assert (lymph.value.text, lymph.value.number, lymph.units) == ("*****", None, "10*9/L")
    # The flag raised (T) on every result; the one not raised (F) nowhere.
    assert {r.instrument_flags for r in reading.results} == {("Microcytes",)}
    assert [c.text for c in reading.comments] == ["Take Mode: A"]
    # What is neither a result, a flag nor a run attribute does not vanish either.
    assert reading.problems == [
        "OBX 3, OBX-5: '*****', no value the analyser could give; kept as text",
        "OBX 8, OBX-3: Sample Check = 'Clotted' is neither a result (no units, no number), "
        "a suspect flag (T or F) nor a known run attribute; not read",
    ]


def test_run_attributes_of_other_bc_firmware_are_the_sample_comments() -> None:
    # BC-3000, BC-5000, BC-5300 code them otherwise than the ELite (08001 where it writes
    # 02001), the remark typed ST; written after the layout of Mindray's BC host interface.
    text = "\r".join([
        "MSH|^~\\&|||||20261106094500||ORU^R01|13|P|2.3.1||||||UNICODE",
        "PID|1||PN-5120^^^^MR||Marin^Ioana||19640917000000|Female",
        "OBR|1||26110611|00001^Automated Count^99MRC|||20261106094100",
        "OBX|1|IS|08001^Take Mode^99MRC||O||||||F",
        "OBX|2|IS|08002^Blood Mode^99MRC||W||||||F",
        "OBX|3|IS|08003^Test Mode^99MRC||CBC+5DIFF||||||F",
        "OBX|4|IS|01002^Ref Group^99MRC||Adult Female||||||F",
        "OBX|5|ST|01001^Remark^99MRC||Repeat after dilution||||||F",
        "OBX|6|NM|6690-2^WBC^LN||7.42|10*9/L|4.00-10.00|~N|||F",
    ])  # fmt: skip
    reading = MindrayHl7Driver().read(parse_message(text))
    assert reading.problems == []
    assert [r.instrument_test_code for r in reading.results] == ["WBC"]
    assert [c.text for c in reading.comments] == [
        "Take Mode: O", "Blood Mode: W", "Test Mode: CBC+5DIFF", "Ref Group: Adult Female",
        "Remark: Repeat after dilution",
    ]  # fmt: skip
    # By their names on a firmware whose codes are not known.
    renumbered = text.replace("|0800", "|0470").replace("|0100", "|0430")
    reading = MindrayHl7Driver().read(parse_message(renumbered))
    assert reading.problems == [] and [r.instrument_test_code for r in reading.results] == ["WBC"]
    assert len(reading.comments) == 5


def test_a_renamed_mindray_is_known_by_its_codes() -> None:
    text = next(t for t in _elite_messages() if "ac84fae48b0e475996af764673f793fb" in t)
    renamed = parse_message(text.replace("|ELite 580|Erba|", "|HAEM-2|Ward 5|", 1))
    found = drivers.identify_hl7(renamed)
    assert found.driver is MindrayHl7Driver
    assert "not known; layout of the Mindray" in found.reason and "99MRC" in found.reason
    plain = parse_message(GENERIC)
    assert drivers.identify_hl7(plain).driver is Hl7Driver
    # On one connection, a message that names no family is read as the one before.
    auto = drivers.get_hl7("auto")
    assert isinstance(auto, Hl7AutoDriver)
    assert type(auto.choose(parse_message(text))) is MindrayHl7Driver
    assert type(auto.choose(plain)) is MindrayHl7Driver
    assert auto.detection is not None and "read as the message before" in auto.detection.reason


def test_mindray_qc_messages_are_controls() -> None:
    text = next(t for t in _elite_messages() if "ac84fae48b0e475996af764673f793fb" in t)
    qc = parse_message(text.replace("|ac84fae48b0e475996af764673f793fb|P|", "|q1|Q|", 1))
    reading = MindrayHl7Driver().read(qc)
    assert not reading.results and len(reading.controls) == 30
    assert reading.controls[0].control_material == "25059143"


def test_decode_reads_the_elite_log_and_says_where_it_is_broken() -> None:
    report = decode_capture(ELITE.read_bytes())
    assert len(report.messages) == 95 and not report.ok
    assert {m["driver"] for m in report.messages} == {"mindray_hl7"}
    clean = [m for m in report.messages if not m["errors"]]
    assert len(clean) == 75 and all(len(m["results"]) == 30 for m in clean)
    # A chunk cut into a value that still reads as one: the numbering of OBX-1 shows it.
    cut = next(m for m in report.messages if m["control_id"] == "a567a54c438147c5918728dcfd6c24af")
    assert [e["detail"] for e in cut["errors"]] == [
        "OBX-1 goes from 17 to 38: observations missing or cut short"
    ]
    # The logger's out-of-order chunks: each named where it lies in the file.
    outside = [e for e in report.errors if e["kind"] == "outside-block"]
    assert len(outside) == 20
    assert outside[0]["offset"] == 1199 and "0.06|10*3/uL" in outside[0]["detail"]
    first = report.messages[0]
    assert first["offset"] == 5 and first["control_id"] == "031416ea601f4d8fa02c823f6fa42b8e"
    details = [e["detail"] for e in first["errors"]]
    assert details[0] == "OBX-1 goes from 17 to 38: observations missing or cut short"
    assert "OBX 17, OBX-5: 'IS' is not a number as OBX-2 NM says; kept as text" in details


def test_decode_reads_a_plain_file_with_reagent_lots() -> None:
    report = decode_capture(CITM.read_bytes())
    (message,) = report.messages
    assert message["driver"] == "hl7" and len(message["results"]) == 16
    assert {r["specimen_id"] for r in message["results"]} == {"AA5OEB6WYN"}
    lots = {r["test_code"]: r["reagents"] for r in message["results"] if r["reagents"]}
    assert lots["HIVAG-3"] == [{"reagent": "HIVAG-3", "lot": "740269", "expiry": None}]


def test_decode_command_on_hl7_and_a_driver_of_the_other_protocol() -> None:
    run = [sys.executable, "-m", "middleware", "decode"]
    done = subprocess.run([*run, str(CITM)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["messages"][0]["driver"] == "hl7"
    broken = subprocess.run([*run, "--format", "text", str(ELITE)], cwd=ROOT,
                            capture_output=True, text=True)  # fmt: skip
    assert broken.returncode == 1 and "error outside-block at 1199" in broken.stdout
    wrong = subprocess.run([*run, "--driver", "sysmex_xn", str(CITM)], cwd=ROOT,
                           capture_output=True, text=True)  # fmt: skip
    assert wrong.returncode == 1 and "driver sysmex_xn reads ASTM" in wrong.stdout
    astm = CORPUS / "astm" / "euroimmun-analyzer1_records_decimal-comma.astm"
    other = decode_capture(astm.read_bytes(), "mindray_hl7")
    assert other.errors == [
        {
            "kind": "driver",
            "detail": "the capture is ASTM; driver mindray_hl7 reads HL7",
            "offset": 0,
        }
    ]
