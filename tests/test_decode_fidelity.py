"""What decode reads from captures written the ways manuals and analysers write them, and
what it says when it cannot read something: never nothing in silence."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import drivers
from middleware.astm.records import decode_record
from middleware.cli import main
from tests.conftest import ROOT


def _decode(capsys: pytest.CaptureFixture[str], path: Path, *options: str) -> tuple[int, dict]:
    capsys.readouterr()
    status = main(["decode", str(path), *options])
    return status, json.loads(capsys.readouterr().out)


def test_records_printed_with_their_frame_number_are_read(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capture = tmp_path / "manual.txt"
    capture.write_text(
        "1H|\\^&|||XN-550^00-22^11001|||||||P|E1394-97|20240315103000\n"
        "2P|1|||PAT7\n"
        "3O|1||1^1^            S77^B|^^^^WBC^1|R\n"
        "4R|1|^^^^WBC^1|7.80|10*3/uL||N||F||||20240315103000\n"
        "5L|1|N\n"
    )
    status, report = _decode(capsys, capture)
    (message,) = report["messages"]
    assert status == 0 and message["driver"] == "sysmex_xn"
    (row,) = message["results"]
    assert (row["specimen_id"], row["test_code"], row["value"]) == ("S77", "WBC", "7.80")


def test_a_message_cut_before_its_l_record_is_said(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capture = tmp_path / "cut.txt"
    capture.write_text("H|\\^&|||LAB\nP|1\nO|1|S1||^^^GLU\nR|1|^^^GLU|5.2|mmol/L\n")
    status, report = _decode(capsys, capture)
    (message,) = report["messages"]
    assert status == 1 and len(message["results"]) == 1
    assert [e["kind"] for e in message["errors"]] == ["incomplete"]


def test_a_result_that_cannot_be_read_is_said_and_fails(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capture = tmp_path / "no-code.txt"
    capture.write_text("H|\\^&|||LAB\nP|1\nO|1|S1||^^^GLU\nR|1||5.2|mmol/L\nL|1|N\n")
    status, report = _decode(capsys, capture)
    (message,) = report["messages"]
    assert status == 1 and message["results"] == []
    assert [e["detail"] for e in message["errors"]] == ["result 1 has no test code"]
    capsys.readouterr()
    assert main(["decode", str(capture), "--format", "text"]) == 1
    assert "error reading at 0: result 1 has no test code" in capsys.readouterr().out


def test_an_interpretation_and_its_value_are_told_apart(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    capture = tmp_path / "composite.txt"
    capture.write_text(
        "H|\\^&|||LAB\nP|1\nO|1|S1||^^^HBSAG\n"
        "R|1|^^^HBSAG|Reactive^12.5|S/CO\nR|2|^^^ABO|A^POS|\nR|3|^^^COI|-1^0.750|\n"
        "R|4|^^^HIV|Positive^>1000|\nR|5|^^^CRP|<^0.5|mg/L\nR|6|^^^GLU|5.5^mmol/L|\nL|1|N\n"
    )
    status, report = _decode(capsys, capture, "--driver", "generic")
    rows = report["messages"][0]["results"]
    assert status == 0
    assert [(r["value"], r["numeric_value"], r["censor"]) for r in rows] == [
        ("12.5", "12.5", None),  # an interpretation and a number: the number is the value
        ("A^POS", None, None),  # no number: all of it, as text
        ("-1^0.750", None, None),  # two numbers: which is the value is the analyser's to say
        (">1000", "1000", ">"),  # censored, and the interpretation goes with it
        ("<^0.5", None, None),  # a sign apart from its number is not an interpretation
        ("5.5^mmol/L", None, None),  # nor are units
    ]
    records = [decode_record(line) for line in capture.read_text().splitlines()]
    reading = drivers.get("generic").read(records)
    assert [c.text for c in reading.results[0].comments] == ["Reactive"]
    assert [c.text for c in reading.results[3].comments] == ["Positive"]
    assert all(not r.comments for r in (reading.results[4], reading.results[5]))


def test_decode_into_a_closed_pipe_ends_quietly() -> None:
    capture = ROOT.parent / "shared" / "corpus" / "astm" / "mindray-bs240_log.txt"
    shell = subprocess.run(
        f"{sys.executable} -m middleware decode {capture} --format text | head -1",
        shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shell.stdout.startswith("message 1 from Mindry")
    assert "Traceback" not in shell.stderr and "BrokenPipe" not in shell.stderr
