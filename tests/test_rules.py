"""Rule files: the shipped set is valid, bad files are refused with file, line and field,
and the daemon keeps the last good rules and audits every accepted change."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest

from middleware.cli import main
from middleware.engine.rules import ReagentLot, load_rules, schema_text
from middleware.yamlfile import FileError
from tests.conftest import ROOT
from tests.daemon import DaemonProcess

RULES = ROOT / "rules"


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES, target)
    return target


def problems(directory: Path) -> list[str]:
    with pytest.raises(FileError) as caught:
        load_rules(directory)
    return caught.value.problems


def test_shipped_rules_are_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(RULES)]) == 0
    assert capsys.readouterr().out.startswith("rules ok: 6 files: 3 control materials")


def test_shipped_schema_is_the_generated_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (RULES / "schema.json").read_text() == schema_text()
    assert main(["rules", "schema", "--output", str(tmp_path / "none" / "schema.json")]) == 2
    said = capsys.readouterr().err
    assert said.endswith("schema.json: cannot write: No such file or directory\n")


def test_a_test_has_one_qc_policy_per_instrument_and_a_control_lot_one_material(
    rules_dir: Path,
) -> None:
    qc = rules_dir / "qc.yaml"
    more = rules_dir / "more.yaml"
    more.write_text(
        "qc_policies:\n"
        "  - {tests: [MG, GLU], levels: ['1'], rule_set: default}\n"
        "  - {instruments: [c1, c2], tests: [PHOS], levels: ['1'], rule_set: default}\n"
        "  - {instruments: [c3], tests: [PHOS], levels: ['1'], rule_set: default}\n"
        "  - {instruments: [c2], tests: [PHOS], levels: ['1'], rule_set: default}\n"
        "control_materials:\n"
        "  - name: Another chemistry control\n"
        "    lots:\n"
        "      - {lot: CC-45781, level: '1',\n"
        "         targets: {MG: {mean: 1, sd: 0.1}, PHOS: {mean: 1, sd: 0.1}}}\n"
    )
    found = problems(rules_dir)
    # Files are read in name order: the second place is named, the first in brackets.
    glu = [p for p in found if "GLU on every instrument" in p]
    assert glu == [
        f"{qc}:120: qc_policies.1.tests.0: GLU on every instrument has a policy already "
        f"({more}:2: qc_policies.0.tests), read before this one: this one would never apply "
        "there"
    ]
    assert [p.split(": ", 2)[1:] for p in found if "PHOS" in p] == [
        ["qc_policies.3.tests.0", "PHOS on c2 has a policy already "
         f"({more}:3: qc_policies.1.tests), read before this one: this one would never apply "
         "there"],
    ]  # fmt: skip
    assert f"{qc}:67: control_materials.1.lots.0.lot: control lot CC-45781 is listed twice " \
        f"(also {more}:9: control_materials.0.lots.0.lot)" in found  # fmt: skip
    assert len(found) == 3
    # A policy for some instruments read before the one for every instrument overrides it
    # there; a test named twice in one policy is no second policy.
    more.write_text(
        "qc_policies:\n"
        "  - {instruments: [c3], tests: [GLU, GLU], levels: ['1'], rule_set: default}\n"
    )
    rules = load_rules(rules_dir)
    assert [p.instruments for p in rules.qc_policies if "GLU" in p.tests] == [["c3"], ["*"]]


def test_a_policy_level_no_control_lot_measures_its_test_at_is_refused(rules_dir: Path) -> None:
    """Its results would be held for a QC that cannot come."""
    (rules_dir / "more.yaml").write_text(
        "qc_policies:\n  - {instruments: [c9], tests: [MG, GLU], levels: ['1', '3']}\n"
    )
    more = rules_dir / "more.yaml"
    assert problems(rules_dir) == [
        f"{more}:2: qc_policies.0.levels.0: no control lot of level 1 has a target for MG: "
        "its results would wait for a QC that cannot come",
        f"{more}:2: qc_policies.0.levels.1: no control lot of level 3 has a target for MG, "
        "GLU: its results would wait for a QC that cannot come",
    ]


def test_an_empty_rule_file_is_refused(rules_dir: Path) -> None:
    """Most often a file caught while it is written: taken, the rules in force would lose
    its ranges without a word."""
    (rules_dir / "ranges.yaml").write_text("# yaml-language-server: $schema=schema.json\n")
    assert problems(rules_dir) == [
        f"{rules_dir / 'ranges.yaml'}:1: holds no section: an empty rule file is refused "
        "(remove it, or give its section as an empty list)"
    ]
    (rules_dir / "ranges.yaml").write_text("ranges: []\ndelta_checks: []\n")
    assert load_rules(rules_dir).ranges == []


def test_a_file_being_written_is_read_once_left_alone(rules_dir: Path) -> None:
    """A tool writing a rule file in place, paused halfway, when the daemon reloads: the
    reload waits for the file to be left alone, and takes all of it."""
    ranges = rules_dir / "ranges.yaml"
    whole = ranges.read_text()
    lines = whole.splitlines(keepends=True)
    ranges.write_text("".join(lines[:6]))

    def finish() -> None:
        time.sleep(0.3)
        ranges.write_text(whole)

    writer = threading.Thread(target=finish)
    writer.start()
    try:
        taken = load_rules(rules_dir, settle=0.5)
    finally:
        writer.join()
    assert taken.ranges == load_rules(RULES).ranges and len(taken.ranges) > 2


def test_a_file_changing_while_it_is_read_is_refused(
    rules_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file written in place all the time (another process rewriting it): a reload waits
    for it no longer than allowed, and a change seen while it was read refuses it rather
    than take what was read of it."""
    monkeypatch.setattr("middleware.engine.rules.SETTLE_LIMIT", 0.5)
    ranges = rules_dir / "ranges.yaml"
    ranges.write_text(ranges.read_text() + "# a long comment line\n" * 20_000)
    rewriting = (
        "import os, sys\n"
        "fd = os.open(sys.argv[1], os.O_WRONLY)\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "while True:\n"
        "    os.pwrite(fd, data, 0)\n"
    )  # the same bytes each time: whatever is read is the whole file, only newer
    writer = subprocess.Popen([sys.executable, "-c", rewriting, str(ranges)])
    try:
        time.sleep(0.2)
        began = time.monotonic()
        with contextlib.suppress(FileError):
            load_rules(rules_dir, settle=1.0)
        waited = time.monotonic() - began
        refusals = []
        for _ in range(50):
            try:
                load_rules(rules_dir)
            except FileError as exc:
                refusals = exc.problems
                break
    finally:
        writer.kill()
        writer.wait()
    assert 0.5 <= waited < 3  # as long as allowed for all the files, once
    assert refusals == [
        f"{ranges}: changed while it was read: written in place by someone? Reload once it "
        "is written (write a new file and rename it over the old one)"
    ]


