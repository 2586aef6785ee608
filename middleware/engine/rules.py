"""The rule files lab IT edits, as pydantic models, and their loading.

A rules directory holds YAML files; each file may hold any of the sections of
:class:`RuleFile`, and the directory's files together make one :class:`Rules`. Every
problem is reported with its file, line and field, and nothing is taken from a directory
that has one; the daemon keeps the rules it had.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import time
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from middleware.engine import westgard
from middleware.engine.westgard import RuleName
from middleware.yamlfile import (
    SETTLE_LIMIT,
    FileError,
    describe,
    field_name,
    line_of,
    read_settled,
)

#: The range of a rule's numbers, as powers of ten, and their significant digits: far
#: beyond any laboratory figure, and exact arithmetic stays quick (on 1E+999999999 it
#: would run for minutes).
MAGNITUDE = 15
DIGITS = 30
#: The longest period a rule may give (validity, delta window, delay, stability): nothing
#: longer means anything in a laboratory, and the date arithmetic would overflow.
LONGEST = timedelta(days=3653)


def _sized(value: Decimal) -> Decimal:
    # the exponent alone: arithmetic on such a value could overflow the decimal context
    if value and not -MAGNITUDE <= value.adjusted() < MAGNITUDE:
        raise ValueError(f"{value} is out of range: 1E-{MAGNITUDE} to 1E+{MAGNITUDE} at most")
    if len(value.as_tuple().digits) > DIGITS:
        raise ValueError(f"more than {DIGITS} digits")
    return value


def _within(unit: str) -> AfterValidator:
    """At most :data:`LONGEST`, counted in ``unit`` (hours, minutes, days)."""
    limit = int(LONGEST / timedelta(**{unit: 1}))

    def check(value: Decimal | int) -> Decimal | int:
        if value > limit:
            raise ValueError(f"at most {limit} {unit} (ten years)")
        return value

    return AfterValidator(check)


TestCode = Annotated[str, Field(min_length=1, max_length=60)]
# Bounds before the validator: pydantic applies them to the decimal itself, and the JSON
# Schema for editors shows them.
Number = Annotated[Decimal, AfterValidator(_sized)]
Positive = Annotated[Decimal, Field(gt=0), AfterValidator(_sized)]
NonNegative = Annotated[Decimal, Field(ge=0), AfterValidator(_sized)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Model):
    """A control's expected value for one test: the manufacturer's until the lab's own
    20-run statistics are approved."""

    mean: Number
    sd: Positive
    units: str = ""


class ControlLot(_Model):
    lot: str = Field(min_length=1)
    level: str = Field(min_length=1, description="the level the lab calls it: 1, 2, low...")
    expiry: date | None = None
    targets: dict[TestCode, Target] = Field(min_length=1)


class ControlMaterial(_Model):
    name: str = Field(min_length=1)
    manufacturer: str = ""
    lots: list[ControlLot] = Field(min_length=1)


class RuleSet(_Model):
    """Which Westgard rules reject a run, which only warn, and how they are applied."""

    rules: list[RuleName] = Field(min_length=1)
    warnings: list[RuleName] = ["1-2s"]
    traditional: bool = False
    """1-2s screens: the other rules are looked at only when it fires."""
    include_rejected: bool = False
    """Keep results of rejected runs in later windows."""

    @model_validator(mode="after")
    def _coherent(self) -> RuleSet:
        # The engine builds its evaluator's set from this one when the first control comes:
        # what it would refuse then (a rule both rejecting and warning) is refused now.
        westgard.RuleSet(
            tuple(self.rules), tuple(self.warnings), self.traditional, self.include_rejected
        )
        return self


class SigmaStep(_Model):
    """Methods whose sigma is at least ``min_sigma`` get ``rule_set``."""

    min_sigma: Number
    rule_set: str


class Sigma(_Model):
    """The method's performance, in percent: sigma = (TEa - |bias|) / CV."""

    tea: Positive
    bias: Number
    cv: Positive

    @property
    def value(self) -> Decimal:
        return (self.tea - abs(self.bias)) / self.cv


class Westgard(_Model):
    rule_sets: dict[str, RuleSet] = {}
    sigma_map: list[SigmaStep] = []


