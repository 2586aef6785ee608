"""Scenarios: the sequence of samples a simulated analyser sends, deterministic per seed.

A scenario is planned in full before anything is sent: a list of :class:`Step`, each one
sample (a patient's specimen or one control level) with, where the scenario says so, a
host query to make first or a fault to commit while sending it. The same profile, scenario,
sample count and seed always give the same plan, values included.

In-control QC values lie within 1 SD of the target, on alternate sides of it, so that a
scenario shows the errors it means to and no others (random values would trip a rule now
and then). Values of a QC error are the target moved by the number of SDs the error asks,
within 0.2 SD (0.05 SD for a drift, whose every step must rise).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

from simulators.profiles import Analyte, Measured, Profile, Sample

FAULTS = (
    "bad-checksum",
    "lost-ack",
    "slow-peer",
    "drop-mid-message",
    "enq-contention",
    "oversize-frame",
)


@dataclass(frozen=True, slots=True)
class Step:
    sample: Sample
    query: bool = False
    """Ask the host for the specimen's orders first, and run only the tests ordered."""
    fault: str = ""
    """One of :data:`FAULTS`, committed while this step's message is sent."""
    alongside: Sample | None = None
    """enq-contention: a message sent while the host's answer to the query is due."""


class Planner:
    """Makes the samples of one run of a profile."""

    def __init__(self, profile: Profile, seed: int, now: datetime) -> None:
        self.profile = profile
        self.rng = random.Random(seed)
        self.seed = seed
        self.now = now
        self._count = 0
        self._sides: dict[tuple[str, str], int] = {}
        self.reagent_lot = profile.reagent_lots[0] if profile.reagent_lots else ""

    def _number(self, analyte: Analyte, value: float, rounding: str = ROUND_HALF_EVEN) -> str:
        quantum = Decimal(1).scaleb(-analyte.decimals)
        return str(Decimal(repr(max(value, 0.0))).quantize(quantum, rounding))

    def patient(
        self,
        label: str = "",
        values: Mapping[str, str] | None = None,
        collected_minutes_ago: float = 45,
    ) -> Sample:
        """A patient's specimen with every test of the menu (those measured on request
        only when ``values`` has them), values drawn within the usual range unless
        ``values`` gives them by lab code."""
        self._count += 1
        rng = self.rng
        given = values or {}
        measured = []
        for analyte in self.profile.analytes:
            if analyte.lab_code in given:
                text = given[analyte.lab_code]
            elif analyte.on_request:
                continue
            else:
                text = self._number(analyte, rng.uniform(float(analyte.low), float(analyte.high)))
            number = Decimal(text)
            flag = "H" if number > analyte.high else "L" if number < analyte.low else "N"
            measured.append(Measured(analyte, text, flag))
        return Sample(
            # The seed's digits, then five of the count: two seeds never make one id.
            specimen_id=f"{self.profile.prefix}{self.seed:03d}{self._count:05d}",
            measured=tuple(measured),
            patient_id=f"PT{rng.randrange(10**7):07d}",
            sex=rng.choice("MF"),
            birth_date=date(rng.randrange(1940, 2005), rng.randrange(1, 13), rng.randrange(1, 29)),
            collected_at=self.now - timedelta(minutes=collected_minutes_ago),
            reagent_lot=self.reagent_lot,
            label=label or "patient",
        )

    def qc(
        self,
        shifts: Mapping[str, float] | None = None,
        label: str = "",
        per_level: Mapping[int, Mapping[str, float]] | None = None,
        noise: float = 0.2,
    ) -> list[Sample]:
        """One control sample per level, each with every test its lot has a target for;
        ``shifts`` moves tests (by lab code) by so many SDs, give or take ``noise``, on
        every level, ``per_level`` on the level of that index only."""
        samples = []
        for index, level in enumerate(self.profile.controls):
            shifts_here = {**(shifts or {}), **(per_level or {}).get(index, {})}
            measured = []
            for analyte in self.profile.analytes:
                target = level.targets.get(analyte.lab_code)
                if target is None:
                    continue
                mean, sd = float(target[0]), float(target[1])
                rounding = ROUND_HALF_EVEN
                if analyte.lab_code in shifts_here:
                    z = shifts_here[analyte.lab_code] + self.rng.uniform(-noise, noise)
                    # Away from the mean: a test shown in whole units (ALB in g/L) would
                    # otherwise round +3.4 SD to +3.0, inside the 1-3s limit.
                    rounding = ROUND_CEILING if z > 0 else ROUND_FLOOR
                else:
                    key = (level.lot, analyte.lab_code)
                    side = self._sides.get(key, 0)
                    self._sides[key] = side + 1
                    z = (1 if side % 2 == 0 else -1) * self.rng.uniform(0.1, 0.9)
                measured.append(Measured(analyte, self._number(analyte, mean + z * sd, rounding)))
            prefix = "QC-" if self.profile.driver == "sysmex_xn" else ""
            samples.append(
                Sample(
                    specimen_id=f"{prefix}{level.lot}",
                    measured=tuple(measured),
                    control=level,
                    reagent_lot=self.reagent_lot,
                    label=label or f"QC {level.level}",
                )
            )
        return samples


