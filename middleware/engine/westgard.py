"""Westgard multirule quality control, one control result at a time, as results arrive.

Sans-I/O like :mod:`middleware.astm.link`: :func:`evaluate` takes what is remembered of
an instrument and test (a :class:`Stream`, and a :class:`Window` per control material)
and one :class:`QcResult`, and gives back the new state and an :class:`Evaluation`; it
reads no file, database or clock, and keeps nothing (the :class:`Evaluator` keeps the
state in memory for callers that want it there). Each result is judged once, when it arrives,
against what came before it, and a violation belongs to the result that completes the
pattern. ``docs/westgard.md`` is the specification, with worked examples.

Every rule looks back over at most :data:`WINDOW` results, so the state holds only
that many per instrument and test, per control material and lot, and for the run in
progress (plus the last :data:`TREND` z-scores of each material, for 7T): judging a
result costs the same after ten earlier results or after a million, and the memory held
does not grow with history.

z-scores are exact fractions computed from the decimal strings (``Fraction("108.5")``),
never binary floating point: a value exactly on a limit (108 for mean 100, SD 4, z = 2)
must not exceed it because of a rounding error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from itertools import pairwise
from typing import Literal, TypeAlias

RuleName: TypeAlias = Literal[
    "1-2s", "1-3s", "2-2s", "R-4s", "2of3-2s", "4-1s", "3-1s",
    "6x", "8x", "9x", "10x", "12x", "7T",
]  # fmt: skip
Status: TypeAlias = Literal["reject", "warning", "accept"]
Number: TypeAlias = Decimal | Fraction | int | float | str

#: Every rule, in the order evaluations list them.
RULES: tuple[RuleName, ...] = (
    "1-2s", "1-3s", "2-2s", "R-4s", "2of3-2s", "4-1s", "3-1s",
    "6x", "8x", "9x", "10x", "12x", "7T",
)  # fmt: skip
#: The longest look-back of any rule (12x); nothing older is kept.
WINDOW = 12
#: 7T's look-back, the only rule that needs z-scores rather than which limits they exceed.
TREND = 7

_BY_LOWER_NAME: dict[str, RuleName] = {name.lower(): name for name in RULES}


def rule_name(text: str) -> RuleName:
    """The rule called ``text`` (case does not matter: ``r-4s``, ``7t``)."""
    try:
        return _BY_LOWER_NAME[text.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown rule {text.strip()!r}; known: {', '.join(RULES)}") from None


def rule_names(text: str) -> tuple[RuleName, ...]:
    """A comma-separated list of rules (``"1-3s, 2-2s,R-4s"``); empty text is no rule."""
    return tuple(rule_name(part) for part in text.split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class RuleSet:
    """Which rules reject a run, which only warn, and how they are applied."""

    rules: tuple[RuleName, ...] = ("1-3s", "2-2s", "R-4s", "4-1s", "10x")
    warnings: tuple[RuleName, ...] = ("1-2s",)
    traditional: bool = False
    """1-2s screens the run: the other rules are looked at only once it has fired."""
    include_rejected: bool = False
    """Keep the results of rejected runs in the windows of later runs."""

    def __post_init__(self) -> None:
        # lists from a parsed rule file are welcome; kept as tuples, the set stays hashable
        object.__setattr__(self, "rules", tuple(self.rules))
        object.__setattr__(self, "warnings", tuple(self.warnings))
        for name in (*self.rules, *self.warnings):
            if name not in RULES:
                raise ValueError(f"unknown rule {name!r}; known: {', '.join(RULES)}")
        both = [name for name in RULES if name in self.rules and name in self.warnings]
        if both:
            raise ValueError(f"{', '.join(both)} cannot both reject and only warn")
        if self.traditional and "1-2s" in self.rules:
            raise ValueError("in the traditional flow 1-2s screens and warns; it cannot reject")
        if self.traditional and "1-2s" not in self.warnings:
            raise ValueError("the traditional flow needs 1-2s among the warnings: it is the screen")


@dataclass(frozen=True, slots=True)
class QcResult:
    """One control measurement, in arrival order.

    Give ``value``, ``mean`` and ``sd`` (the target of this material and lot for this
    test), or ``z`` when it was computed elsewhere. Numbers may be Decimal, int, Fraction
    or decimal strings; a float is read through its shortest decimal form.
    """

    run: str
    material: str
    value: Number | None = None
    mean: Number | None = None
    sd: Number | None = None
    z: Number | None = None
    lot: str = ""
    instrument: str = ""
    test: str = ""


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What one result completed. Warnings are listed even when the result also rejects."""

    z: Fraction
    violations: tuple[RuleName, ...]
    """Rejection rules this result completed."""
    warnings: tuple[RuleName, ...]
    status: Status