class QcPolicy(_Model):
    """How QC gates release for some tests on some instruments."""

    instruments: list[str] = ["*"]
    tests: list[TestCode] = Field(min_length=1)
    levels: list[str] = Field(min_length=1, description="control levels required")
    validity_hours: Annotated[Positive, _within("hours")] = Decimal(24)
    mode: Literal["continuous", "bracketed"] = "continuous"
    rule_set: str | None = None
    sigma: Sigma | None = None
    max_cv_percent: Positive | None = None
    max_bias_percent: Positive | None = None

    @model_validator(mode="after")
    def _one_way_to_choose_rules(self) -> QcPolicy:
        if self.rule_set and self.sigma:
            raise ValueError("give either rule_set or sigma, not both")
        return self


class Acceptance(_Model):
    """What a sample must be for some tests or sample types; what happens when it is not."""

    name: str = Field(min_length=1)
    tests: list[TestCode] = ["*"]
    sample_types: list[str] = []
    containers: list[str] = []
    min_volume_ul: Positive | None = None
    max_haemolysis: NonNegative | None = None
    max_icterus: NonNegative | None = None
    max_lipaemia: NonNegative | None = None
    max_delay_minutes: Annotated[Positive, _within("minutes")] | None = None
    temperature: Literal["ambient", "refrigerated", "frozen"] | None = None
    require_identification: bool = True
    on_failure: Literal["reject", "accept-with-comment"] = "reject"
    comment: str = ""


class ReagentLot(_Model):
    reagent: str = Field(min_length=1)
    lot: str = Field(min_length=1)
    manufacturer: str = ""
    serial: str = ""
    kind: Literal["reagent", "calibrator", "control", "diluent"] = "reagent"
    expiry: date
    delivered: date | None = None
    opened: date | None = None
    stability_days: Annotated[int, Field(gt=0), _within("days")] | None = None
    recalled: bool = False
    tests: list[TestCode] = []

    @model_validator(mode="after")
    def _stability_ends(self) -> ReagentLot:
        if (
            self.opened is not None
            and self.stability_days is not None
            and date.max - self.opened < timedelta(days=self.stability_days)
        ):
            raise ValueError("opened + stability_days goes past the year 9999")
        return self

    @property
    def effective_expiry(self) -> date:
        """The earlier of the printed expiry and the end of stability once opened."""
        if self.opened is not None and self.stability_days is not None:
            return min(self.expiry, self.opened + timedelta(days=self.stability_days))
        return self.expiry


class Range(_Model):
    """Reference, critical and measurable limits of a test, by sex and age."""

    test: TestCode
    units: str = ""
    sex: Literal["M", "F", "*"] = "*"
    age_min_years: NonNegative = Decimal(0)
    age_max_years: Positive = Decimal(150)
    low: Number | None = None
    high: Number | None = None
    critical_low: Number | None = None
    critical_high: Number | None = None
    measurable_low: Number | None = None
    measurable_high: Number | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        pairs = (
            ("low", "high"),
            ("critical_low", "critical_high"),
            ("measurable_low", "measurable_high"),
            ("age_min_years", "age_max_years"),
        )
        for low, high in pairs:
            a, b = getattr(self, low), getattr(self, high)
            if a is not None and b is not None and a >= b:
                raise ValueError(f"{low} ({a}) must be below {high} ({b})")
        return self


class DeltaCheck(_Model):
    test: TestCode
    absolute: Positive | None = None
    percent: Positive | None = None
    window_hours: Annotated[Positive, _within("hours")] = Decimal(72)

    @model_validator(mode="after")
    def _a_limit(self) -> DeltaCheck:
        if self.absolute is None and self.percent is None:
            raise ValueError("a delta check needs an absolute or a percent limit")
        return self


class Autoverification(_Model):
    enabled: bool = True
    hold_instrument_flags: list[str] = ["*"]
    """Instrument flags that hold a result (* = any flag the driver reports); a flag that
    carries its value (``Blasts?=140``) or its code its text (``E521 Above Assay Range``)
    is listed by its name or code (``Blasts?``, ``E521``)."""
    hold_abnormal_flags: list[str] = ["LL", "HH", "AA"]
    hold_outside_measurable_range: bool = True
    hold_failed_delta: bool = True


