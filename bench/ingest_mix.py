"""What the ingest bench sends: a laboratory's mix of patient and control samples, derived
from a rules directory, and the ASTM records of each sample.

Analysers are of the kinds the control materials of the rules define (chemistry,
haematology, immunoassay with the shipped rules); each runs the tests of its kind that a
QC policy covers and that its control material has targets for, at every level the policy
requires. Each analyser's sequence is: one control sample of every required level, then
patient samples, and again one control of every level after each ``qc_every`` patients
(and at the end, so that bracketed QC closes the last run).

Patients are new or, for a share of samples, seen before (among the latest patients of
the same kind of analyser), so that delta checks find a previous result. A patient's
sex, age and a baseline per test come from the patient id alone (seeded), so a repeat
sample lands near the earlier one whether the earlier one was sent live or written by the
prefill. Values are drawn around the middle of the reference range (from the rules where
they give one, else a typical adult interval below).

Control values stay in control on purpose: within 1.7 SD of the target, never on the
same side of the mean more than twice in a row (the sign alternates by run and by level),
so that no Westgard rule of the shipped rule sets fires and QC never stops release. Real
QC fails now and then; this bench measures the path of a day when it does not.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from middleware.engine.rules import Range, Rules, load_rules

ENQ, ACK, NAK, EOT, STX, ETX = b"\x05", b"\x06", b"\x15", b"\x04", b"\x02", b"\x03"

#: Typical adult reference intervals (low, high) for tests the rule files give no range
#: for, in the units of the control targets.
TYPICAL: dict[str, tuple[float, float]] = {
    "UREA": (2.5, 7.8),
    "TP": (64, 83),
    "ALB": (35, 52),
    "TBIL": (5, 21),
    "AST": (10, 40),
    "ALT": (7, 56),
    "ALP": (40, 130),
    "GGT": (9, 48),
    "CRP": (0.3, 8),
    "FT4": (12, 22),
    "RBC": (4.2, 5.9),
    "HCT": (36, 50),
}
#: Decimals an analyser reports a patient result with.
DECIMALS: dict[str, int] = {
    "GLU": 1, "CREA": 0, "UREA": 1, "K": 1, "NA": 0, "CA": 2, "TP": 0, "ALB": 0,
    "TBIL": 0, "AST": 0, "ALT": 0, "ALP": 0, "GGT": 0, "CRP": 1, "TSH": 2, "FT4": 1,
    "WBC": 1, "RBC": 2, "HGB": 1, "HCT": 1, "PLT": 0,
}  # fmt: skip
#: Within-patient variation between two samples, as a fraction of the value.
WITHIN_PATIENT_CV = 0.04
#: Analyser kinds in the order analysers get them: with 10 analysers, 6 chemistry,
#: 2 haematology, 2 immunoassay.
PATTERN = ("chemistry", "haematology", "chemistry", "immunoassay", "chemistry")
#: Specimen type per kind (O.16); the acceptance rules check it where they name one.
SPECIMEN_TYPE = {"haematology": "whole blood"}
#: Repeat patients are drawn among this many latest patients of the same kind.
RECENT_PATIENTS = 200


def frame(number: int, text: bytes) -> bytes:
    body = str(number % 8).encode() + text + ETX
    return STX + body + b"%02X" % (sum(body) % 256) + b"\r\n"


def frames(records: list[str]) -> list[bytes]:
    """One record per frame, as most analysers send them."""
    return [frame(i, r.encode("latin-1") + b"\r") for i, r in enumerate(records, start=1)]


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


@dataclass(frozen=True, slots=True)
class Limits:
    low: float
    high: float
    critical_low: float | None = None
    critical_high: float | None = None


@dataclass(frozen=True, slots=True)
class TestSpec:
    code: str
    units: str
    decimals: int
    by_sex: dict[str, Limits]
    """Reference and critical limits for "M", "F" (the same when the rules do not
    distinguish)."""
    ruled: bool
    """The limits are the rules' (the engine notes values outside them), not typical ones."""


@dataclass(frozen=True, slots=True)
class Control:
    lot: str
    level: str
    targets: dict[str, tuple[float, float]]  # test -> (mean, sd)


@dataclass(frozen=True, slots=True)
class Kind:
    name: str
    letter: str
    tests: tuple[TestSpec, ...]
    controls: tuple[Control, ...]
    specimen_type: str
    bracketed: frozenset[str]
    """Tests whose QC policy is bracketed: patients wait for the closing QC."""


def _limits(ranges: list[Range], test: str, sex: str) -> Limits | None:
    """The rules' range for a test and sex (the patients are all adults)."""
    best: Range | None = None
    for r in ranges:
        if r.test != test or r.sex not in ("*", sex):
            continue
        if best is None or (best.sex == "*" and r.sex != "*"):
            best = r
    if best is None or best.low is None or best.high is None:
        return None

    def f(v: Decimal | int | None) -> float | None:
        return None if v is None else float(v)

    return Limits(float(best.low), float(best.high), f(best.critical_low), f(best.critical_high))