@dataclass(frozen=True, slots=True)
class OpenRun:
    """The run in progress for an instrument and test."""

    run: str
    rejected: bool
    results: int


def _ratio(number: Number) -> tuple[int, int]:
    """``number`` as integers (numerator, denominator), exactly; through Decimal, whose C
    arithmetic is many times faster than Fraction's."""
    if isinstance(number, bool):
        raise ValueError(f"{number!r} is not a number")
    if isinstance(number, int):
        return number, 1
    if isinstance(number, Fraction):
        return number.numerator, number.denominator
    try:
        if isinstance(number, float):
            # repr is the shortest decimal that reads back as this float: 0.1, not 0.1000...0555
            return Decimal(repr(number)).as_integer_ratio()
        if isinstance(number, str):
            try:
                return Decimal(number).as_integer_ratio()
            except InvalidOperation:
                fraction = Fraction(number)  # "1/3"
                return fraction.numerator, fraction.denominator
        return number.as_integer_ratio()
    except (ArithmeticError, ValueError):
        raise ValueError(f"{number!r} is not a finite number") from None


def exact(number: Number) -> Fraction:
    """``number`` as an exact fraction; ValueError for text that is not a finite number."""
    return Fraction(*_ratio(number))


def z_score(qc: QcResult) -> Fraction:
    if qc.z is not None:
        return exact(qc.z)
    if qc.value is None or qc.mean is None or qc.sd is None:
        raise ValueError("a QC result needs value, mean and sd, or z")
    (vn, vd), (mn, md), (sn, sd) = _ratio(qc.value), _ratio(qc.mean), _ratio(qc.sd)
    if sn <= 0:
        raise ValueError(f"sd must be above 0, not {qc.sd}")
    # (vn/vd - mn/md) / (sn/sd), on integers, reduced once
    return Fraction((vn * md - mn * vd) * sd, vd * md * sn)


# --- the rules --------------------------------------------------------------------------
#
# The windows hold bands, not z-scores: small ints that say which limits a z exceeds, so
# that the rules compare ints rather than fractions: band > k exactly when z > k, and
# band < -k exactly when z < -k, for k = 0, 1, 2 and 3. Only 7T needs the z-scores
# themselves, and only the last seven of each material.


