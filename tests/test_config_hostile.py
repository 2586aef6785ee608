"""A hostile daemon configuration: whatever the file holds, loading it gives the settings or
a ConfigError whose every line reads ``file:line: field: problem``, quickly."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from middleware.settings import ConfigError, load_settings
from tests.test_rules_hostile import BILLION_LAUGHS, YAML_TEXTS


def instrument(**fields: object) -> str:
    """One valid instrument with ``fields`` over it, one field a line from line 2."""
    values = {"name": "chem-1", "transport": "tcp-server", "port": 5001, **fields}
    return "instruments:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in values.items()) + "\n"


def refusal(tmp_path: Path, text: str) -> tuple[Path, str]:
    path = tmp_path / "middleware.yaml"
    path.write_text(text)
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert time.monotonic() - started < 5
    return path, str(caught.value)


CASES = {
    "impossible date": ("state_dir: 2027-02-30\n", 1, "state_dir", "day is out of range"),
    "!!int": (instrument(port="!!int abc"), 4, "instruments.0.port", "tag !!int is not accepted"),
    "!!float": (instrument(reply_timeout="!!float x"), 5, "instruments.0.reply_timeout", "!!float"),
    "!!bool": (instrument(enabled="!!bool maybe"), 5, "instruments.0.enabled", "tag !!bool"),
    "!!timestamp": ("state_dir: !!timestamp x\n", 1, "state_dir", "tag !!timestamp"),
    "!!binary": ("state_dir: !!binary aGVsbG8=\n", 1, "state_dir", "tag !!binary"),
    "!!python": (
        "state_dir: !!python/object/apply:os.system ['true']\n",
        1,
        "state_dir",
        "tag !!python/object/apply:os.system is not accepted",
    ),
    "5000 digits": (instrument(port="9" * 5000), 4, "instruments.0.port", "more than 64"),
    "nested lists": (
        "instruments: " + "[" * 2000 + "]" * 2000 + "\n",
        1,
        "instruments.0.0",
        "nested",
    ),
    "nested mappings": ("log: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n", 1, "log.a.a", "nested"),
    "billion laughs": (BILLION_LAUGHS + "instruments: *i\n", 5, "e", "more than 100000 values"),
    # keys that are not names: Settings(**data) raised TypeError
    "number as a name": ("5: x\n", 1, "5", "key '5' is not read as a name: write it in quotes"),
    "number as a test code": (
        instrument(test_map="{101: GLU}"),
        5,
        "instruments.0.test_map.101",
        "key '101' is not read as a name",
    ),
    # PyYAML keeps the last of two equal keys without a word
    "key twice": (
        instrument().replace("port: 5001\n", "port: 5001\n    port: 5002\n"),
        5,
        "instruments.0.port",
        "given twice, at lines 4 and 5",
    ),
    "section twice": ("log: {}\napi: {}\nlog: {}\n", 3, "log", "given twice, at lines 1 and 3"),
    # compiled only when the instrument starts, and re.error is no ValueError for pydantic
    "bad regex": (
        instrument(control_pattern="'QC-('"),
        5,
        "instruments.0.control_pattern",
        "not a valid regular expression: missing ), unterminated subpattern at position 3",
    ),
    "repeat too large": (
        instrument(control_pattern="'a{99999999999}'"),
        5,
        "instruments.0.control_pattern",
        "not a valid regular expression: the repetition number is too large",
    ),
    "regex too deep": (
        instrument(control_pattern=f"'{'(' * 5000}{')' * 5000}'"),
        5,
        "instruments.0.control_pattern",
        "not a valid regular expression: nested too deeply",
    ),
    # known to codecs, unusable by the pipeline
    "bytes codec": (instrument(encoding="hex"), 5, "instruments.0.encoding", "unknown encoding"),
    "utf-16": (instrument(encoding="utf-16"), 5, "instruments.0.encoding", "ASCII as ASCII"),
    "idna": (instrument(encoding="idna"), 5, "instruments.0.encoding", "ASCII as ASCII"),
    "EBCDIC": (instrument(encoding="cp037"), 5, "instruments.0.encoding", "ASCII as ASCII"),
    "no such codec": (instrument(encoding="klingon"), 5, "instruments.0.encoding", "unknown"),
    # an infinite timeout is a timer that never fires
    ".inf": (instrument(reply_timeout=".inf"), 5, "instruments.0.reply_timeout", "not a finite"),
    "1e999": (instrument(frame_timeout="1e999"), 5, "instruments.0.frame_timeout", "finite"),
    "inf backoff": (
        instrument(contention_backoff="inf"),
        5,
        "instruments.0.contention_backoff",
        "finite",
    ),
    # BaseSettings takes these as options of its own
    "_env_prefix": ("_env_prefix: 5\n", 1, "_env_prefix", "Extra inputs are not permitted"),
    "_cli_parse_args": ("_cli_parse_args: true\n", 1, "_cli_parse_args", "Extra inputs"),
    "NUL character": ("log:\n  level: \x00\n", 2, "not valid YAML", "'\\x00'"),
}


@pytest.mark.parametrize(("text", "line", "field", "problem"), CASES.values(), ids=CASES.keys())
def test_hostile_configuration_is_refused_with_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, problem: str
) -> None:
    path, found = refusal(tmp_path, text)
    assert f"{path}:{line}: {field}" in found
    assert problem in found


def test_usable_encodings_and_patterns_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "middleware.yaml"
    path.write_text(instrument(encoding="shift_jis", control_pattern="'^QC-(?P<lot>.+)$'"))
    [config] = load_settings(path).instruments
    assert (config.encoding, config.control_pattern) == ("shift_jis", "^QC-(?P<lot>.+)$")


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path, found = refusal(tmp_path, "_secrets_dir: /etc\nlog: {level: loud}\n")
    assert found.splitlines() == [
        f"{path}:1: _secrets_dir: Extra inputs are not permitted",
        f"{path}:2: log.level: Input should be 'debug', 'info', 'warning' or 'error'",
    ]


def test_environment_that_is_not_json_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIDDLEWARE_INSTRUMENTS", "[")
    with pytest.raises(ConfigError, match=r"^environment: .*instruments"):
        load_settings(None)


@settings(max_examples=200, deadline=None)
@given(text=YAML_TEXTS | st.text(max_size=40))
def test_any_configuration_gives_settings_or_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.getbasetemp() / "random-middleware.yaml"
    path.write_text(text)
    started = time.monotonic()
    try:
        load_settings(path)
    except ConfigError as exc:
        where = re.compile(rf"{re.escape(str(path))}:\d+: \S")
        assert all(where.match(problem) for problem in str(exc).splitlines())
    assert time.monotonic() - started < 5
