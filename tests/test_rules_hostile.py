"""Hostile rule files: whatever a file holds, loading it gives the rules or a FileError whose
every line reads ``file:line: field: problem``, quickly; and a refused reload over the
control API is a 422 that leaves the rules in force as they were."""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

import middleware.settings as config_models
from middleware.daemon import Daemon
from middleware.domain import ControlResult, Measurement, Result
from middleware.engine import rules as rule_models
from middleware.engine.engine import Engine
from middleware.engine.qc import RESULTS_FOR_OWN_LIMITS, to_westgard
from middleware.engine.rules import load_rules
from middleware.settings import ApiConfig, Settings
from middleware.web.api import create_app
from middleware.web.roles import Role
from middleware.yamlfile import FileError
from tests import credentials
from tests.conftest import ROOT
from tests.qc_memory import InMemoryGate

HOSTILE = "zz-hostile.yaml"  # read last: its items come after the shipped ones
BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 10)}]\n"
    for a, b in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(ROOT / "rules", target)
    return target


def refusal(directory: Path, text: str) -> str:
    """The problems loading ``directory`` gives once ``text`` is added as a rule file."""
    (directory / HOSTILE).write_text(text)
    started = time.monotonic()
    with pytest.raises(FileError) as caught:
        load_rules(directory)
    assert time.monotonic() - started < 5
    return "\n".join(caught.value.problems)


def lot(**fields: object) -> str:
    """A reagent lot with ``fields`` over a valid one, one field a line from line 2."""
    values = {"reagent": "K reagent", "lot": "'12'", "expiry": "2027-05-31", **fields}
    return "reagent_lots:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in values.items()) + "\n"


def low(value: str) -> str:
    """A range whose ``low`` (line 3) is ``value`` as written."""
    return f"ranges:\n  - test: K\n    low: {value}\n    high: 5\n"


def control(target: str, policy: str = "") -> str:
    """A control material with one target (line 7) and a QC policy for its test (line 9)."""
    return (
        "control_materials:\n"
        "  - name: Zero control\n"
        "    lots:\n"
        "      - lot: Z-1\n"
        "        level: '1'\n"
        "        targets:\n"
        f"          ZZ: {target}\n"
        "qc_policies:\n"
        f"  - {{tests: [ZZ], levels: ['1'], rule_set: default{policy}}}\n"
    )