def _band(z: Fraction) -> int:
    """ceil(|z|), at most 4, with the sign of z: 0 on the mean, 1 up to 1 SD, 2 up to
    2 SD, 3 up to 3 SD, 4 beyond (on the fraction's integers: no Fraction arithmetic)."""
    band = min(4, -(-abs(z.numerator) // z.denominator))
    return band if z.numerator >= 0 else -band


@dataclass(frozen=True, slots=True)
class _Context:
    band: int
    own: Sequence[int]
    """Bands of this material and lot's window, oldest first, ending with this result."""
    everyone: Sequence[int]
    """Bands of the instrument and test's window across materials, ending likewise."""
    beyond_mean: int
    """How many results in a row, this one last, are on its side of the mean (the longer
    of the two windows)."""
    beyond_1sd: int
    """Likewise, beyond its 1 SD limit."""
    trend: Sequence[Fraction]
    """The last z-scores of this material and lot, ending with this result's."""
    other_material_above: bool
    """Another material of this run was beyond +2 SD."""
    other_material_below: bool
    run_above: bool
    """An earlier result of this run (any material) was beyond +2 SD."""
    run_below: bool


def _streak(bands: Sequence[int], limit: int) -> int:
    """How many of the last bands, the last one included, exceed the same limit (+limit
    or -limit) as the last one."""
    sign = 1 if bands[-1] > limit else -1 if bands[-1] < -limit else 0
    if not sign:
        return 0
    length = 0
    for band in reversed(bands):
        if band * sign <= limit:
            break
        length += 1
    return length


def _two_of_three(bands: Sequence[int]) -> bool:
    # Fewer than three results still count: two beyond the same limit are two of any three.
    tail, band = bands[-3:], bands[-1]
    if band > 2:
        return sum(1 for b in tail if b > 2) >= 2
    if band < -2:
        return sum(1 for b in tail if b < -2) >= 2
    return False


def _trend(zs: Sequence[Fraction], n: int) -> bool:
    if len(zs) < n:
        return False
    steps = list(pairwise(zs[-n:]))
    return all(a < b for a, b in steps) or all(a > b for a, b in steps)


_CHECKS: dict[RuleName, Callable[[_Context], bool]] = {
    "1-2s": lambda c: abs(c.band) > 2,
    "1-3s": lambda c: abs(c.band) > 3,
    "2-2s": lambda c: (
        _streak(c.own, 2) >= 2
        or (c.band > 2 and c.other_material_above)
        or (c.band < -2 and c.other_material_below)
    ),
    "R-4s": lambda c: (c.band > 2 and c.run_below) or (c.band < -2 and c.run_above),
    "2of3-2s": lambda c: _two_of_three(c.own) or _two_of_three(c.everyone),
    "4-1s": lambda c: c.beyond_1sd >= 4,
    "3-1s": lambda c: c.beyond_1sd >= 3,
    "6x": lambda c: c.beyond_mean >= 6,
    "8x": lambda c: c.beyond_mean >= 8,
    "9x": lambda c: c.beyond_mean >= 9,
    "10x": lambda c: c.beyond_mean >= 10,
    "12x": lambda c: c.beyond_mean >= 12,
    "7T": lambda c: _trend(c.trend, TREND),
}


# --- state ------------------------------------------------------------------------------
#
# What the rules remember is explicit and immutable: a :class:`Stream` per instrument and
# test, and a :class:`Window` per control material and lot. :func:`evaluate` takes them
# and gives back the new ones, so a caller can keep them anywhere (in memory, as rows of
# a database) and nothing needs rebuilding after a restart or a rolled-back write.

MaterialKey: TypeAlias = tuple[str, str]  # (material, lot)


@dataclass(frozen=True, slots=True)
class Window:
    """The last bands (at most :data:`WINDOW`) and z-scores (at most :data:`TREND`) of one
    control material and lot, oldest first."""

    bands: tuple[int, ...] = ()
    zs: tuple[Fraction, ...] = ()

    def add(self, z: Fraction, band: int) -> Window:
        return Window((*self.bands, band)[-WINDOW:], (*self.zs, z)[-TREND:])

    def then(self, later: Window) -> Window:
        """This window followed by a later one."""
        return Window((*self.bands, *later.bands)[-WINDOW:], (*self.zs, *later.zs)[-TREND:])

    def __len__(self) -> int:
        return len(self.bands) + len(self.zs)


NO_WINDOW = Window()


@dataclass(frozen=True, slots=True)
class Run:
    """The run in progress. Its results count together whatever becomes of the run, and
    reach the windows of closed runs only when it closes, and only if it was not rejected."""

    run_id: str
    bands: tuple[int, ...] = ()
    materials: tuple[tuple[MaterialKey, Window], ...] = ()
    # Up to two distinct materials beyond each 2 SD limit: enough to know whether one
    # other than the current result's material is there, without growing with the run.
    above: tuple[MaterialKey, ...] = ()
    below: tuple[MaterialKey, ...] = ()
    screen_open: bool = False
    rejected: bool = False
    results: int = 0

    def window(self, key: MaterialKey) -> Window:
        return next((window for k, window in self.materials if k == key), NO_WINDOW)

    def add(self, key: MaterialKey, z: Fraction, band: int) -> Run:
        window = self.window(key).add(z, band)
        if any(k == key for k, _ in self.materials):
            materials = tuple((k, window if k == key else w) for k, w in self.materials)
        else:
            materials = (*self.materials, (key, window))
        above, below = self.above, self.below
        if band > 2 and key not in above and len(above) < 2:
            above = (*above, key)
        if band < -2 and key not in below and len(below) < 2:
            below = (*below, key)
        return Run(
            self.run_id,
            (*self.bands, band)[-WINDOW:],
            materials,
            above,
            below,
            self.screen_open,
            self.rejected,
            self.results + 1,
        )

    def __len__(self) -> int:
        return len(self.bands) + sum(len(window) for _, window in self.materials)


@dataclass(frozen=True, slots=True)
class Stream:
    """One instrument and test: the window of closed runs across materials, and the open
    run. The closed windows of each material are kept apart, as :class:`Window`."""

    bands: tuple[int, ...] = ()
    run: Run | None = None

    def __len__(self) -> int:
        return len(self.bands) + (len(self.run) if self.run is not None else 0)


NO_STREAM = Stream()


@dataclass(frozen=True, slots=True)
class Step:
    """What judging one result gives back: the stream after it, the closed windows that
    changed (those of the run it closed), and the evaluation."""

    stream: Stream
    windows: dict[MaterialKey, Window]
    evaluation: Evaluation


def closing(stream: Stream, run_id: str) -> tuple[MaterialKey, ...]:
    """The materials whose closed windows change when a result of ``run_id`` arrives."""
    run = stream.run
    if run is None or run.run_id == run_id:
        return ()
    return tuple(key for key, _ in run.materials)


def close_run(
    rule_set: RuleSet, stream: Stream, windows: Mapping[MaterialKey, Window]
) -> tuple[Stream, dict[MaterialKey, Window]]:
    """The stream with its open run closed, and the closed windows that changed; a
    rejected run's results stay out unless the rule set includes them."""
    run = stream.run
    if run is None:
        return stream, {}
    if run.rejected and not rule_set.include_rejected:
        return Stream(stream.bands), {}
    changed = {key: windows.get(key, NO_WINDOW).then(window) for key, window in run.materials}
    return Stream((*stream.bands, *run.bands)[-WINDOW:]), changed


def evaluate(
    rule_set: RuleSet, stream: Stream, windows: Mapping[MaterialKey, Window], qc: QcResult
) -> Step:
    """Judge ``qc`` against what came before it. ``windows`` holds the closed windows of
    its material and of those :func:`closing` names (a material missing has none yet)."""
    z = z_score(qc)
    key = (qc.material, qc.lot)
    changed: dict[MaterialKey, Window] = {}
    run = stream.run
    if run is None or run.run_id != qc.run:
        stream, changed = close_run(rule_set, stream, windows)
        run = Run(qc.run)
    band = _band(z)
    if rule_set.traditional and abs(band) > 2 and not run.screen_open:
        run = replace(run, screen_open=True)
    fired: set[RuleName] = set()
    if run.screen_open or not rule_set.traditional:
        closed = changed[key] if key in changed else windows.get(key, NO_WINDOW)
        current = run.window(key)
        own = [*closed.bands, *current.bands, band][-WINDOW:]
        everyone = [*stream.bands, *run.bands, band][-WINDOW:]
        context = _Context(
            band=band,
            own=own,
            everyone=everyone,
            beyond_mean=max(_streak(own, 0), _streak(everyone, 0)),
            beyond_1sd=max(_streak(own, 1), _streak(everyone, 1)),
            trend=[*closed.zs, *current.zs, z][-TREND:],
            other_material_above=any(k != key for k in run.above),
            other_material_below=any(k != key for k in run.below),
            run_above=bool(run.above),
            run_below=bool(run.below),
        )
        fired = {name for name in (*rule_set.rules, *rule_set.warnings) if _CHECKS[name](context)}
    violations = tuple(name for name in RULES if name in fired and name in rule_set.rules)
    warnings = tuple(name for name in RULES if name in fired and name in rule_set.warnings)
    run = run.add(key, z, band)
    if violations:
        run = replace(run, rejected=True)
    status: Status = "reject" if violations else "warning" if warnings else "accept"
    return Step(replace(stream, run=run), changed, Evaluation(z, violations, warnings, status))


class Evaluator:
    """Westgard evaluation of QC results in arrival order, per instrument and test, with
    the state kept in memory (for a file of results, a test, a benchmark).

    ``rule_set`` applies to every test not named in ``per_test``.

    A run stays open from its first result until a result of another run arrives for the
    same instrument and test, or :meth:`close_run` is called; a run id seen again after
    that starts a new run. A run is rejected as soon as one of its results is, or when
    :meth:`reject_run` says so; once closed, a rejected run's results are left out of
    later windows unless the rule set says ``include_rejected``.
    """

    def __init__(
        self, rule_set: RuleSet | None = None, per_test: Mapping[str, RuleSet] | None = None
    ) -> None:
        self._rule_set = rule_set or RuleSet()
        self._per_test = dict(per_test or {})
        self.streams: dict[tuple[str, str], Stream] = {}
        self.windows: dict[tuple[str, str], dict[MaterialKey, Window]] = {}

    def _rules_of(self, test: str) -> RuleSet:
        return self._per_test.get(test, self._rule_set)

    def evaluate(self, qc: QcResult) -> Evaluation:
        """Judge ``qc`` against what came before it, and remember it."""
        where = (qc.instrument, qc.test)
        windows = self.windows.setdefault(where, {})
        step = evaluate(self._rules_of(qc.test), self.streams.get(where, Stream()), windows, qc)
        self.streams[where] = step.stream
        windows.update(step.windows)
        return step.evaluation

    def reject_run(self, run: str, *, instrument: str = "", test: str = "") -> None:
        """Reject the open run ``run`` (a technician's decision, or another check's).

        Only the open run can be rejected: a closed run's results may already have
        left the bounded windows, so taking them out again could not be done exactly.
        """
        stream = self.streams.get((instrument, test))
        if stream is None or stream.run is None or stream.run.run_id != run:
            open_run = stream.run.run_id if stream and stream.run else None
            raise ValueError(
                f"run {run!r} is not the open run of {instrument!r} {test!r} (open: {open_run!r})"
            )
        self.streams[(instrument, test)] = replace(stream, run=replace(stream.run, rejected=True))

    def close_run(self, *, instrument: str = "", test: str = "") -> None:
        """Close the open run now rather than when the next run's first result arrives."""
        where = (instrument, test)
        stream = self.streams.get(where)
        if stream is not None:
            windows = self.windows.setdefault(where, {})
            self.streams[where], changed = close_run(self._rules_of(test), stream, windows)
            windows.update(changed)

    def open_run(self, *, instrument: str = "", test: str = "") -> OpenRun | None:
        stream = self.streams.get((instrument, test))
        if stream is None or stream.run is None:
            return None
        return OpenRun(stream.run.run_id, stream.run.rejected, stream.run.results)

    def stored_results(self) -> int:
        """How many values the state holds: bounded, whatever the history."""
        return sum(len(stream) for stream in self.streams.values()) + sum(
            len(window) for windows in self.windows.values() for window in windows.values()
        )


# --- choosing a rule set from the method's sigma ----------------------------------------


@dataclass(frozen=True, slots=True)
class SigmaStep:
    """Methods whose sigma is at least ``min_sigma`` get ``rule_set``."""

    min_sigma: Fraction
    rule_set: RuleSet


def _steps(table: Iterable[tuple[int, tuple[RuleName, ...]]]) -> tuple[SigmaStep, ...]:
    return tuple(SigmaStep(Fraction(low), RuleSet(rules, warnings=())) for low, rules in table)


# After Westgard's "Westgard Sigma Rules" (J. O. and S. A. Westgard, 2014), which have no
# 1-2s warning. Edit the tables, or pass your own steps to rule_set_for_sigma.
SIGMA_RULES_TWO_LEVELS: tuple[SigmaStep, ...] = _steps([
    (6, ("1-3s",)),
    (5, ("1-3s", "2-2s", "R-4s")),
    (4, ("1-3s", "2-2s", "R-4s", "4-1s")),
    (0, ("1-3s", "2-2s", "R-4s", "4-1s", "8x")),
])  # fmt: skip
SIGMA_RULES_THREE_LEVELS: tuple[SigmaStep, ...] = _steps([
    (6, ("1-3s",)),
    (5, ("1-3s", "2of3-2s", "R-4s")),
    (4, ("1-3s", "2of3-2s", "R-4s", "3-1s")),
    (0, ("1-3s", "2of3-2s", "R-4s", "3-1s", "6x")),
])  # fmt: skip


def method_sigma(tea: Number, bias: Number, cv: Number) -> Fraction:
    """Sigma = (TEa - |bias|) / CV, all three in percent."""
    cv_ = exact(cv)
    if cv_ <= 0:
        raise ValueError(f"CV must be above 0, not {cv}")
    return (exact(tea) - abs(exact(bias))) / cv_


def rule_set_for_sigma(
    sigma: Number, steps: Sequence[SigmaStep] = SIGMA_RULES_TWO_LEVELS
) -> RuleSet:
    """The rule set of the highest step ``sigma`` reaches.

    A sigma below every step gets the lowest step's set, the strictest: a method worse
    than the table foresees needs more control, not none.
    """
    if not steps:
        raise ValueError("no sigma steps")
    ordered = sorted(steps, key=lambda step: step.min_sigma, reverse=True)
    value = exact(sigma)
    for step in ordered:
        if value >= step.min_sigma:
            return step.rule_set
    return ordered[-1].rule_set