def test_sigma_chooses_the_rule_set() -> None:
    rules = load_rules(RULES)
    glucose = next(p for p in rules.qc_policies if "GLU" in p.tests)
    assert glucose.sigma is not None and glucose.sigma.value == Decimal("5.3125")
    assert rules.rule_set_for(glucose).rules == ["1-3s", "2-2s", "R-4s"]


def test_a_sigma_below_every_step_gets_the_strictest_set(rules_dir: Path) -> None:
    qc = rules_dir / "qc.yaml"
    # A bias larger than the allowed total error: sigma -1.25, under the map's lowest step.
    qc.write_text(
        qc.read_text().replace("{tea: 10, bias: 1.5, cv: 1.6}", "{tea: 10, bias: 12, cv: 1.6}")
    )
    westgard = rules_dir / "westgard.yaml"
    westgard.write_text(
        westgard.read_text().replace(
            "{min_sigma: 0, rule_set: sigma-low}", "{min_sigma: 2, rule_set: sigma-low}"
        )
    )
    rules = load_rules(rules_dir)
    glucose = next(p for p in rules.qc_policies if "GLU" in p.tests)
    assert glucose.sigma is not None and glucose.sigma.value < 0
    assert rules.rule_set_for(glucose).rules == ["1-3s", "2-2s", "R-4s", "4-1s", "8x"]


def test_unknown_rule_is_refused_with_file_line_and_field(rules_dir: Path) -> None:
    path = rules_dir / "westgard.yaml"
    path.write_text(path.read_text().replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, R-5s]"))
    [problem] = problems(rules_dir)
    assert problem.startswith(f"{path}:8: westgard.rule_sets.default.rules.1: Input should be")


def test_every_problem_of_every_file_is_listed(rules_dir: Path) -> None:
    (rules_dir / "extra.yaml").write_text(
        "reagent_lots:\n"
        "  - reagent: K reagent\n"
        "    lot: '12'\n"
        "    expiry: not-a-date\n"
        "ranges:\n"
        "  - {test: K, low: 5, high: 3}\n"
        "colour: blue\n"
    )
    (rules_dir / "broken.yaml").write_text("ranges: [\n")
    found = problems(rules_dir)
    extra = rules_dir / "extra.yaml"
    assert f"{extra}:4: reagent_lots.0.expiry: Input should be a valid date" in "\n".join(found)
    assert any(
        p.startswith(f"{extra}:6: ranges.0: Value error, low (5) must be below") for p in found
    )
    assert any(p.startswith(f"{extra}:7: colour: Extra inputs are not permitted") for p in found)
    assert any(p.startswith(f"{rules_dir / 'broken.yaml'}:2: not valid YAML") for p in found)


