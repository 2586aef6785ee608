"""PixCell HemoScreen (HL7), on messages written after the layout of real HemoScreen
messages published by another project (values our own): the sample named in PID-2, the
run's kind in OBR-4, a suspect mark in OBX-8 with its NTE."""

from __future__ import annotations

from decimal import Decimal

import drivers
from drivers.pixcell_hemoscreen import PixCellHemoScreenDriver
from middleware.decode import decode_capture
from middleware.hl7.segments import parse_message


def _message(run: str, sample: str, flagged: bool = False) -> str:
    rows = [("WBC", "NM", "8.4", "10*3/uL"), ("HGB", "NM", "13.6", "g/dL"),
            ("PLT", "ST", "LL", "10*3/uL"), ("NEU#", "NM", "5.10", "10*3/uL")]  # fmt: skip
    lines = [
        "MSH|^~\\&|HemoScreen|PixCell|||20250512093000||ORU^R01|7|P|2.4",
        f"PID||{sample}",
        f"OBR||||{run}|||20250512092500",
    ]
    for n, (code, kind, value, units) in enumerate(rows):
        mark = "*" if flagged and code == "NEU#" else ""
        lines.append(f"OBX|{n}|{kind}|{code}||{value}|{units}||{mark}|||F|||20250512092500"
                     "|0001234-0002-HS")  # fmt: skip
        if mark:
            lines.append("NTE|||Abnormal cells may affect marked results")
    return "\n".join(lines) + "\n"


def test_recognised_by_its_sender_and_the_sample_read_from_pid_2() -> None:
    message = parse_message(_message("OBS", "S-4471"))
    assert drivers.identify_hl7(message).driver is PixCellHemoScreenDriver
    reading = PixCellHemoScreenDriver().read(message)
    assert not reading.problems and not reading.controls
    rows = [(r.specimen_id, r.test_code, r.value.text, r.sequence) for r in reading.results]
    assert rows == [
        ("S-4471", "WBC", "8.4", 0), ("S-4471", "HGB", "13.6", 1),
        ("S-4471", "PLT", "LL", 2), ("S-4471", "NEUT#", "5.10", 3),
    ]  # fmt: skip
    assert reading.results[2].value.number is None  # below the measuring range, as text
    assert reading.results[0].module == "0001234-0002-HS"


def test_the_suspect_mark_is_an_instrument_flag_with_its_note() -> None:
    reading = PixCellHemoScreenDriver().read(parse_message(_message("OBS", "S-1", True)))
    neu = reading.results[3]
    assert neu.instrument_flags == ("*",) and neu.abnormal_flags == ()
    assert [c.text for c in neu.comments] == ["Abnormal cells may affect marked results"]
    assert all(r.instrument_flags == () for r in reading.results[:3])


def test_control_and_proficiency_runs_are_never_patient_results() -> None:
    qc = PixCellHemoScreenDriver().read(parse_message(_message("LQC", "PIX250301N")))
    assert not qc.results and len(qc.controls) == 4
    control = qc.controls[0]
    assert (control.control_material, control.lot, control.level) == (
        "HemoScreen control", "PIX250301N", "low"
    )  # fmt: skip
    proficiency = PixCellHemoScreenDriver().read(parse_message(_message("PRF", "EQA-2")))
    assert not proficiency.results
    assert {c.control_material for c in proficiency.controls} == {"proficiency testing"}


def test_decode_reads_a_file_of_hemoscreen_messages() -> None:
    data = (_message("OBS", "S-1") + _message("LQC", "PIX250301N")).encode()
    report = decode_capture(data)
    assert report.ok and [m["driver"] for m in report.messages] == ["pixcell_hemoscreen"] * 2
    assert report.messages[1]["results"][0]["control"] is True
    assert report.messages[0]["results"][0]["numeric_value"] == str(Decimal("8.4"))
