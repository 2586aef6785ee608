"""``lis-middleware hl7 render``: the HL7 messages the results of a capture become, for
lab IT to check a mapping with their LIS vendor before anything is sent."""

from __future__ import annotations

import itertools
from datetime import datetime

from drivers import AUTO
from middleware.decode import read_messages
from middleware.hl7.results import Reported, Sender, by_specimen


def render_capture(
    data: bytes,
    at: datetime,
    driver_name: str | None = AUTO,
    tolerate: str | None = None,
    version: str = "2.5.1",
) -> list[str]:
    """Every message the capture's patient results would be sent as, whatever the rules
    would decide about them."""
    _, read = read_messages(data, driver_name, tolerate)
    numbers = itertools.count(1)
    sender = Sender(version=version)
    out: list[str] = []
    for message in read:
        reading = message.driver.read(message.decoded.records)
        # Patient results only: controls stay in the middleware.
        built = by_specimen(
            [Reported(r) for r in reading.results],
            reading.patients,
            at,
            sender,
            lambda: f"MW{next(numbers):08d}",
        )
        out += [b.message for b in built]
    return out
