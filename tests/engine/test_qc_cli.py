"""``lis-middleware qc evaluate``: the examples as CSV files, the options, the output, and
bad input refused with the row and column named, exit status 2 and no traceback."""

from __future__ import annotations

import io
import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from middleware.cli import main
from middleware.engine.westgard import RuleSet
from tests.engine.test_westgard import (
    HAND_WORKED,
    LEVEY_JENNINGS,
    LEVEY_JENNINGS_BY_DAY,
    LEVEY_JENNINGS_SERIES,
    TARGETS,
    Example,
    Outcome,
)

Capsys = pytest.CaptureFixture[str]
HEADER = "run,material,value,mean,sd\n"


def write(tmp_path: Path, text: str, name: str = "qc.csv") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def evaluate(capsys: Capsys, path: str, *options: str) -> list[dict[str, Any]]:
    status = main(["qc", "evaluate", "--input", path, *options])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""
    return [json.loads(line) for line in captured.out.splitlines()]


def refused(capsys: Capsys, path: str, *options: str) -> str:
    status = main(["qc", "evaluate", "--input", path, *options])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == "", "nothing is evaluated from a file with a problem"
    assert "Traceback" not in captured.err
    return captured.err


def options_for(rule_set: RuleSet) -> list[str]:
    options = ["--rules", ",".join(rule_set.rules), "--warnings", ",".join(rule_set.warnings)]
    if rule_set.traditional:
        options.append("--traditional")
    if rule_set.include_rejected:
        options.append("--include-rejected")
    return options


def as_csv(example: Example) -> str:
    """The example's z-scores as values of a control with mean 100 and SD 10."""
    lines = [f"{r},{material},{100 + 10 * Decimal(z)},100,10" for r, material, z in example.rows]
    return HEADER + "\n".join(lines) + "\n"


def outcomes(lines: list[dict[str, Any]]) -> list[Outcome]:
    return [(tuple(line["violations"]), tuple(line["warnings"])) for line in lines]


@pytest.mark.parametrize("example", HAND_WORKED, ids=lambda e: e.name)
def test_hand_worked_sequences(capsys: Capsys, tmp_path: Path, example: Example) -> None:
    lines = evaluate(capsys, write(tmp_path, as_csv(example)), *options_for(example.rule_set))
    assert outcomes(lines) == example.expected
    assert [line["z"] for line in lines] == [float(z) for _, _, z in example.rows]
    assert [(line["run"], line["material"]) for line in lines] == [r[:2] for r in example.rows]


def levey_jennings_csv(days: tuple[str, ...] | None = None) -> str:
    rows = [
        f"{day},{control},{value},{TARGETS[control][0]},{TARGETS[control][1]}"
        for day, control, value in LEVEY_JENNINGS
        if days is None or day in days
    ]
    return HEADER + "\n".join(rows) + "\n"


@pytest.mark.parametrize("days", list(LEVEY_JENNINGS_BY_DAY), ids="+".join)
def test_levey_jennings_exercise_day_by_day(
    capsys: Capsys, tmp_path: Path, days: tuple[str, ...]
) -> None:
    lines = evaluate(capsys, write(tmp_path, levey_jennings_csv(days)))
    assert outcomes(lines) == LEVEY_JENNINGS_BY_DAY[days]


def test_levey_jennings_exercise_as_one_series(capsys: Capsys, tmp_path: Path) -> None:
    lines = evaluate(capsys, write(tmp_path, levey_jennings_csv()))
    assert outcomes(lines) == LEVEY_JENNINGS_SERIES
    assert lines[0] == {
        "row": 1,
        "run": "5",
        "material": "control 1",
        "z": -3.5,
        "violations": ["1-3s"],
        "warnings": ["1-2s"],
        "status": "reject",
    }
    assert [line["status"] for line in lines][-2:] == ["warning", "reject"]


def test_boundaries_are_exact(capsys: Capsys, tmp_path: Path) -> None:
    lines = evaluate(capsys, write(tmp_path, HEADER + "1,L1,108,100,4\n2,L1,112,100,4\n"))
    assert [(line["z"], line["status"], line["warnings"]) for line in lines] == [
        (2.0, "accept", []),
        (3.0, "warning", ["1-2s"]),
    ]


def test_output_rounds_z_and_numbers_rows_from_one_skipping_blank_lines(
    capsys: Capsys, tmp_path: Path
) -> None:
    text = "\ufeff Run , MATERIAL,value,mean,sd\r\n\r\n1,L1,1,0,3\r\n,,,,\r\n2,L1,-2,0,3\r\n\r\n"
    lines = evaluate(capsys, write(tmp_path, text))
    assert [(line["row"], line["z"]) for line in lines] == [(1, 0.3333), (2, -0.6667)]