#: The holds an early release may go past: a wait for QC, never a finding about the result.
QcWait = Literal["awaiting-closing-qc", "qc-missing", "qc-expired"]


class EarlyRelease(_Model):
    """Q13: results of these tests, on specimens of these priorities, go to the LIS as
    preliminary while they are held only to wait for QC; the final (or a notice that the
    QC failed) follows. Set by the biologist; the result stays held here."""

    tests: list[str] = Field(min_length=1)
    priorities: list[Literal["S", "A"]] = ["S"]
    """Order priorities (the analyser's O.6 or the LIS's order): S stat, A as soon as
    possible."""
    while_waiting_for: list[QcWait] = ["awaiting-closing-qc"]
    """The holds it may go past: the QC that closes a bracketed run, a QC level not yet
    run, a QC that has expired."""
    comment: str = Field(
        default="preliminary: sent before the QC that validates it; a final result follows",
        min_length=1,
    )
    """The note that travels with the preliminary result."""


class RuleFile(_Model):
    """One YAML file of rules; every section is optional."""

    control_materials: list[ControlMaterial] = []
    westgard: Westgard = Westgard()
    qc_policies: list[QcPolicy] = []
    acceptance: list[Acceptance] = []
    reagent_lots: list[ReagentLot] = []
    ranges: list[Range] = []
    delta_checks: list[DeltaCheck] = []
    autoverification: Autoverification | None = None
    early_release: list[EarlyRelease] = []


class Rules(_Model):
    """All the rule files of a directory, checked together."""

    control_materials: list[ControlMaterial] = []
    rule_sets: dict[str, RuleSet] = {}
    sigma_map: list[SigmaStep] = []
    qc_policies: list[QcPolicy] = []
    acceptance: list[Acceptance] = []
    reagent_lots: list[ReagentLot] = []
    ranges: list[Range] = []
    delta_checks: list[DeltaCheck] = []
    autoverification: Autoverification = Autoverification()
    early_release: list[EarlyRelease] = []
    sources: list[str] = []

    def rule_set_for(self, policy: QcPolicy) -> RuleSet:
        """The policy's rule set, named or chosen from its sigma by the sigma map."""
        if policy.rule_set:
            return self.rule_sets[policy.rule_set]
        if policy.sigma is not None and self.sigma_map:
            steps = sorted(self.sigma_map, key=lambda s: s.min_sigma, reverse=True)
            sigma = policy.sigma.value
            # Below every step, the lowest step's set, the strictest (as westgard's
            # rule_set_for_sigma): a method worse than the map foresees needs more control.
            chosen = next((s for s in steps if sigma >= s.min_sigma), steps[-1])
            return self.rule_sets[chosen.rule_set]
        return self.rule_sets["default"]

    def summary(self) -> str:
        return (
            f"{len(self.sources)} files: {len(self.control_materials)} control materials, "
            f"{len(self.rule_sets)} rule sets, {len(self.qc_policies)} QC policies, "
            f"{len(self.acceptance)} acceptance criteria, {len(self.reagent_lots)} reagent "
            f"lots, {len(self.ranges)} ranges, {len(self.delta_checks)} delta checks, "
            f"{len(self.early_release)} early releases"
        )


def _shadowed(earlier: list[str], later: list[str]) -> str:
    """The instruments on which a policy read earlier decides for one read later (the
    first that covers an instrument and test is its policy), named; empty when none. A
    policy for some instruments read before one for every instrument is an override."""
    if "*" in earlier:
        return "every instrument" if "*" in later else ", ".join(sorted(set(later)))
    if "*" in later:
        return ""
    return ", ".join(sorted(set(earlier) & set(later)))


