"""``lis-middleware hl7 render``: the HL7 messages the results of a capture become, for
lab IT to check a mapping with their LIS vendor before anything is sent."""

from __future__ import annotations

from datetime import datetime

import drivers
from middleware.astm.capture import read_capture
from middleware.astm.records import decode_message
from middleware.decode import parse_tolerances
from middleware.domain import InstrumentMessage
from middleware.hl7.results import Reported, Sender, oru_r01


def by_specimen(
    reading: InstrumentMessage,
    at: datetime,
    first: int = 1,
    sender: Sender = Sender(),  # noqa: B008
) -> list[str]:
    """One ORU^R01 per specimen of a message's patient results, in the order the
    analyser sent them (controls stay in the middleware); control ids ``MW`` and a
    running number from ``first``."""
    specimens: dict[str, list[Reported]] = {}
    for result in reading.results:
        specimens.setdefault(result.specimen_id, []).append(Reported(result))
    out = []
    for number, (specimen, reported) in enumerate(specimens.items(), start=first):
        patient_id = reported[0].result.patient_id
        patient = next((p for p in reading.patients if p.patient_id == patient_id), None)
        out.append(oru_r01(f"MW{number:08d}", at, specimen, patient, reported, sender))
    return out


def render_capture(
    data: bytes,
    at: datetime,
    driver_name: str | None = None,
    tolerate: str | None = None,
    version: str = "2.5.1",
) -> list[str]:
    """Every message the capture's patient results would be sent as, whatever the rules
    would decide about them."""
    driver = drivers.get(driver_name)
    capture = read_capture(data, parse_tolerances(tolerate, driver.tolerances))
    out: list[str] = []
    for captured in capture.messages:
        reading = driver.read(decode_message(captured.lines).records)
        out += by_specimen(reading, at, len(out) + 1, Sender(version=version))
    return out