CASES = {
    # a date that matches YAML's timestamp pattern but does not exist
    "impossible date": (lot(expiry="2027-02-30"), 4, "reagent_lots.0.expiry", "day is out"),
    "impossible time zone": (
        lot(expiry="2027-02-01 10:00:00 +99:00"),
        4,
        "reagent_lots.0.expiry",
        "cannot read",
    ),
    # explicit tags: each used to escape as ValueError, KeyError, AttributeError...
    "!!int": (low("!!int abc"), 3, "ranges.0.low", "tag !!int is not accepted"),
    "!!float": (low("!!float x"), 3, "ranges.0.low", "tag !!float is not accepted"),
    "!!bool": (low("!!bool maybe"), 3, "ranges.0.low", "tag !!bool is not accepted"),
    "!!timestamp": (lot(expiry="!!timestamp x"), 4, "reagent_lots.0.expiry", "tag !!timestamp"),
    "!!binary": (lot(lot="!!binary aGVsbG8="), 3, "reagent_lots.0.lot", "tag !!binary"),
    "!!python": (
        low("!!python/object/apply:os.system ['true']"),
        3,
        "ranges.0.low",
        "tag !!python/object/apply:os.system is not accepted",
    ),
    "!!str on a key": ("!!str ranges: []\n", 1, "(top level)", "tag !!str is not accepted"),
    "local tag": (low("!decimal 3"), 3, "ranges.0.low", "tag !decimal is not accepted"),
    "5000 digits": (low("9" * 5000), 3, "ranges.0.low", "more than 64 characters"),
    "beyond int64": (low(str(2**63)), 3, "ranges.0.low", "too large"),
    "empty binary number": (low("0b_"), 3, "ranges.0.low", "cannot read '0b_'"),
    "60-based number": (low("1" + ":00" * 30), 3, "ranges.0.low", "more than 64 characters"),
    ".inf": (low(".inf"), 3, "ranges.0.low", "not a finite number"),
    "float overflow": (low("1.0e+999"), 3, "ranges.0.low", "not a finite number"),
    "huge exponent": (low("1e999999999"), 3, "ranges.0.low", "1E+999999999 is out of range"),
    "tiny exponent": (low("1e-999999999"), 3, "ranges.0.low", "is out of range"),
    "40 digits": (low(f"'1.{'0' * 38}1'"), 3, "ranges.0.low", "more than 30 digits"),
    "NaN": (low("NaN"), 3, "ranges.0.low", "finite number"),
    "Infinity": (low("-Infinity"), 3, "ranges.0.low", "finite number"),
    # 2000 levels: RecursionError
    "nested lists": ("ranges: " + "[" * 2000 + "]" * 2000 + "\n", 1, "ranges.0.0.0", "nested"),
    "nested mappings": (
        "westgard: " + "{a: " * 2000 + "1" + "}" * 2000 + "\n",
        1,
        "westgard.a.a.a",
        "nested more than 50 levels deep",
    ),
    "billion laughs": (BILLION_LAUGHS + "ranges: *i\n", 5, "e", "more than 100000 values"),
    "alias in itself": ("ranges: &r [*r]\n", 1, "ranges", "an alias inside the value it names"),
    # merged mappings are flattened recursively: RecursionError
    "merge chain": (
        "m0: &m0 {k: 1}\n" + "".join(f"m{i}: &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 1000)),
        50,
        "m49",
        "aliases nest this more than 50 levels deep",
    ),
    # keys that are not names
    "number as a name": (
        "westgard:\n  rule_sets:\n    5: {rules: [1-3s]}\n",
        3,
        "westgard.rule_sets.5",
        "key '5' is not read as a name: write it in quotes",
    ),
    "number as a test code": (
        control("{mean: 1, sd: 1}").replace("ZZ:", "101:"),
        7,
        "control_materials.0.lots.0.targets.101",
        "key '101' is not read as a name",
    ),
    "yes as a key": ("yes: 1\n", 1, "yes", "key 'yes' is not read as a name"),
    "empty key": ("? \n: 1\n", 1, "(top level)", "is not read as a name"),
    "list as a key": ("? [a, b]\n: 1\n", 1, "(top level)", "a key must be a name"),
    # PyYAML keeps the last of two equal keys without a word
    "key twice": (
        low("3\n    low: 4"),
        4,
        "ranges.0.low",
        "given twice, at lines 3 and 4",
    ),
    "section twice": (
        "ranges: []\nacceptance: []\nranges: []\n",
        3,
        "ranges",
        "given twice, at lines 1 and 3",
    ),
    # divisions by a rule's number
    "mean 0 under a bias limit": (
        control("{mean: 0, sd: 1}", ", max_bias_percent: 5"),
        7,
        "control_materials.0.lots.0.targets.ZZ.mean",
        "cannot be 0: the bias limit in percent of the mean",
    ),
    "sd 0": (
        control("{mean: 5, sd: 0}"),
        7,
        "control_materials.0.lots.0.targets.ZZ.sd",
        "greater than 0",
    ),
    "negative sd": (
        control("{mean: 5, sd: -1}"),
        7,
        "control_materials.0.lots.0.targets.ZZ.sd",
        "greater than 0",
    ),
    # accepted at load, then raising in the engine
    "rule both rejecting and warning": (
        "westgard:\n  rule_sets:\n    strict: {rules: [1-3s, 1-2s], warnings: [1-2s]}\n",
        3,
        "westgard.rule_sets.strict",
        "1-2s cannot both reject and only warn",
    ),
    "stability past 9999": (
        lot(expiry="9999-12-31", opened="9999-12-01", stability_days=60),
        2,
        "reagent_lots.0",
        "opened + stability_days goes past the year 9999",
    ),
    "stability of a million years": (
        lot(stability_days=365_000_000),
        5,
        "reagent_lots.0.stability_days",
        "at most 3653 days",
    ),
    "validity beyond timedelta": (
        control("{mean: 5, sd: 1}", ", validity_hours: 1e12"),
        9,
        "qc_policies.0.validity_hours",
        "at most 87672 hours",
    ),
    "delta window beyond timedelta": (
        "delta_checks:\n  - {test: K, absolute: 1, window_hours: 1e14}\n",
        2,
        "delta_checks.0.window_hours",
        "at most 87672 hours",
    ),
    # text PyYAML's reader refuses: its message had no line and spread over two
    "NUL character": ("ranges: []\nacceptance: [\x00]\n", 2, "not valid YAML", "'\\x00'"),
}


@pytest.mark.parametrize(("text", "line", "field", "problem"), CASES.values(), ids=CASES.keys())
def test_hostile_rule_file_is_refused_with_file_line_and_field(
    rules_dir: Path, text: str, line: int, field: str, problem: str
) -> None:
    found = refusal(rules_dir, text)
    assert f"{rules_dir / HOSTILE}:{line}: {field}" in found
    assert problem in found


def test_mean_0_is_fine_under_a_cv_limit_alone(rules_dir: Path) -> None:
    (rules_dir / HOSTILE).write_text(control("{mean: 0, sd: 1}", ", max_cv_percent: 5"))
    gate = InMemoryGate(load_rules(rules_dir))
    for minute in range(RESULTS_FOR_OWN_LIMITS):  # a whole cycle: CV and bias are computed
        result = Result(specimen_id="QC", test_code="ZZ", instrument_test_code="ZZ",
                        value=Measurement.parse(str(minute % 3)), instrument="chem-1")  # fmt: skip
        outcome = gate.record_control(
            ControlResult(result, "Zero control", "Z-1"), datetime(2026, 3, 1, 8, minute)
        )
        assert outcome.evaluation is not None and not outcome.locked


def test_merge_keys_and_aliases_still_work(rules_dir: Path) -> None:
    (rules_dir / HOSTILE).write_text(
        "ranges:\n"
        "  - &adult {test: K, low: 3.5, high: 5.1, age_min_years: 18}\n"
        "  - <<: *adult\n"
        "    sex: F\n"
        "    high: 5.0\n"
    )
    ranges = load_rules(rules_dir).ranges[-2:]
    assert [(r.sex, str(r.low), str(r.high)) for r in ranges] == [
        ("*", "3.5", "5.1"),
        ("F", "3.5", "5.0"),
    ]


def test_every_problem_of_a_file_is_listed(rules_dir: Path) -> None:
    found = refusal(rules_dir, "ranges: []\nranges: []\nacceptance: []\n1: x\nexpiry: 2027-13-01\n")
    path = rules_dir / HOSTILE
    assert found.splitlines() == [
        f"{path}:2: ranges: given twice, at lines 1 and 2",
        f"{path}:4: 1: key '1' is not read as a name: write it in quotes",
        f"{path}:5: expiry: cannot read '2027-13-01': month must be in 1..12",
    ]


def test_a_file_too_long_is_refused_before_it_is_read(rules_dir: Path) -> None:
    found = refusal(rules_dir, "# a comment\n" * 100_000)
    assert found == f"{rules_dir / HOSTILE}: longer than 1000000 characters: split it"


# --- random files -----------------------------------------------------------------------

#: Every field name of the rule files and of the daemon configuration.
NAMES = sorted(
    {
        name
        for module in (rule_models, config_models)
        for model in vars(module).values()
        if isinstance(model, type) and issubclass(model, BaseModel)
        for name in model.model_fields
    }
)
#: Pieces of YAML that once made a loader raise or stall, and its punctuation.
TOKENS = [
    *("\n", "  ", "- ", ": ", "? ", "[", "]", "{", "}", ", ", "'", '"', "#", "|", ">", "\t"),
    *("&a ", "*a", "&b ", "*b", "<<: ", "<<: *a", "---\n", "...\n", "%YAML 1.1\n", "~", "="),
    *("!!int ", "!!float ", "!!bool ", "!!timestamp ", "!!binary ", "!!set ", "!!omap ", "! "),
    *("!!python/object/apply:os.system ", "!!python/name:os.system ", "!local "),
    *("2027-02-30", "2027-02-28", "2027-02-28 25:00:00", "2027-02-28T10:00:00+99:00"),
    *("0b_", "0x_", "0o", "._", "1:2:3", "190:20:30.15", "1_000", "-0", "+.inf", ".NaN"),
    *("1e999999999", "1e-999999999", "1.0e+999", "NaN", "Infinity", "9" * 100, "1" * 30),
    *("yes", "No", "ON", "null", "\x00", "\ufeff", "\x85", "é", "\U0001f600", "\\"),
    *("1-3s", "2-2s", "R-4s", "1-2s", "default", "rule_sets", "GLU", "K", "*"),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.dates(),
    st.text(max_size=12),
    st.sampled_from(TOKENS),
)
KEYS = st.one_of(st.sampled_from(NAMES), st.text(max_size=6), st.integers(-2, 2), st.none())
STRUCTURES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=25,
)
DUMPED = st.dictionaries(st.sampled_from(NAMES), STRUCTURES, max_size=4).map(
    lambda data: yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
)


