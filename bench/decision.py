"""Cost of one patient-result decision by the engine (QC gate, reagent lots, acceptance,
autoverification), with the shipped rules; the engine alone, no database.

    .venv/bin/python bench/decision.py [--results 20000]
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from middleware.domain import (  # noqa: E402
    ControlResult,
    Measurement,
    ReagentUse,
    Result,
    Specimen,
)
from middleware.engine.context import Patient, PreviousResult, ResultContext  # noqa: E402
from middleware.engine.engine import Engine  # noqa: E402
from middleware.engine.rules import load_rules  # noqa: E402

T0 = datetime(2026, 3, 1, 8, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", type=int, default=20000)
    args = parser.parse_args()
    engine = Engine(load_rules(ROOT / "rules"))
    for test, levels in (("GLU", ("5.2", "15.6")), ("HGB", ("6.1", "13.2", "16.9"))):
        lots = (
            ("CC-45781", "CC-45782") if test == "GLU" else ("HC-2411-L", "HC-2411-N", "HC-2411-H")
        )
        for value, lot in zip(levels, lots, strict=True):
            result = Result("QC", test, test, Measurement.parse(value), instrument="an1")
            engine.record_control(ControlResult(result, "control", lot), T0)
    patient = Patient("P1", "M", date(1970, 1, 1))
    contexts = []
    for i in range(args.results):
        test = "GLU" if i % 2 else "HGB"
        value = f"{4 + (i % 30) / 10:.1f}" if test == "GLU" else f"{12 + (i % 40) / 10:.1f}"
        result = Result(
            specimen_id=f"S{i}",
            test_code=test,
            instrument_test_code=test,
            value=Measurement.parse(value),
            patient_id="P1",
            instrument="an1",
            completed_at=T0 + timedelta(minutes=30),
            status="F",
            reagents=(ReagentUse("GLU reagent", "2365", "GLU"),) if test == "GLU" else (),
        )
        contexts.append(
            ResultContext(
                result,
                T0 + timedelta(hours=1),
                Specimen(f"S{i}", "P1", "serum"),
                patient,
                PreviousResult(Decimal(value) + Decimal("0.3"), T0 - timedelta(hours=20)),
            )
        )
    engine.decide(contexts[0])  # warm up
    started = time.perf_counter()
    held = 0
    for ctx in contexts:
        held += engine.decide(ctx).action.value == "hold"
    elapsed = time.perf_counter() - started
    print(
        f"Python {sys.version.split()[0]}: {args.results} decisions in {elapsed:.3f} s, "
        f"{elapsed / args.results * 1e6:.1f} us per decision ({held} held)"
    )


if __name__ == "__main__":
    main()