def test_problems_across_files(rules_dir: Path) -> None:
    (rules_dir / "more.yaml").write_text(
        "qc_policies:\n"
        "  - {tests: [MG], levels: ['1'], rule_set: nope}\n"
        "reagent_lots:\n"
        "  - {reagent: GLU reagent, lot: '2365', expiry: 2027-05-31}\n"
    )
    found = problems(rules_dir)
    more = rules_dir / "more.yaml"
    assert f"{more}:2: qc_policies.0.rule_set: unknown rule set 'nope'" in found
    # the second of the two is named (files are read in name order)
    reagents = rules_dir / "reagents.yaml"
    assert f"{reagents}:7: reagent_lots.0: lot 2365 of GLU reagent is listed twice" in found


def test_check_command_prints_problems_and_fails(
    rules_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (rules_dir / "qc.yaml").write_text("qc_policies:\n  - {tests: [], levels: ['1']}\n")
    assert main(["rules", "check", str(rules_dir)]) == 1
    out = capsys.readouterr().out
    assert (
        f"{rules_dir / 'qc.yaml'}:2: qc_policies.0.tests: List should have at least 1 item" in out
    )
    assert out.rstrip().endswith("rules refused")


def test_effective_expiry_is_the_earlier_of_expiry_and_stability() -> None:
    lot = ReagentLot(reagent="R", lot="1", expiry=date(2027, 5, 31),
                     opened=date(2026, 11, 1), stability_days=60)  # fmt: skip
    assert lot.effective_expiry == date(2026, 12, 31)
    unopened = ReagentLot(reagent="R", lot="1", expiry=date(2027, 5, 31), stability_days=60)
    assert unopened.effective_expiry == date(2027, 5, 31)


def _wait_for(path: Path, text: str, times: int = 1, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while path.read_text().count(text) < times:
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {path}")
        time.sleep(0.05)


def test_daemon_reloads_on_sighup_keeps_good_rules_and_audits(
    tmp_path: Path, rules_dir: Path
) -> None:
    daemon = DaemonProcess(tmp_path, [], rules_dir=str(rules_dir))
    daemon.start()
    try:
        assert daemon.process is not None
        westgard = rules_dir / "westgard.yaml"
        good = westgard.read_text()
        westgard.write_text(good.replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, R-5s]"))
        daemon.process.send_signal(signal.SIGHUP)
        _wait_for(daemon.log, "rules refused; the rules in force stay")
        westgard.write_text(good.replace("[1-3s, 2-2s, R-4s, 4-1s, 10x]", "[1-3s, 2-2s]"))
        daemon.process.send_signal(signal.SIGHUP)
        _wait_for(daemon.log, '"event": "rules in force"', times=2)
    finally:
        assert daemon.stop() == 0
    with sqlite3.connect(daemon.database) as conn:
        entries = conn.execute("SELECT actor, action, subject, detail FROM audit_log").fetchall()
    assert entries[0][:2] == ("daemon start", "rules.load")
    actor, action, subject, detail = entries[-1]
    assert len(entries) == 2  # the refused file changed nothing
    assert actor.startswith("SIGHUP") and action == "rules.load" and subject == str(rules_dir)
    assert '-    \\"4-1s\\",' in detail and '-    \\"10x\\"' in detail


def test_daemon_refuses_to_start_on_bad_rules(tmp_path: Path, rules_dir: Path) -> None:
    (rules_dir / "bad.yaml").write_text("ranges: [{test: K, low: 9, high: 1}]\n")
    daemon = DaemonProcess(tmp_path, [], rules_dir=str(rules_dir))
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start()
    assert daemon.stop() == 2
    log = daemon.log.read_text()
    assert "not started: " in log and "low (9) must be below high (1)" in log
    assert "in force stay" not in log  # none were in force


def test_daemon_refuses_to_start_on_a_rules_dir_not_there(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path, [], rules_dir=str(tmp_path / "rules"))
    with pytest.raises(RuntimeError, match="daemon exited"):
        daemon.start()
    assert daemon.stop() == 2
    log = daemon.log.read_text()
    assert f'"event": "not started: rules_dir {tmp_path / "rules"} is not a directory"' in log
    assert "in force stay" not in log


def test_the_same_rules_at_a_restart_are_no_change(tmp_path: Path, rules_dir: Path) -> None:
    daemon = DaemonProcess(tmp_path, [], rules_dir=str(rules_dir))
    in_force = []
    for _ in range(2):
        daemon.start()
        assert daemon.stop() == 0
        lines = daemon.log.read_text().splitlines()
        in_force += [json.loads(line) for line in lines if "rules in force" in line]
        daemon.log.unlink()  # the next start waits for its own "daemon running"
    assert [line["changed"] for line in in_force] == [True, False]
