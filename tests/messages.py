"""Messages a chemistry analyser sends, for the tests of the engine inside ingest.

The control lots are those of the chemistry control in rules/qc.yaml."""

from __future__ import annotations


def patient(specimen: str, value: str, patient_id: str = "PAT1") -> list[bytes]:
    """One glucose result of a patient."""
    return [
        b"H|\\^&|||CHEM-1|||||||P|LIS2-A2",
        b"P|1||" + patient_id.encode(),
        b"O|1|" + specimen.encode() + b"||^^^GLU|R",
        b"R|1|^^^GLU|" + value.encode() + b"|mmol/L||N||F",
        b"L|1|N",
    ]


def qc(level_1: str, level_2: str, test: str = "GLU") -> list[bytes]:
    """A QC message (H.12 = Q): both chemistry control levels of a test (glucose by
    default), the sample id being the lot."""
    code = test.encode()
    return [
        b"H|\\^&|||CHEM-1|||||||Q|LIS2-A2",
        b"P|1",
        b"O|1|CC-45781||^^^" + code + b"|R",
        b"R|1|^^^" + code + b"|" + level_1.encode() + b"|mmol/L||N||F",
        b"O|2|CC-45782||^^^" + code + b"|R",
        b"R|1|^^^" + code + b"|" + level_2.encode() + b"|mmol/L||N||F",
        b"L|1|N",
    ]


def three_tests(n: int, sender: bytes) -> list[bytes]:
    """Message ``n`` of a stream: one patient's glucose, creatinine and potassium, each
    message with values of its own, so that every stored row can be told apart."""
    return [
        b"H|\\^&|||" + sender + b"|||||||P|LIS2-A2|20260301080000",
        b"P|1||PAT%04d" % n,
        b"O|1|S%04d||^^^GLU\\^^^CREA\\^^^K|R" % n,
        b"R|1|^^^GLU|%d.1|mmol/L||N||F||||20260301075900" % n,
        b"R|2|^^^CREA|%d|umol/L||N||F||||20260301075900" % (60 + n),
        b"R|3|^^^K|4.%d|mmol/L||N||F||||20260301075900" % (n % 10),
        b"L|1|N",
    ]