def _cross_check(
    rules: Rules, origin: dict[str, tuple[Path, Any, tuple[int | str, ...]]]
) -> list[str]:
    """Problems only visible across files, e.g. a policy naming a rule set nobody defines."""
    problems: list[str] = []

    def at(key: str, *field: int | str) -> str:
        """``file:line: field`` of ``field`` in the item ``key`` of the merged rules."""
        path, root, loc = origin[key]
        line = line_of(root, (*loc, *field))
        where = f"{path}:{line}" if line else str(path)
        return f"{where}: {field_name((*loc, *field))}"

    if "default" not in rules.rule_sets:
        where = at("rule_sets") if "rule_sets" in origin else "rules"
        problems.append(f"{where}: no rule set named 'default' (used by policies that name none)")
    for i, step in enumerate(rules.sigma_map):
        if step.rule_set not in rules.rule_sets:
            problems.append(
                f"{at(f'sigma_map.{i}', 'rule_set')}: unknown rule set {step.rule_set!r}"
            )
    for i, policy in enumerate(rules.qc_policies):
        if policy.rule_set and policy.rule_set not in rules.rule_sets:
            problems.append(
                f"{at(f'qc_policies.{i}', 'rule_set')}: unknown rule set {policy.rule_set!r}"
            )
    covered = {test for policy in rules.qc_policies for test in policy.tests}
    for i, early in enumerate(rules.early_release):
        for j, test in enumerate(early.tests):
            if test not in covered:
                problems.append(
                    f"{at(f'early_release.{i}', 'tests', j)}: no QC policy covers {test}: "
                    "its results never wait for QC, there is nothing to release early"
                )
    seen_lots: set[tuple[str, str]] = set()
    for i, lot in enumerate(rules.reagent_lots):
        if (lot.reagent, lot.lot) in seen_lots:
            problems.append(
                f"{at(f'reagent_lots.{i}')}: lot {lot.lot} of {lot.reagent} is listed twice"
            )
        seen_lots.add((lot.reagent, lot.lot))
    # A policy that never decides for an instrument it names (one read before it covers the
    # test there), and a lot number of two materials or levels: the first found would win
    # without a word, and an edit to the other would change nothing.
    policies: dict[str, list[int]] = {}
    for i, policy in enumerate(rules.qc_policies):
        for j, test in enumerate(policy.tests):
            if i in policies.get(test, []):
                continue  # the same test twice in one policy
            for k in policies.get(test, []):
                hidden = _shadowed(rules.qc_policies[k].instruments, policy.instruments)
                if hidden:
                    problems.append(
                        f"{at(f'qc_policies.{i}', 'tests', j)}: {test} on {hidden} has a "
                        f"policy already ({at(f'qc_policies.{k}', 'tests')}), read before "
                        "this one: this one would never apply there"
                    )
            policies.setdefault(test, []).append(i)
    # A level no control lot measures the test at: its results would wait for a QC that
    # can never come, held until someone reads the rules.
    measured = {
        (control.level, test)
        for material in rules.control_materials
        for control in material.lots
        for test in control.targets
    }
    for i, policy in enumerate(rules.qc_policies):
        for k, level in enumerate(policy.levels):
            missing = [test for test in policy.tests if (level, test) not in measured]
            if missing:
                problems.append(
                    f"{at(f'qc_policies.{i}', 'levels', k)}: no control lot of level {level} "
                    f"has a target for {', '.join(missing)}: its results would wait for a QC "
                    "that cannot come"
                )
    lots: dict[str, str] = {}
    for i, material in enumerate(rules.control_materials):
        for j, control in enumerate(material.lots):
            here = at(f"control_materials.{i}", "lots", j, "lot")
            if control.lot in lots:
                problems.append(
                    f"{here}: control lot {control.lot} is listed twice (also {lots[control.lot]})"
                )
            lots.setdefault(control.lot, here)
    # The bias in percent (max_bias_percent) is divided by the target's mean.
    bias_limits: dict[str, int] = {}
    for k, policy in enumerate(rules.qc_policies):
        if policy.max_bias_percent is not None:
            for test in policy.tests:
                bias_limits.setdefault(test, k)
    for i, material in enumerate(rules.control_materials):
        for j, control in enumerate(material.lots):
            for test, target in control.targets.items():
                if target.mean == 0 and test in bias_limits:
                    limit = at(f"qc_policies.{bias_limits[test]}", "max_bias_percent")
                    problems.append(
                        f"{at(f'control_materials.{i}', 'lots', j, 'targets', test, 'mean')}: "
                        f"cannot be 0: the bias limit in percent of the mean ({limit}) "
                        "divides by it"
                    )
    return problems


