"""Building ORU^R01 messages: our text builder against hl7apy building the same message.

    .venv/bin/python bench/hl7_build.py [--results 20] [--seconds 3]

One specimen with ``--results`` numeric results (units, range, flags, times, instrument),
the message built again and again for about ``--seconds`` each way; prints messages/s
and the ratio. hl7apy builds the same segments and fields through its object tree
(without validation, its fastest); the two messages are the same, segment for segment.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hl7apy.core import Message

from middleware.domain import Measurement, Patient, Result
from middleware.hl7.results import Reported, oru_r01, timestamp, value_type

AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def results(count: int) -> list[Result]:
    return [
        Result(
            specimen_id="S1",
            test_code=f"T{i:02d}",
            instrument_test_code=f"T{i:02d}",
            value=Measurement.parse(f"{5 + i / 10:.1f}"),
            units="mmol/L",
            reference_range="3.9-5.8",
            abnormal_flags=("N",),
            completed_at=AT,
            instrument="chem-1",
            patient_id="PAT1",
        )
        for i in range(count)
    ]


def ours(items: list[Result]) -> Callable[[], str]:
    patient = Patient("PAT1", "F")
    reported = [Reported(r) for r in items]
    return lambda: oru_r01("MW1", AT, "S1", patient, reported)


def theirs(items: list[Result]) -> Callable[[], str]:
    def build() -> str:
        message = Message("ORU_R01", version="2.5.1")
        message.msh.msh_3, message.msh.msh_4 = "LIS-MIDDLEWARE", "LAB"
        message.msh.msh_5, message.msh.msh_6 = "LIS", "LAB"
        message.msh.msh_7, message.msh.msh_9 = timestamp(AT), "ORU^R01^ORU_R01"
        message.msh.msh_10, message.msh.msh_11 = "MW1", "P"
        result = message.add_group("ORU_R01_PATIENT_RESULT")
        pid = result.add_group("ORU_R01_PATIENT").pid
        pid.pid_1, pid.pid_3, pid.pid_5, pid.pid_8 = "1", "PAT1^^^^MR", '""', "F"
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        order.obr.obr_1, order.obr.obr_3 = "1", "S1"
        order.obr.obr_4 = "chem-1^chem-1 results^L"
        order.obr.obr_7, order.obr.obr_25 = timestamp(AT), "F"
        for number, item in enumerate(items, start=1):
            obx = order.add_group("ORU_R01_OBSERVATION").obx
            kind, value = value_type(item)
            obx.obx_1, obx.obx_2, obx.obx_3 = str(number), kind, f"{item.test_code}^^L"
            obx.obx_5, obx.obx_6, obx.obx_7 = value, item.units, item.reference_range
            obx.obx_8, obx.obx_11 = "N", "F"
            obx.obx_14, obx.obx_18, obx.obx_19 = timestamp(AT), "chem-1", timestamp(AT)
        return str(message.to_er7())

    return build


def rate(build: Callable[[], str], seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(20):
            build()
        done += 20
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    items = results(args.results)
    ours_rate = rate(ours(items), args.seconds)
    theirs_rate = rate(theirs(items), args.seconds)
    print(
        f"ORU^R01 of {args.results} results: ours {ours_rate:,.0f} messages/s, hl7apy "
        f"{theirs_rate:,.0f} messages/s: {ours_rate / theirs_rate:,.0f} times faster"
    )


if __name__ == "__main__":
    main()