def test_default_rules_and_warnings(capsys: Capsys, tmp_path: Path) -> None:
    # 1-2s warns, 4-1s rejects, 7T (not in the defaults) stays silent
    rising = ["-1.0", "-0.6", "-0.2", "1.1", "1.5", "1.9", "2.4"]
    example = Example("", [(str(i), "L1", z) for i, z in enumerate(rising)], [])
    path = write(tmp_path, as_csv(example))
    assert outcomes(evaluate(capsys, path))[-1] == (("4-1s",), ("1-2s",))
    with_trend = evaluate(capsys, path, "--rules", "1-3s,2-2s,R-4s,4-1s,10x,7T")
    assert outcomes(with_trend)[-1] == (("4-1s", "7T"), ("1-2s",))
    no_warnings = evaluate(capsys, path, "--warnings", "")
    assert outcomes(no_warnings)[-1] == (("4-1s",), ())
    spelled = evaluate(capsys, path, "--rules", " 1-3S , 4-1s ", "--warnings", "1-2S,7t")
    assert outcomes(spelled)[-1] == (("4-1s",), ("1-2s", "7T"))


def test_include_rejected(capsys: Capsys, tmp_path: Path) -> None:
    path = write(tmp_path, HEADER + "1,L1,135,100,10\n2,L1,125,100,10\n")
    assert outcomes(evaluate(capsys, path))[-1] == ((), ("1-2s",))
    assert outcomes(evaluate(capsys, path, "--include-rejected"))[-1] == (("2-2s",), ("1-2s",))


def test_traditional(capsys: Capsys, tmp_path: Path) -> None:
    rows = "1,L1,115,100,10\n1,L2,215,200,10\n2,L1,115,100,10\n2,L2,215,200,10\n3,L1,125,100,10\n"
    path = write(tmp_path, HEADER + rows)
    # run 2 completes 4-1s and is rejected, and so left out when run 3 is judged...
    plain = evaluate(capsys, path)
    assert [line["status"] for line in plain] == ["accept"] * 3 + ["reject", "warning"]
    # ...while the traditional flow accepts run 2 unexamined, and run 3 completes 4-1s
    traditional = evaluate(capsys, path, "--traditional")
    assert [line["status"] for line in traditional] == ["accept"] * 4 + ["reject"]
    assert outcomes(traditional)[-1] == (("4-1s",), ("1-2s",))


def test_z_column_lots_instruments_and_tests(capsys: Capsys, tmp_path: Path) -> None:
    text = (
        "run,material,lot,instrument,test,z\n"
        "1,L1,A,cobas-1,GLU,2.5\n"
        "2,L1,B,cobas-1,GLU,2.5\n"  # another lot: not the same control
        "2,L1,A,cobas-2,GLU,2.5\n"  # another instrument
        "2,L1,A,cobas-1,K,2.5\n"  # another test
        "3,L1,A,cobas-1,GLU,2.5\n"  # the same control as row 1: 2-2s
    )
    lines = evaluate(capsys, write(tmp_path, text))
    assert [line["violations"] for line in lines] == [[], [], [], [], ["2-2s"]]


def test_standard_input(capsys: Capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(HEADER + "1,L1,131,100,10\n"))
    [line] = evaluate(capsys, "-")
    assert (line["z"], line["violations"]) == (3.1, ["1-3s"])


