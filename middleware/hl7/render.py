"""``lis-middleware hl7 render``: the HL7 messages the results of a capture become, for
lab IT to check a mapping with their LIS vendor before anything is sent. The capture is
an ASTM one, or the HL7 an analyser sent."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime

from drivers import AUTO
from middleware.decode import read_hl7_messages, read_messages
from middleware.domain import InstrumentMessage
from middleware.hl7.capture import looks_like_hl7
from middleware.hl7.results import Reported, Sender, by_specimen


def render_capture(
    data: bytes,
    at: datetime,
    driver_name: str | None = AUTO,
    tolerate: str | None = None,
    sender: Sender | None = None,
) -> list[str]:
    """Every message the capture's patient results would be sent as, whatever the rules
    would decide about them."""
    numbers = itertools.count(1)
    out: list[str] = []
    for reading in _readings(data, driver_name, tolerate):
        # Patient results only: controls stay in the middleware.
        built = by_specimen(
            [Reported(r) for r in reading.results],
            reading.patients,
            at,
            sender or Sender(),
            lambda: f"MW{next(numbers):08d}",
        )
        out += [b.message for b in built]
    return out


def _readings(
    data: bytes, driver_name: str | None, tolerate: str | None
) -> Iterator[InstrumentMessage]:
    if not looks_like_hl7(data):
        for read in read_messages(data, driver_name, tolerate)[1]:
            yield read.driver.read(read.decoded.records)
        return
    for one in read_hl7_messages(data, driver_name)[1]:
        yield one.driver.read(one.message)
