"""``lis-middleware qc evaluate``: the Westgard evaluator over a CSV file of QC results.

Lab IT runs a candidate rule set over last year's QC before switching it on, and sees,
row by row, what it would have rejected. The file is read and checked whole before any
result is evaluated, so bad input gives error messages and no half-written output.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TextIO

from middleware.domain import bounded_number
from middleware.engine.westgard import Evaluator, QcResult, RuleName, RuleSet, rule_names

REQUIRED = ("run", "material")
TARGET = ("value", "mean", "sd")
DEFAULT_RULES = "1-3s,2-2s,R-4s,4-1s,10x"
DEFAULT_WARNINGS = "1-2s"
#: Enough to see what is wrong with a file without scrolling through all of it.
MAX_PROBLEMS = 20

# Plain decimal notation in ASCII digits only: Decimal() alone would also take "NaN",
# "Infinity", "1_0" and other scripts' digits. Its size is bounded as a result's is.
_NUMBER = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class InputError(Exception):
    """The input cannot be evaluated; ``problems`` says where and why, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Row:
    number: int
    qc: QcResult


def read_rows(stream: TextIO) -> list[Row]:
    """The data rows of a QC CSV file, numbered from 1; InputError lists every problem."""
    reader = csv.reader(stream, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(["the file is empty: expected a header run,material,value,mean,sd"])
        columns = [name.strip().lower() for name in header]
        _check_header(columns)
        rows: list[Row] = []
        problems: list[str] = []
        number = 0
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue  # blank lines, often at the end of exported files
            number += 1
            where = f"row {number} (line {reader.line_num})"
            if len(fields) != len(columns):
                problems.append(f"{where}: {len(fields)} fields, the header has {len(columns)}")
                continue
            row, row_problems = _row(number, where, dict(zip(columns, fields, strict=True)))
            problems.extend(row_problems)
            if row is not None:
                rows.append(row)
    except csv.Error as exc:
        raise InputError([f"line {reader.line_num}: not readable as CSV: {exc}"]) from None
    if problems:
        raise InputError(problems)
    return rows


def _check_header(columns: list[str]) -> None:
    duplicated = sorted({name for name in columns if columns.count(name) > 1})
    if duplicated:
        raise InputError([f"header (line 1): column {', '.join(duplicated)} given twice"])
    missing = [name for name in REQUIRED if name not in columns]
    if "z" not in columns or any(name in columns for name in TARGET):
        missing += [name for name in TARGET if name not in columns]
    if missing:
        raise InputError(
            [
                f"header (line 1): missing column {', '.join(missing)}; expected "
                "run,material,value,mean,sd (or run,material,z), optionally lot, instrument, test"
            ]
        )


def _row(number: int, where: str, fields: dict[str, str]) -> tuple[Row | None, list[str]]:
    problems: list[str] = []
    for name in REQUIRED:
        if not fields[name].strip():
            problems.append(f"{where}, column {name}: empty")
    numbers: dict[str, Decimal] = {}
    names = TARGET if all(name in fields for name in TARGET) else ("z",)
    for name in names:
        text = fields[name].strip()
        if not _NUMBER.fullmatch(text):
            problems.append(f"{where}, column {name}: {text!r} is not a number")
            continue
        value, problem = bounded_number(text)
        if value is None:
            problems.append(f"{where}, column {name}: {text!r} is not a number: it {problem}")
        else:
            numbers[name] = value
    if "sd" in numbers and numbers["sd"] <= 0:
        problems.append(f"{where}, column sd: {fields['sd'].strip()} must be above 0")
    if problems:
        return None, problems
    qc = QcResult(
        run=fields["run"].strip(),
        material=fields["material"].strip(),
        value=numbers.get("value"),
        mean=numbers.get("mean"),
        sd=numbers.get("sd"),
        z=numbers.get("z"),
        lot=fields.get("lot", "").strip(),
        instrument=fields.get("instrument", "").strip(),
        test=fields.get("test", "").strip(),
    )
    return Row(number, qc), []


def evaluate_rows(rows: Sequence[Row], rule_set: RuleSet) -> list[dict[str, object]]:
    """One JSON-ready object per row, in order."""
    evaluator = Evaluator(rule_set)
    out: list[dict[str, object]] = []
    for row in rows:
        evaluation = evaluator.evaluate(row.qc)
        out.append(
            {
                "row": row.number,
                "run": row.qc.run,
                "material": row.qc.material,
                "z": float(round(evaluation.z, 4)),
                "violations": list(evaluation.violations),
                "warnings": list(evaluation.warnings),
                "status": evaluation.status,
            }
        )
    return out


def evaluate_command(
    path: str,
    rules: str = DEFAULT_RULES,
    warnings: str = DEFAULT_WARNINGS,
    traditional: bool = False,
    include_rejected: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Print one JSON object per row; 0 when evaluated, 2 on bad options or input."""
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    prefix = "lis-middleware qc evaluate"
    try:
        rule_set = RuleSet(
            rules=_option("--rules", rules),
            warnings=_option("--warnings", warnings),
            traditional=traditional,
            include_rejected=include_rejected,
        )
    except ValueError as exc:
        print(f"{prefix}: {exc}", file=err)
        return 2
    try:
        if path == "-":
            rows = read_rows(sys.stdin)
        else:
            # utf-8-sig: spreadsheets put a byte order mark before the header
            with Path(path).open(encoding="utf-8-sig", newline="") as stream:
                rows = read_rows(stream)
    except OSError as exc:
        print(f"{prefix}: cannot read {path}: {exc.strerror}", file=err)
        return 2
    except UnicodeDecodeError as exc:
        print(f"{prefix}: {path}: not UTF-8 text (byte {exc.start})", file=err)
        return 2
    except InputError as exc:
        shown = exc.problems[:MAX_PROBLEMS]
        more = len(exc.problems) - len(shown)
        lines = [f"{prefix}: {path}: {problem}" for problem in shown]
        if more:
            lines.append(f"{prefix}: {path}: ... and {more} more problems")
        print("\n".join(lines), file=err)
        return 2
    for line in evaluate_rows(rows, rule_set):
        print(json.dumps(line), file=out)
    return 0


def _option(option: str, text: str) -> tuple[RuleName, ...]:
    try:
        return rule_names(text)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None