# --- refused ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("run,material,value,mean\n1,L1,1,0\n", "header (line 1): missing column sd; expected"),
        ("run,value,mean,sd\n1,1,0,1\n", "header (line 1): missing column material;"),
        ("run,material,z,value\n1,L1,1,1\n", "missing column mean, sd"),
        ("run,material,value,value,mean,sd\n", "header (line 1): column value given twice"),
        ("", "the file is empty: expected a header run,material,value,mean,sd"),
        (HEADER + "1,L1,1,0,1\n1,L2,abc,0,1\n", "row 2 (line 3), column value: 'abc' is not"),
        (HEADER + "1,L1,101,,1\n", "row 1 (line 2), column mean: '' is not a number"),
        (HEADER + "1,L1,NaN,100,1\n", "column value: 'NaN' is not a number"),
        (HEADER + "1,L1,Infinity,100,1\n", "column value: 'Infinity' is not a number"),
        (HEADER + "1,L1,1e99999,100,1\n", "column value: '1e99999' is not a number"),
        (HEADER + "1,L1,101,100,0\n", "row 1 (line 2), column sd: 0 must be above 0"),
        (HEADER + "1,L1,101,100,-1.5\n", "row 1 (line 2), column sd: -1.5 must be above 0"),
        (HEADER + "1,L1,101,100\n", "row 1 (line 2): 4 fields, the header has 5"),
        (HEADER + "1,L1,101,100,1,7\n", "row 1 (line 2): 6 fields, the header has 5"),
        (HEADER + " ,L1,101,100,1\n", "row 1 (line 2), column run: empty"),
        (HEADER + "1,,101,100,1\n", "row 1 (line 2), column material: empty"),
        (HEADER + '1,"L1\n', "line 2: not readable as CSV: unexpected end of data"),
        (HEADER + '1,"L1"x,101,100,1\n', "line 2: not readable as CSV: ',' expected after '\"'"),
        (HEADER + "1,L1," + "1" * 200_000 + ",100,1\n", "line 2: not readable as CSV: field"),
    ],
)
def test_bad_input_is_refused(capsys: Capsys, tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    err = refused(capsys, path)
    assert err.startswith(f"lis-middleware qc evaluate: {path}: ")
    assert message in err


def test_every_problem_is_listed_up_to_twenty(capsys: Capsys, tmp_path: Path) -> None:
    rows = "".join(f"{i},L1,x{i},100,0\n" for i in range(1, 16))
    err = refused(capsys, write(tmp_path, HEADER + rows))
    lines = err.splitlines()
    assert len(lines) == 21
    assert "row 1 (line 2), column value: 'x1' is not a number" in lines[0]
    assert "row 1 (line 2), column sd: 0 must be above 0" in lines[1]
    assert lines[-1].endswith("... and 10 more problems")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--rules", "1-3s,R-5s"], "--rules: unknown rule 'R-5s'; known: 1-2s, 1-3s, 2-2s"),
        (["--warnings", "1-2s,41s"], "--warnings: unknown rule '41s'"),
        (["--rules", "1-3s,4-1s", "--warnings", "4-1s"], "4-1s cannot both reject and only warn"),
        (["--traditional", "--warnings", ""], "the traditional flow needs 1-2s among the warnings"),
        (["--traditional", "--rules", "1-2s,1-3s", "--warnings", "1-2s"], "cannot both reject"),
    ],
)
def test_bad_options_are_refused(
    capsys: Capsys, tmp_path: Path, options: list[str], message: str
) -> None:
    err = refused(capsys, write(tmp_path, HEADER + "1,L1,101,100,1\n"), *options)
    assert err.startswith("lis-middleware qc evaluate: ") and message in err


def test_unreadable_files_are_refused(capsys: Capsys, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.csv")
    assert "cannot read" in refused(capsys, missing) and missing in refused(capsys, missing)
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes((HEADER + "1,contrôle,101,100,1\n").encode("latin-1"))
    assert "not UTF-8 text" in refused(capsys, str(latin1))
    assert "cannot read" in refused(capsys, str(tmp_path))


def test_input_is_required(capsys: Capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["qc", "evaluate"])
    assert exited.value.code == 2
    assert "--input" in capsys.readouterr().err


Z_HEADER = "run,material,z\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (Z_HEADER + "1,L1,9e999\n", "row 1 (line 2), column z: '9e999' is not a number: it is out"),
        (Z_HEADER + "1,L1,1\n2,L1,-9E-999\n", "row 2 (line 3), column z: '-9E-999' is not a"),
        (Z_HEADER + "1,L1,1e99999999999999999999\n", "column z: '1e99999999999999999999' is"),
        (HEADER + "1,L1,1e300,0,1e-300\n", "column value: '1e300' is not a number: it is out"),
        (HEADER + "1,L1,1,0,1e-300\n", "row 1 (line 2), column sd: '1e-300' is not a number"),
        (HEADER + "1,L1,1e999999999,100,1\n", "column value: '1e999999999' is not a number"),
        (HEADER + "1,L1,1" + "0" * 30 + ".0,100,1\n", "it has more than 24 significant digits"),
        (HEADER + "1,L1,١٠١,100,1\n", "row 1 (line 2), column value: '١٠١' is not a number"),
        (Z_HEADER + "1,L1,NaN\n", "row 1 (line 2), column z: 'NaN' is not a number"),
        (Z_HEADER + "1,L1,sNaN\n", "row 1 (line 2), column z: 'sNaN' is not a number"),
        (Z_HEADER + "1,L1,-Infinity\n", "row 1 (line 2), column z: '-Infinity' is not a number"),
    ],
)
def test_hostile_numbers_are_refused_at_once(
    capsys: Capsys, tmp_path: Path, text: str, message: str
) -> None:
    started = time.monotonic()
    err = refused(capsys, write(tmp_path, text))
    assert time.monotonic() - started < 1
    assert message in err


def test_numbers_at_the_bounds_are_evaluated(capsys: Capsys, tmp_path: Path) -> None:
    # The largest value, the smallest SD: the z-score is still a float JSON can write.
    text = HEADER + "1,L1,9.99999999999999e15,-9.99999999999999e15,1e-24\n"
    [line] = evaluate(capsys, write(tmp_path, text))
    assert line["z"] == pytest.approx(2e40) and line["status"] == "reject"