@st.composite
def _spliced(draw: st.DrawFn) -> str:
    """A dumped document with a few tokens written into it anywhere."""
    text = draw(DUMPED)
    for token in draw(st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3)):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + token + text[at:]
    return text


#: Text a loader may be given: dumped structures, tampered with or not, and token soup.
YAML_TEXTS = st.one_of(
    DUMPED,
    _spliced(),
    st.lists(st.sampled_from(TOKENS + NAMES) | st.text(max_size=4), max_size=50).map("".join),
    st.integers(1, 3000).map(lambda n: "ranges: " + "[" * n + "]" * n),
)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rules directory of one small valid file, to which each example adds its own."""
    directory = tmp_path_factory.mktemp("random-rules")
    (directory / "base.yaml").write_text(
        "westgard:\n  rule_sets:\n    default: {rules: [1-3s, 2-2s]}\n"
        "qc_policies:\n  - {tests: [GLU], levels: ['1']}\n"
    )
    return directory


@settings(max_examples=200, deadline=None)
@given(text=YAML_TEXTS)
def test_any_rule_file_gives_rules_or_a_file_error(random_dir: Path, text: str) -> None:
    (random_dir / "random.yaml").write_text(text)
    started = time.monotonic()
    try:
        rules = load_rules(random_dir)
    except FileError as exc:
        where = re.compile(rf"{re.escape(str(random_dir))}/\w+\.yaml:\d+: \S")
        assert exc.problems
        assert all(where.match(problem) and "\n" not in problem for problem in exc.problems)
    else:
        # what was accepted, the engine can work with
        Engine(rules)
        for policy in rules.qc_policies:
            to_westgard(rules.rule_set_for(policy))
    assert time.monotonic() - started < 5


# --- the control API ----------------------------------------------------------------------

API_CASES = {
    "impossible date": (lot(expiry="2027-02-30"), 4),
    "!!python tag": (low("!!python/object/apply:os.system ['true']"), 3),
    "2000 levels": ("ranges: " + "[" * 2000 + "]" * 2000 + "\n", 1),
    "huge exponent": (low("1e999999999"), 3),
    "key twice": (low("3\n    low: 4"), 4),
}


@pytest.mark.parametrize(("text", "line"), API_CASES.values(), ids=API_CASES.keys())
async def test_hostile_reload_over_the_api_is_refused_and_the_rules_stay(
    tmp_path: Path, rules_dir: Path, text: str, line: int
) -> None:
    daemon = Daemon(Settings(state_dir=tmp_path / "state", rules_dir=rules_dir, api=ApiConfig()))
    await daemon.start()
    try:
        in_force = daemon.control.rules
        app = create_app(daemon.control, lambda: daemon.connections)
        transport = httpx.ASGITransport(app=app)
        assert daemon.store is not None
        headers = credentials.bearer(daemon.store, Role.BIOLOGIST, "dr-lab")
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers
        ) as api:
            (rules_dir / HOSTILE).write_text(text)
            refused = await api.post("/api/rules/reload")
            assert refused.status_code == 422, refused.text
            problems = refused.json()["detail"]["problems"]
            assert problems[0].startswith(f"{rules_dir / HOSTILE}:{line}: ")
            assert daemon.control.rules is in_force
            (rules_dir / HOSTILE).unlink()
            accepted = await api.post("/api/rules/reload")
            assert accepted.status_code == 200 and accepted.json()["accepted"]
    finally:
        await daemon.stop()