Plan = list[Step]


def _steps(samples: list[Sample]) -> Plan:
    return [Step(s) for s in samples]


def _patients(p: Planner, count: int, label: str = "") -> Plan:
    return [Step(p.patient(label)) for _ in range(count)]


def normal(p: Planner, samples: int) -> Plan:
    """QC at the start, the patients, QC at the end (bracketed tests wait for it)."""
    return [
        *_steps(p.qc(label="QC in control")),
        *_patients(p, samples),
        *_steps(p.qc(label="closing QC in control")),
    ]


def qc_shift(p: Planner, samples: int) -> Plan:
    """A systematic error: three tests move by 2.5, 1.5 and 0.6 SD over five QC runs
    (2-2s or 2of3-2s at once, 4-1s or 3-1s, then 10x or 6x), patients between the runs,
    then QC back in control (the corrective action's re-run)."""
    big, medium, small = p.profile.shift_tests
    shifts = {code: z for code, z in ((big, 2.5), (medium, 1.5), (small, 0.6)) if code}
    share = max(1, samples // 6)
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, share)]
    for run in range(1, 6):
        plan += _steps(p.qc(shifts, label=f"QC shifted (run {run} of 5)"))
        plan += _patients(p, share, "patient after a QC shift")
    plan += _steps(p.qc(label="corrective QC back in control"))
    plan += _patients(p, max(0, samples - 6 * share), "patient after corrective QC")
    return plan


def random_error(p: Planner, samples: int) -> Plan:
    """Random error: one level 3.4 SD off (1-3s); later one level +2.3 SD and another
    -2.3 SD in one run (R-4s); each followed by QC back in control."""
    big, medium, _ = p.profile.shift_tests
    share = max(1, samples // 3)
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, share)]
    plan += _steps(p.qc(label="QC random error (1-3s)", per_level={0: {big: 3.4}}))
    plan += _patients(p, share, "patient after a random error")
    plan += _steps(p.qc(label="corrective QC back in control"))
    spread = {0: {medium: 2.3}, 1: {medium: -2.3}}
    plan += _steps(p.qc(label="QC random error (R-4s)", per_level=spread))
    plan += _patients(p, samples - 2 * share, "patient after a random error")
    plan += _steps(p.qc(label="corrective QC back in control"))
    return plan