def load_rules(directory: Path, settle: float = 0.0) -> Rules:
    """Read every ``*.yaml``/``*.yml`` file of ``directory``; raise FileError listing every
    problem (file:line: field: message) if there is any. A file changed less than
    ``settle`` seconds ago is read once it has not changed for that long (it may still be
    being written); one that changes while it is read is refused."""
    files = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not directory.is_dir():
        raise FileError([f"{directory}: not a directory"])
    problems: list[str] = []
    merged: dict[str, Any] = {
        "control_materials": [], "rule_sets": {}, "sigma_map": [], "qc_policies": [],
        "acceptance": [], "reagent_lots": [], "ranges": [], "delta_checks": [],
        "early_release": [],
    }  # fmt: skip
    origin: dict[str, tuple[Path, Any, tuple[int | str, ...]]] = {}
    autoverification: Autoverification | None = None
    deadline = time.monotonic() + SETTLE_LIMIT  # one wait for all the files, at most
    for path in files:
        try:
            data, root = read_settled(path, settle, deadline)
            if not data:
                # Most often a file caught while it is being written: taken, it would put
                # in force rules without its ranges, criteria or policies.
                problems.append(
                    f"{path}:1: holds no section: an empty rule file is refused (remove it, "
                    "or give its section as an empty list)"
                )
                continue
            parsed = RuleFile.model_validate(data)
        except FileError as exc:
            problems.extend(exc.problems)
            continue
        except ValidationError as exc:
            problems.extend(describe(exc, path, root))
            continue
        for section in ("control_materials", "qc_policies", "acceptance", "reagent_lots",
                        "ranges", "delta_checks", "early_release"):  # fmt: skip
            items = getattr(parsed, section)
            for i, _ in enumerate(items):
                origin[f"{section}.{len(merged[section]) + i}"] = (path, root, (section, i))
            merged[section].extend(items)
        for i, _ in enumerate(parsed.westgard.sigma_map):
            place = ("westgard", "sigma_map", i)
            origin[f"sigma_map.{len(merged['sigma_map']) + i}"] = (path, root, place)
        merged["sigma_map"].extend(parsed.westgard.sigma_map)
        for name, rule_set in parsed.westgard.rule_sets.items():
            if name in merged["rule_sets"]:
                at_name = ("westgard", "rule_sets", name)
                line = line_of(root, at_name)
                problems.append(f"{path}:{line}: {field_name(at_name)}: defined in two files")
            merged["rule_sets"][name] = rule_set
            origin.setdefault("rule_sets", (path, root, ("westgard", "rule_sets")))
        if parsed.autoverification is not None:
            if autoverification is not None:
                line = line_of(root, ("autoverification",))
                problems.append(f"{path}:{line}: autoverification: defined in two files")
            autoverification = parsed.autoverification
    if not files:
        problems.append(f"{directory}: no rule files (*.yaml)")
    if problems:
        raise FileError(problems)
    rules = Rules(
        **merged,
        autoverification=autoverification or Autoverification(),
        sources=[str(p) for p in files],
    )
    problems = _cross_check(rules, origin)
    if problems:
        raise FileError(problems)
    return rules


def schema() -> dict[str, Any]:
    """The JSON Schema of one rule file, for editors."""
    document = RuleFile.model_json_schema()
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["title"] = "Laboratory middleware rule file"
    return document


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"


def diff(old: Rules | None, new: Rules) -> str:
    """What a reload changes, as a unified diff of the rules in JSON, for the audit log."""
    before = [] if old is None else _lines(old)
    return "".join(difflib.unified_diff(before, _lines(new), "before", "after"))


def as_json(rules: Rules) -> tuple[str, str]:
    """The rules as JSON, to be put in force on other daemons, and the digest that tells
    whether two sets of rules are the same wherever their files are."""
    text = json.dumps(rules.model_dump(mode="json"), sort_keys=True)
    content = json.dumps(rules.model_dump(mode="json", exclude={"sources"}), sort_keys=True)
    return text, hashlib.sha256(content.encode()).hexdigest()


def from_json(text: str) -> Rules:
    """Rules another daemon validated and put in force (:func:`as_json`)."""
    return Rules.model_validate(json.loads(text))


def _lines(rules: Rules) -> list[str]:
    text = json.dumps(rules.model_dump(mode="json", exclude={"sources"}), indent=1, sort_keys=True)
    return [line + "\n" for line in text.splitlines()]
