"""Westgard evaluation: the time to judge one QC result after 10, 1,000 and 100,000 earlier
results of the same instrument and test. The evaluator keeps bounded windows, so the three
should be the same.

    .venv/bin/python bench/engine.py [--rounds 50] [--batch 100] [--history 10,1000,100000]

For each history length the script feeds that many results (two control levels per run,
seeded pseudo-random values around the target, so some runs are rejected as in real life)
into an evaluator, then times one more result. So that every timed evaluation sees
exactly the history length it is reported for, each runs on its own fresh copy of the
evaluator (``copy.deepcopy``, made before the clock starts; cheap, since the state is
bounded): a round evaluates the result once on each of ``--batch`` copies and keeps the
mean. The cases take turns round by round, so that the machine's busy moments fall on
all of them alike. Two next results are timed: one that opens a new run (the previous
run is closed and its results move into the windows) and one that joins the open run.
Rule sets: the default (1-3s/2-2s/R-4s/4-1s/10x, 1-2s warning) and every rule at once.
Garbage collection is off while timing. Printed: the median and 90th percentile of the
rounds, in microseconds per evaluation, and the number of values the evaluator holds.
"""

from __future__ import annotations

import argparse
import copy
import gc
import platform
import random
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from middleware.engine.westgard import RULES, Evaluator, QcResult, RuleSet  # noqa: E402

RULE_SETS = {
    "default": RuleSet(),
    "all rules": RuleSet(rules=tuple(r for r in RULES if r != "1-2s"), warnings=("1-2s",)),
}
#: Many more than a window holds (12), since rejected runs are not in the windows: long
#: enough that whatever came before, the windows end up holding the same values.
TAIL = 200
TARGETS = {"L1": (Decimal("5.20"), Decimal("0.15")), "L2": (Decimal("15.60"), Decimal("0.40"))}


def result(rng: random.Random, run: int, material: str) -> QcResult:
    mean, sd = TARGETS[material]
    value = (mean + sd * Decimal(repr(rng.gauss(0, 1)))).quantize(Decimal("0.01"))
    return QcResult(f"R{run}", material, value=value, mean=mean, sd=sd, test="GLU")


def history(rule_set: RuleSet, length: int) -> tuple[Evaluator, int]:
    """An evaluator that has seen ``length`` results, ending with a complete run of two;
    and the number of the last run.

    The last :data:`TAIL` results are the same whatever the length (the earlier ones
    differ), so that the windows hold the same values and only the length of history
    differs between the cases."""
    past, tail = random.Random(2026), random.Random(1981)
    tail_values = [result(tail, 0, "L1" if i % 2 == 0 else "L2") for i in range(TAIL)]
    evaluator = Evaluator(rule_set)
    for i in range(length):
        material = "L1" if i % 2 == 0 else "L2"
        from_end = length - i
        if from_end <= TAIL:
            value = tail_values[TAIL - from_end]
            qc = QcResult(f"R{i // 2}", material, value.value, value.mean, value.sd, test="GLU")
        else:
            qc = result(past, i // 2, material)
        evaluator.evaluate(qc)
    return evaluator, (length - 1) // 2


def measure(
    cases: dict[tuple[str, int, str], tuple[Evaluator, QcResult]], rounds: int, batch: int
) -> dict[tuple[str, int, str], list[float]]:
    """Per case, one figure per round: the mean time in microseconds to evaluate the case's
    result once on each of ``batch`` fresh copies of its evaluator."""
    timings: dict[tuple[str, int, str], list[float]] = {key: [] for key in cases}
    for _ in range(rounds):
        for key, (evaluator, qc) in cases.items():
            copies = [copy.deepcopy(evaluator) for _ in range(batch)]
            gc.disable()
            try:
                started = time.perf_counter_ns()
                for clone in copies:
                    clone.evaluate(qc)
                elapsed = time.perf_counter_ns() - started
            finally:
                gc.enable()
            timings[key].append(elapsed / batch / 1000)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--history", default="10,1000,100000")
    args = parser.parse_args()
    lengths = [int(n) for n in args.history.split(",")]

    cases: dict[tuple[str, int, str], tuple[Evaluator, QcResult]] = {}
    held: dict[tuple[str, int], int] = {}
    for name, rule_set in RULE_SETS.items():
        for length in lengths:
            evaluator, last_run = history(rule_set, length)
            held[(name, length)] = evaluator.stored_results()
            # a value beyond +2 SD, so that the rules have something to look at; once as
            # the first result of a new run, once joining the run in progress
            for path, run in (("new run", last_run + 1), ("same run", last_run)):
                qc = QcResult(f"R{run}", "L1", value="5.55", mean="5.20", sd="0.15", test="GLU")
                cases[(name, length, path)] = (evaluator, qc)
    timings = measure(cases, args.rounds, args.batch)

    print(f"CPython {platform.python_version()}, {platform.machine()}, {platform.system()}")
    print(
        f"{args.rounds} rounds of {args.batch} evaluations per figure; "
        "median / 90th percentile of the rounds, microseconds per evaluation\n"
    )
    header = f"{'rule set':<10} {'earlier':>8}  {'new run':>15}  {'same run':>15}  {'held':>5}"
    print(header)
    print("-" * len(header))
    for name in RULE_SETS:
        for length in lengths:
            cells = []
            for path in ("new run", "same run"):
                t = timings[(name, length, path)]
                cells.append(
                    f"{statistics.median(t):6.1f} / {statistics.quantiles(t, n=10)[-1]:6.1f}"
                )
            size = held[(name, length)]
            print(f"{name:<10} {length:>8,}  {cells[0]:>15}  {cells[1]:>15}  {size:>5}")


if __name__ == "__main__":
    main()