def catalogue(rules: Rules) -> dict[str, Kind]:
    """The analyser kinds the rules make QC possible for, by name."""
    kinds: dict[str, Kind] = {}
    for material in rules.control_materials:
        name = material.name.lower().removesuffix(" control").strip() or material.name
        tests: list[str] = []
        levels: set[str] = set()
        bracketed: set[str] = set()
        for policy in rules.qc_policies:
            if "*" not in policy.instruments:
                continue
            for test in policy.tests:
                lots = [lot for lot in material.lots if lot.level in policy.levels]
                covered = {lot.level for lot in lots if test in lot.targets}
                if covered != set(policy.levels) or test in tests:
                    continue
                tests.append(test)
                levels.update(policy.levels)
                if policy.mode == "bracketed":
                    bracketed.add(test)
        if not tests:
            continue
        controls = tuple(
            Control(
                lot.lot,
                lot.level,
                {t: (float(lot.targets[t].mean), float(lot.targets[t].sd)) for t in tests},
            )
            for lot in material.lots
            if lot.level in levels
        )
        specs = []
        for test in tests:
            units = next(lot.targets[test].units for lot in material.lots if test in lot.targets)
            by_sex = {}
            ruled = True
            for sex in ("M", "F"):
                limits = _limits(rules.ranges, test, sex)
                if limits is None:
                    ruled = False
                    low, high = TYPICAL.get(test, _around(controls, test))
                    limits = Limits(low, high)
                by_sex[sex] = limits
            specs.append(TestSpec(test, units, DECIMALS.get(test, 2), by_sex, ruled))
        taken = {k.letter for k in kinds.values()}
        letter = next(c for c in name.upper() + "XYZ" if c.isalpha() and c not in taken)
        kinds[name] = Kind(
            name,
            letter,
            tuple(specs),
            controls,
            SPECIMEN_TYPE.get(name, "serum"),
            frozenset(bracketed),
        )
    return kinds


def _around(controls: tuple[Control, ...], test: str) -> tuple[float, float]:
    """A made-up interval for a test nobody gave one for: around its lowest control."""
    mean = min(c.targets[test][0] for c in controls)
    return mean * 0.7, mean * 1.3


def load(directory: Path) -> dict[str, Kind]:
    return catalogue(load_rules(directory))


@dataclass(frozen=True, slots=True)
class Plan:
    """One analyser: its name in the daemon's configuration, kind and test menu."""

    index: int
    name: str
    kind: Kind
    panel: tuple[TestSpec, ...]

    @property
    def sender(self) -> str:
        return f"BENCH-{self.kind.name.upper()}^{self.index}"


def plans(kinds: dict[str, Kind], analysers: int, results: int) -> list[Plan]:
    order = [kinds[name] for name in PATTERN if name in kinds] or list(kinds.values())
    out = []
    for i in range(analysers):
        kind = order[i % len(order)]
        n = len(kind.tests)
        count = max(1, min(results, n))
        offset = (i * 5) % n if count < n else 0
        rotated = kind.tests[offset:] + kind.tests[:offset]
        out.append(Plan(i, f"an{i}", kind, rotated[:count]))
    return out


def control_pattern(plan: Plan) -> str:
    """The control_pattern configured for the analyser: its control lots, exactly (the
    generic driver names the material after the sample id, which the QC gate then takes
    for the lot number)."""
    return "^(" + "|".join(c.lot.replace("-", r"\-") for c in plan.kind.controls) + ")$"


@dataclass(slots=True)
class Person:
    patient_id: str
    sex: str
    birth: date
    baseline: dict[str, float]


class Patients:
    """Patient ids per kind of analyser (``C00000042``), new or seen before."""

    def __init__(
        self, kinds: dict[str, Kind], repeat: float, next_numbers: dict[str, int] | None = None
    ) -> None:
        self.kinds = kinds
        self.repeat = repeat
        self.next = {k.letter: 0 for k in kinds.values()} | (next_numbers or {})
        self._people: dict[str, Person] = {}

    def pick(self, kind: Kind, rng: random.Random) -> tuple[Person, bool]:
        """A patient for a new sample, and whether they were seen before."""
        top = self.next[kind.letter]
        if top and rng.random() < self.repeat:
            number, seen = rng.randrange(max(0, top - RECENT_PATIENTS), top), True
        else:
            number, seen = top, False
            self.next[kind.letter] = top + 1
        return self.person(kind, f"{kind.letter}{number:08d}"), seen

    def person(self, kind: Kind, patient_id: str) -> Person:
        found = self._people.get(patient_id)
        if found is None:
            rng = random.Random(patient_id)
            sex = rng.choice("FM")
            age = rng.randint(18, 90)
            birth = date(2026 - age, rng.randint(1, 12), rng.randint(1, 28))
            baseline = {}
            for spec in kind.tests:
                limits = spec.by_sex[sex]
                middle, spread = (limits.low + limits.high) / 2, (limits.high - limits.low) / 4
                baseline[spec.code] = max(rng.gauss(middle, spread), limits.low * 0.4)
            found = self._people[patient_id] = Person(patient_id, sex, birth, baseline)
        return found