def trend(p: Planner, samples: int) -> Plan:
    """A drift over seven QC runs: one test climbs from -0.9 to +0.9 SD on the first
    control level and falls as much on the second (7T, where the rule set has it; the
    two levels on either side of the mean keep 6x and 10x quiet), patients between."""
    _, _, small = p.profile.shift_tests
    code = small or p.profile.shift_tests[0]
    share = max(1, samples // 7)
    plan: Plan = []
    for run in range(7):
        z = -0.9 + 0.3 * run
        drift = {0: {code: z}, 1: {code: -z}}
        label = f"QC drifting (run {run + 1} of 7)"
        plan += _steps(p.qc(label=label, per_level=drift, noise=0.05))
        plan += _patients(p, share if run < 6 else samples - 6 * share, "patient during a drift")
    return plan


def _needs_lots(profile: Profile) -> None:
    if not profile.reagent_lots:
        raise ValueError(f"profile {profile.name} does not report reagent lots")


def lot_change(p: Planner, samples: int) -> Plan:
    """The reagent lot changes mid-run: the new lot's results wait for QC on it."""
    _needs_lots(p.profile)
    half = samples // 2
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, half)]
    p.reagent_lot = p.profile.reagent_lots[1]
    plan += _patients(p, max(1, (samples - half) // 2), "patient on a new reagent lot")
    plan += _steps(p.qc(label="QC on the new reagent lot"))
    plan += _patients(p, samples - half - max(1, (samples - half) // 2), "patient after QC")
    return plan


def expired_lot(p: Planner, samples: int) -> Plan:
    """Patients measured with an expired reagent lot (the bundled rules/reagents.yaml
    lists it) between patients on a good one."""
    _needs_lots(p.profile)
    good = p.reagent_lot
    half = samples // 2
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, half)]
    p.reagent_lot = p.profile.reagent_lots[2]
    plan += _patients(p, samples - half, "patient on an expired reagent lot")
    p.reagent_lot = good
    return plan


def sample_indices(p: Planner, samples: int) -> Plan:
    """A haemolysed, an icteric and a lipaemic sample among normal ones."""
    if not p.profile.index_tests:
        raise ValueError(f"profile {p.profile.name} does not report serum indices")
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, max(0, samples - 3))]
    plan.insert(len(plan) // 2 + 1, Step(p.patient("haemolysed", {"SI-H": "180"})))
    plan.insert(len(plan) - 1, Step(p.patient("icteric", {"SI-I": "85"})))
    plan.append(Step(p.patient("lipaemic", {"SI-L": "350"})))
    plan += _steps(p.qc(label="closing QC in control"))
    return plan


def stability(p: Planner, samples: int) -> Plan:
    """Samples analysed 26 hours after collection, past every stability limit."""
    late = max(1, samples // 3)
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, samples - late)]
    plan += [
        Step(p.patient("sample past its stability", collected_minutes_ago=26 * 60))
        for _ in range(late)
    ]
    plan += _steps(p.qc(label="closing QC in control"))
    return plan


def critical(p: Planner, samples: int) -> Plan:
    """Critical values (each test with a critical limit in rules/ranges.yaml) among
    normal results."""
    crits = [a for a in p.profile.analytes if a.critical is not None]
    plan = [*_steps(p.qc(label="QC in control")), *_patients(p, max(0, samples - len(crits)))]
    for analyte in crits:
        plan.append(Step(p.patient(f"critical {analyte.lab_code}",
                                   {analyte.lab_code: str(analyte.critical)})))  # fmt: skip
    plan += _steps(p.qc(label="closing QC in control"))
    return plan


def host_query(p: Planner, samples: int) -> Plan:
    """Host query mode: the analyser asks for each barcode's orders and runs those."""
    return [
        *_steps(p.qc(label="QC in control")),
        *[Step(p.patient("patient run on its orders"), query=True) for _ in range(samples)],
        *_steps(p.qc(label="closing QC in control")),
    ]


def _faulty(fault: str) -> Callable[[Planner, int], Plan]:
    def plan(p: Planner, samples: int) -> Plan:
        steps = [*_steps(p.qc(label="QC in control"))]
        for n in range(max(samples, 2)):
            sample = p.patient()
            # The second patient and every fifth after it meet the fault.
            hit = n % 5 == 1
            if not hit:
                steps.append(Step(sample))
            elif fault == "enq-contention":
                other = p.patient(f"sent against the host's answer ({fault})")
                steps.append(Step(replace(sample, label="patient run on its orders"),
                                  query=True, fault=fault, alongside=other))  # fmt: skip
            else:
                steps.append(Step(replace(sample, label=f"patient sent with {fault}"), fault=fault))
        steps += _steps(p.qc(label="closing QC in control"))
        return steps

    plan.__doc__ = f"QC and patients; the second patient and every fifth after it: {fault}."
    return plan


SCENARIOS: dict[str, Callable[[Planner, int], Plan]] = {
    "normal": normal,
    "qc-shift": qc_shift,
    "random-error": random_error,
    "trend": trend,
    "lot-change": lot_change,
    "expired-lot": expired_lot,
    "sample-indices": sample_indices,
    "stability": stability,
    "critical": critical,
    "host-query": host_query,
    **{fault: _faulty(fault) for fault in FAULTS},
}


def plan(profile: Profile, scenario: str, samples: int, seed: int, now: datetime) -> Plan:
    """The steps of ``scenario`` on ``profile`` with ``samples`` patients."""
    build = SCENARIOS.get(scenario)
    if build is None:
        raise ValueError(f"unknown scenario {scenario!r}; known: {', '.join(SCENARIOS)}")
    if samples < 1:
        raise ValueError("samples must be at least 1")
    if seed < 0:
        raise ValueError("the seed must be 0 or more")
    return build(Planner(profile, seed, now), samples)


def describe(scenario: str) -> str:
    doc = SCENARIOS[scenario].__doc__ or ""
    return " ".join(doc.split())
