"""Mindray BS driver against the BS-240 monitor log in the corpus (astm/mindray-bs240_log.txt).

Values below were read off the file with ``cat -v``.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

import drivers
from drivers.mindray_bs import MindrayBSDriver
from middleware.astm.capture import Capture, read_capture
from middleware.astm.frames import FrameTolerances
from middleware.astm.records import decode_message
from middleware.decode import decode_capture
from middleware.domain import InstrumentMessage
from tests.drivers import header

ASTM = Path(__file__).resolve().parents[2].parent / "shared" / "corpus" / "astm"
LOG = ASTM / "mindray-bs240_log.txt"


@pytest.fixture(scope="module")
def data() -> bytes:
    return LOG.read_bytes()


@pytest.fixture(scope="module")
def capture(data: bytes) -> Capture:
    return read_capture(data, MindrayBSDriver.tolerances)


@pytest.fixture(scope="module")
def messages(capture: Capture) -> list[InstrumentMessage]:
    driver = drivers.get("mindray_bs")
    return [driver.read(decode_message(m.lines).records) for m in capture.messages]


def test_registered_and_recognised_by_its_sender() -> None:
    assert isinstance(drivers.get("mindray_bs"), MindrayBSDriver)
    assert drivers.identify(header("Mindry")).driver is MindrayBSDriver  # as the BS-240 spells it
    assert drivers.identify(header("Mindray^BS-480")).driver is MindrayBSDriver


def test_whole_messages_in_one_frame_need_long_frames(data: bytes) -> None:
    frames = re.findall(rb"\[STX\]\d(.*?)\[ETX\]", data)
    longest = max(len(f.replace(b"[CR]", b"\r")) for f in frames)
    assert 2500 < longest < 2700
    long_ones = sum(len(f.replace(b"[CR]", b"\r")) > 240 for f in frames)
    strict = Counter(e.kind for e in read_capture(data, FrameTolerances()).errors)
    # A frame is refused for one reason, a wrong checksum before its length.
    assert strict["frame_too_long"] + strict["checksum"] == long_ones == 114
    assert MindrayBSDriver.tolerances.long_frames
    lenient = read_capture(data, MindrayBSDriver.tolerances)
    assert not [e for e in lenient.errors if e.kind == "frame_too_long"]


def test_link_errors_of_the_log_are_reported(capture: Capture) -> None:
    kinds = Counter(e.kind for e in capture.errors)
    # A second message inside one ENQ..EOT starts again at frame 1: the driver's
    # numbering_restarts takes it, so only the characters the log lost remain.
    assert kinds == {"checksum": 27}
    data = LOG.read_bytes()
    without = replace(MindrayBSDriver.tolerances, numbering_restarts=False)
    renumbered = [e for e in read_capture(data, without).errors if e.kind == "frame_number"]
    assert len(renumbered) == 3
    assert all("frame number 1, 2 expected" in e.detail for e in renumbered)
    # The monitor dropped the micro sign of "µg/dL" (Iron): the checksum the analyser sent
    # is the one of the text with it, 0xB5 in Latin-1.
    iron = next(m for m in capture.messages if m.lines[2].split("|")[4] == "FE^Iron^^")
    assert any("|g/dL|" in line for line in iron.lines)
    (error,) = [e for e in iron.errors if e.kind == "checksum"]
    received, computed = re.findall(r"'([0-9A-F]{2})'", error.detail)
    assert (int(computed, 16) + 0xB5) % 256 == int(received, 16)


def test_every_message_is_read(messages: list[InstrumentMessage]) -> None:
    assert len(messages) == 157
    assert sum(len(m.results) for m in messages) == 568
    assert sum(len(m.controls) for m in messages) == 43
    assert all(m.sender == "Mindry" and not m.problems for m in messages)


def test_patient_results(messages: list[InstrumentMessage]) -> None:
    first = messages[0]
    assert len(first.results) == 21
    (specimen,) = first.specimens
    assert (specimen.specimen_id, specimen.rack, specimen.position) == ("25059239", "1", "7")
    assert specimen.specimen_type == "serum"
    phos = first.results[0]
    assert (phos.specimen_id, phos.test_code, phos.instrument_test_code) == (
        "25059239",
        "PHOS",
        "P",
    )
    assert phos.value.text == "2.837141" and phos.value.number == Decimal("2.837141")
    assert phos.units == "mg/dL" and phos.abnormal_flags == ("N",) and phos.status == "F"
    assert phos.completed_at == datetime(2025, 7, 1, 17, 20, 2)  # R.12: R.13 is empty
    alt = first.results[4]
    assert (alt.instrument_test_code, alt.test_code, alt.value.text, alt.units) == (
        "SGPT",
        "ALT",
        "36.351162",
        "U/L",
    )
    # A calculated item: no code, only its name, and no time of its own.
    ratio = first.results[18]
    assert (ratio.test_code, ratio.value.text, ratio.units, ratio.completed_at) == (
        "A/G",
        "1.724454",
        "",
        None,
    )


def test_a_barcode_that_is_free_text(messages: list[InstrumentMessage]) -> None:
    repeat = next(m for m in messages if m.results and m.results[0].sequence == 318)
    (result,) = repeat.results
    assert (result.specimen_id, result.test_code, result.value.text) == (
        "RAZIK 1441 REPEAT",
        "UA",
        "9.728738",
    )


def test_qc_messages_carry_their_result_in_the_order(messages: list[InstrumentMessage]) -> None:
    qc = [m for m in messages if m.controls]
    assert len(qc) == 43 and all(not m.results and len(m.controls) == 1 for m in qc)
    first = qc[0].controls[0]
    assert (first.control_material, first.lot, first.level) == ("MLT cntrl1", "059325001", "M")
    assert first.result.test_code == "PHOS"
    assert first.result.value.number == Decimal("4.926913")
    assert first.result.completed_at == datetime(2025, 7, 1, 11, 0, 3)
    assert first.result.status == "F"
    urea = next(
        c
        for m in qc
        for c in m.controls
        if c.control_material == "mlt cntrl2" and c.result.test_code == "UREA"
    )
    assert (urea.lot, urea.result.value.text) == ("059425004", "161.798247")
    materials = Counter(c.control_material for m in qc for c in m.controls)
    assert materials == {"MLT cntrl1": 19, "mlt cntrl2": 24}


def test_decode_command_output(data: bytes) -> None:
    report = decode_capture(data, "mindray_bs").as_dict()
    rows = [r for m in report["messages"] for r in m["results"]]
    assert len(rows) == 568 + 43
    control = next(r for r in rows if r["control"])
    assert control["control_material"] == "MLT cntrl1"
    assert control["control_lot"] == "059325001"
    assert control["lab_test_code"] == "PHOS"
    assert control["numeric_value"] == "4.926913"
    assert rows[0]["completed_at"] == "2025-07-01T17:20:02"