@dataclass(frozen=True, slots=True)
class Value:
    spec: TestSpec
    text: str
    number: float
    flag: str  # N, L, H, LL, HH for patients; "" for controls
    z: float = 0.0  # controls: (value - mean) / sd as sent


@dataclass(slots=True)
class Sample:
    """One message: a patient sample or one control level."""

    plan: Plan
    specimen_id: str
    completed: datetime
    values: list[Value]
    person: Person | None = None
    repeat: bool = False
    collected: datetime | None = None
    control: Control | None = None
    qc_run: int = 0

    def records(self) -> list[str]:
        plan = self.plan
        records = [f"H|\\^&|||{plan.sender}|||||||P|LIS2-A2|{stamp(self.completed)}"]
        tests = "\\".join(f"^^^{v.spec.code}" for v in self.values)
        order = ["O", "1", self.specimen_id, "", tests, "R", *[""] * 10]
        order[15] = plan.kind.specimen_type
        if self.person is not None:
            p = self.person
            last = "BENCH" + p.patient_id
            records.append(f"P|1||{p.patient_id}||{last}^PATIENT||{p.birth:%Y%m%d}|{p.sex}")
            assert self.collected is not None
            order[6] = stamp(self.collected - timedelta(minutes=10))
            order[7] = stamp(self.collected)
        else:
            records.append("P|1")
        records.append("|".join(order))
        for i, v in enumerate(self.values, start=1):
            units = v.spec.units.replace("^", "&S&")
            if self.person is not None:
                limits = v.spec.by_sex[self.person.sex]
                reference = f"{limits.low:g}-{limits.high:g}"
            else:
                reference = ""
            records.append(
                f"R|{i}|^^^{v.spec.code}|{v.text}|{units}|{reference}|{v.flag}||F||||"
                f"{stamp(self.completed)}"
            )
        records.append("L|1|N")
        return records


def _flag(number: float, limits: Limits) -> str:
    if limits.critical_low is not None and number <= limits.critical_low:
        return "LL"
    if limits.critical_high is not None and number >= limits.critical_high:
        return "HH"
    if number < limits.low:
        return "L"
    if number > limits.high:
        return "H"
    return "N"


@dataclass(slots=True)
class Stream:
    """One analyser's sequence of samples."""

    plan: Plan
    patients: Patients
    rng: random.Random
    specimen_prefix: str
    qc_every: int = 20
    samples: int = 0
    qc_runs: int = 0
    _control_decimals: dict[tuple[str, str], int] = field(default_factory=dict)

    def sequence(self, patients: int, clock: Callable[[], datetime]) -> Iterator[Sample]:
        """QC, then ``patients`` patient samples with QC after every ``qc_every`` of
        them and at the end. ``clock()`` gives the time each sample is completed, asked
        when the sample is made (so a live sender gets the time it sends it at)."""
        yield from self.qc(clock)
        for n in range(patients):
            yield self.patient(clock())
            if (n + 1) % self.qc_every == 0 or n + 1 == patients:
                yield from self.qc(clock)

    def patient(self, at: datetime) -> Sample:
        kind = self.plan.kind
        person, seen = self.patients.pick(kind, self.rng)
        self.samples += 1
        values = []
        for spec in self.plan.panel:
            base = person.baseline[spec.code]
            number = base + self.rng.gauss(0, abs(base) * WITHIN_PATIENT_CV)
            number = max(number, 10.0**-spec.decimals)
            text = f"{number:.{spec.decimals}f}"
            number = float(text)
            values.append(Value(spec, text, number, _flag(number, spec.by_sex[person.sex])))
        collected = at - timedelta(minutes=self.rng.uniform(20, 100))
        return Sample(
            self.plan,
            f"{self.specimen_prefix}{self.samples:07d}",
            at,
            values,
            person=person,
            repeat=seen,
            collected=collected.replace(microsecond=0),
        )

    def qc(self, clock: Callable[[], datetime]) -> Iterator[Sample]:
        """One control sample of every level: values around the target, signs alternating
        by run and by level so that no multirule pattern forms."""
        run = self.qc_runs
        self.qc_runs += 1
        for i, control in enumerate(self.plan.kind.controls):
            sign = 1 if (run + i) % 2 == 0 else -1
            values = []
            for spec in self.plan.panel:
                mean, sd = control.targets[spec.code]
                decimals = self._decimals(spec, control)
                z = sign * (0.3 + min(abs(self.rng.gauss(0, 0.7)), 1.4))
                text = f"{mean + z * sd:.{decimals}f}"
                number = float(text)
                values.append(Value(spec, text, number, "", (number - mean) / sd))
            yield Sample(self.plan, control.lot, clock(), values, control=control, qc_run=run)

    def _decimals(self, spec: TestSpec, control: Control) -> int:
        """Enough decimals that rounding moves a control by at most an eighth of an SD."""
        key = (spec.code, control.lot)
        found = self._control_decimals.get(key)
        if found is None:
            sd = control.targets[spec.code][1]
            found = max(spec.decimals, math.ceil(-math.log10(sd / 4)))
            self._control_decimals[key] = found
        return found


def utcnow() -> datetime:
    return datetime.now(UTC)
