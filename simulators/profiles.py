"""Simulated analysers: what each measures and how it writes it in ASTM E1394.

Each profile speaks the dialect of one of the bundled drivers, so that what it sends is
read by that driver exactly as a real analyser's message would be:

* ``sysmex-xn`` (haematology): a CBC with differential in the Sysmex XN layout, the sample
  number in O.4, parameters in R.3 component 5, QC samples named ``QC-<lot>``.
* ``cobas-c`` (chemistry): a cobas c 311 style panel, application codes (ACNs) in R.3,
  serum indices (L, H, I) as results of their own, controls named by their lot with sample
  type QC in O.4.
* ``architect-i`` (immunoassay): an ARCHITECT i2000SR, the reagent lot and serial in R.3,
  controls with action code Q and their lot in R.3.

Control lots, levels and targets are read from the bundled ``rules/qc.yaml``; the values a
profile makes are in the laboratory's own units.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import ClassVar

from middleware.astm.records import decode_message
from middleware.engine.rules import load_rules

#: The bundled rule files, whose control materials the profiles run.
RULES = Path(__file__).resolve().parents[1] / "rules"


@dataclass(frozen=True, slots=True)
class Analyte:
    """One test of the analyser's menu."""

    code: str
    """The analyser's own code (Sysmex parameter, cobas ACN, ARCHITECT assay number)."""
    lab_code: str
    units: str
    low: Decimal
    high: Decimal
    """Where most patients' values fall (what the simulator draws from)."""
    decimals: int
    critical: Decimal | None = None
    """A value past the critical limit of the bundled rules/ranges.yaml."""
    name: str = ""
    on_request: bool = False
    """Measured only when a scenario asks for it (serum indices): otherwise each index
    would be one more result for the laboratory to look at."""


@dataclass(frozen=True, slots=True)
class ControlLevel:
    """A control lot of the bundled rules: its level and its targets per lab code."""

    lot: str
    level: str
    targets: Mapping[str, tuple[Decimal, Decimal]]


@dataclass(frozen=True, slots=True)
class Measured:
    analyte: Analyte
    value: str
    flag: str = "N"


@dataclass(frozen=True, slots=True)
class Sample:
    """One tube as the analyser reports it: a patient's specimen or a control."""

    specimen_id: str
    measured: tuple[Measured, ...]
    patient_id: str = ""
    sex: str = ""
    birth_date: date | None = None
    collected_at: datetime | None = None
    control: ControlLevel | None = None
    reagent_lot: str = ""
    label: str = ""
    """What this sample shows, in a few words (the demo prints it)."""

    @property
    def is_control(self) -> bool:
        return self.control is not None


def _analyte(code: str, lab: str, units: str, low: str, high: str, decimals: int,
             critical: str | None = None, name: str = "", on_request: bool = False,
             ) -> Analyte:  # fmt: skip
    return Analyte(code, lab, units, Decimal(low), Decimal(high), decimals,
                   Decimal(critical) if critical else None, name, on_request)  # fmt: skip


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _moments(sample: Sample, now: datetime) -> tuple[str, str, str]:
    """The message's time, the collection time and the birth date, as ASTM writes them."""
    collected = _stamp(sample.collected_at) if sample.collected_at else ""
    birth = sample.birth_date.strftime("%Y%m%d") if sample.birth_date else ""
    return _stamp(now), collected, birth


class Profile:
    """An analyser model: its menu, its controls and the records it writes."""

    name: str = ""
    kind: str = ""
    driver: str = ""
    sender: str = ""
    analytes: tuple[Analyte, ...] = ()
    control_material: str = ""
    """The control material of the bundled rules/qc.yaml this analyser runs: its lots,
    levels and targets are read from there, so the simulator and the rules agree."""
    test_map: ClassVar[Mapping[str, str]] = {}
    """Analyser codes the driver does not map itself: the instrument's configuration maps
    them (``test_map``), as a laboratory does for its own application codes."""
    prefix: str = ""
    """Specimen ids of this profile's samples start with it, so that several simulated
    analysers never share one."""
    shift_tests: tuple[str, str, str] = ("", "", "")
    """Lab codes the QC shift scenario moves by a large, a medium and a small amount."""
    index_tests: tuple[str, ...] = ()
    """Lab codes whose results the serum indices concern (haemolysis, icterus...)."""
    reagent_lots: tuple[str, ...] = ()
    """Reagent lots the analyser reports: in use, the next one, an expired one."""

    @property
    def controls(self) -> tuple[ControlLevel, ...]:
        return _control_levels(self.control_material)

    def analyte(self, lab_code: str) -> Analyte:
        return next(a for a in self.analytes if a.lab_code == lab_code)

    def by_code(self, code: str) -> Analyte | None:
        return next((a for a in self.analytes if a.code == code or a.lab_code == code), None)

    def message(self, sample: Sample, now: datetime) -> list[bytes]:
        """The records of one sample's result message, without terminators."""
        raise NotImplementedError

    def query(self, specimen_ids: Sequence[str], now: datetime) -> list[bytes]:
        """A host query asking the tests to run on these specimens."""
        raise NotImplementedError

    def ordered(self, records: Sequence[bytes]) -> dict[str, list[Analyte]]:
        """The tests a host's answer orders per specimen, among those this analyser runs."""
        decoded = decode_message([r.decode("latin-1") for r in records])
        out: dict[str, list[Analyte]] = {}
        for record in decoded.records:
            if record.type != "O":
                continue
            # O.3 is the specimen id, or (Sysmex) rack^position^sample no.^attribute
            specimen_id = (record.value(3, 2) or record.value(3)).strip()
            tests = out.setdefault(specimen_id, [])
            for repeat in record.repeats(5):
                code = next((c for c in reversed(repeat) if c), "")
                analyte = self.by_code(code)
                if analyte is not None and analyte not in tests:
                    tests.append(analyte)
        return out


class SysmexXN(Profile):
    name = "sysmex-xn"
    kind = "haematology"
    driver = "sysmex_xn"
    sender = "XN-550^00-22^11001^^^^BM123456"
    prefix = "H"
    analytes = (
        _analyte("WBC", "WBC", "10*3/uL", "4.5", "9.5", 2, "1.5"),
        _analyte("RBC", "RBC", "10*6/uL", "4.2", "5.4", 2),
        _analyte("HGB", "HGB", "g/dL", "12.5", "16.0", 1, "6.2"),
        _analyte("HCT", "HCT", "%", "37.0", "47.0", 1),
        _analyte("PLT", "PLT", "10*3/uL", "170", "380", 0, "35"),
        _analyte("MCV", "MCV", "fL", "82.0", "96.0", 1),
        _analyte("MCH", "MCH", "pg", "27.5", "32.5", 1),
        _analyte("MCHC", "MCHC", "g/dL", "32.0", "35.5", 1),
        _analyte("RDW-CV", "RDW-CV", "%", "11.8", "14.2", 1),
        _analyte("NEUT#", "NEUT#", "10*3/uL", "2.0", "6.5", 2),
        _analyte("LYMPH#", "LYMPH#", "10*3/uL", "1.2", "3.2", 2),
        _analyte("MONO#", "MONO#", "10*3/uL", "0.25", "0.80", 2),
        _analyte("EO#", "EO#", "10*3/uL", "0.05", "0.40", 2),
        _analyte("BASO#", "BASO#", "10*3/uL", "0.01", "0.08", 2),
    )
    control_material = "Haematology control"
    shift_tests = ("HGB", "PLT", "WBC")

    def message(self, sample: Sample, now: datetime) -> list[bytes]:
        stamp, collected, birth = _moments(sample, now)
        # O.4 = rack^tube position^sample no. (right-aligned to 22)^attribute
        sample_no = sample.specimen_id.rjust(22)
        records = [
            f"H|\\^&|||{self.sender}|||||||P|E1394-97|{stamp}",
            f"P|1|||{sample.patient_id}|||{birth}|{sample.sex}",
            f"O|1||1^1^{sample_no}^B|{self._tests(sample)}|R||{collected}||||"
            f"{'Q' if sample.is_control else 'N'}||||||||||||||F",
        ]
        for n, measured in enumerate(sample.measured, start=1):
            a = measured.analyte
            records.append(
                f"R|{n}|^^^^{a.code}^1|{measured.value}|{a.units}||{measured.flag}||F||||{stamp}"
            )
        records.append("L|1|N")
        return [r.encode("latin-1") for r in records]

    @staticmethod
    def _tests(sample: Sample) -> str:
        return "\\".join(f"^^^^{m.analyte.code}^1" for m in sample.measured)

    def query(self, specimen_ids: Sequence[str], now: datetime) -> list[bytes]:
        asked = "\\".join(f"1^1^{s.rjust(22)}^B" for s in specimen_ids)
        return [
            f"H|\\^&|||{self.sender}|||||||P|E1394-97|{_stamp(now)}".encode(),
            f"Q|1|{asked}||||||||||O".encode(),
            b"L|1|N",
        ]


class CobasC(Profile):
    name = "cobas-c"
    kind = "chemistry"
    driver = "roche_cobas"
    sender = "c311^1"
    prefix = "C"
    analytes = (
        _analyte("717", "GLU", "mmol/L", "4.0", "6.0", 2, "1.9"),
        _analyte("690", "CREA", "umol/L", "55", "100", 0),
        _analyte("418", "UREA", "mmol/L", "2.8", "7.5", 1),
        _analyte("678", "TP", "g/L", "64", "82", 0),
        _analyte("413", "ALB", "g/L", "36", "50", 0),
        _analyte("565", "TBIL", "umol/L", "4", "19", 0),
        _analyte("687", "AST", "U/L", "12", "35", 0),
        _analyte("685", "ALT", "U/L", "9", "38", 0),
        _analyte("683", "ALP", "U/L", "45", "110", 0),
        _analyte("684", "GGT", "U/L", "10", "55", 0),
        _analyte("990", "K", "mmol/L", "3.6", "5.0", 2, "6.9"),
        _analyte("989", "NA", "mmol/L", "137", "144", 0, "117"),
        _analyte("439", "CA", "mmol/L", "2.20", "2.50", 2, "3.61"),
        _analyte("692", "CRP", "mg/L", "0.5", "4.5", 1),
        _analyte("994", "SI-H", "", "0", "12", 0, on_request=True),
        _analyte("995", "SI-I", "", "0", "6", 0, on_request=True),
        _analyte("993", "SI-L", "", "0", "15", 0, on_request=True),
    )
    test_map: ClassVar[Mapping[str, str]] = {
        "690": "CREA", "678": "TP", "565": "TBIL", "683": "ALP", "684": "GGT",
        "439": "CA", "692": "CRP", "993": "SI-L", "994": "SI-H", "995": "SI-I",
    }  # fmt: skip
    control_material = "Chemistry control"
    shift_tests = ("ALB", "AST", "ALT")
    index_tests = ("K", "AST", "TBIL")

    def message(self, sample: Sample, now: datetime) -> list[bytes]:
        stamp, collected, birth = _moments(sample, now)
        sample_type = "QC" if sample.is_control else "S1"
        action = "Q" if sample.is_control else "N"
        tests = "\\".join(f"^^^{m.analyte.code}^" for m in sample.measured)
        records = [
            f"H|\\^&|||{self.sender}|||||host^1|RSUPL^REAL|P|1|{stamp}",
            f"P|1|||{sample.patient_id}|||{birth}|{sample.sex}",
            f"O|1|{sample.specimen_id.ljust(22)}|0^5001^1^^{sample_type}^SC|{tests}|R||"
            f"{collected}||||{action}||||1||||||||||F",
        ]
        for n, measured in enumerate(sample.measured, start=1):
            a = measured.analyte
            records.append(
                f"R|{n}|^^^{a.code}/|{measured.value}|{a.units}||{measured.flag}||F||"
                f"admin^||{stamp}|P1"
            )
            records.append("C|1|I|0|I")  # data alarm 0: none
        records.append("L|1|N")
        return [r.encode("latin-1") for r in records]

    def query(self, specimen_ids: Sequence[str], now: datetime) -> list[bytes]:
        asked = "\\".join(f"^^{s.ljust(22)}^0^5001^1^^S1^SC" for s in specimen_ids)
        return [
            f"H|\\^&|||{self.sender}|||||host^1|TSREQ^REAL|P|1|{_stamp(now)}".encode(),
            f"Q|1|{asked}||ALL||||||||O".encode(),
            b"L|1|N",
        ]


class ArchitectI(Profile):
    name = "architect-i"
    kind = "immunoassay"
    driver = "abbott_architect"
    sender = "ARCHITECT^9.45^i1SR01234^1.00"
    prefix = "I"
    analytes = (
        _analyte("244", "TSH", "uIU/mL", "0.5", "3.8", 3, name="TSH"),
        _analyte("245", "FT4", "pmol/L", "10.5", "20.0", 2, name="Free T4"),
    )
    control_material = "Immunoassay control"
    shift_tests = ("TSH", "FT4", "")
    reagent_lots = ("81234LI00", "82517LI00", "79950LI00")

    def message(self, sample: Sample, now: datetime) -> list[bytes]:
        stamp, collected, birth = _moments(sample, now)
        name = "ARCHITECT QC" if sample.is_control else sample.specimen_id
        action = "Q" if sample.is_control else ""
        control_lot = sample.control.lot if sample.control else ""
        tests = "\\".join(f"^^^{m.analyte.code}^{m.analyte.name}^UNDILUTED^P"
                          for m in sample.measured)  # fmt: skip
        records = [
            f"H|\\^&|||{self.sender}|||||||P|1|{stamp}",
            f"P|1|||{sample.patient_id}|||{birth}|{sample.sex}",
            f"O|1|{name}|{sample.specimen_id}^A1^3|{tests}|R||{collected}||||{action}||||",
        ]
        for n, measured in enumerate(sample.measured, start=1):
            a = measured.analyte
            r3 = (f"^^^{a.code}^{a.name}^UNDILUTED^F^{sample.reagent_lot}^0{n}2743"
                  f"^{control_lot}^F")  # fmt: skip
            records.append(
                f"R|{n}|{r3}|{measured.value}|{a.units}||{measured.flag}||F||admin^admin|"
                f"{stamp}|{stamp}|i1SR01234"
            )
        records.append("L|1")
        return [r.encode("latin-1") for r in records]

    def query(self, specimen_ids: Sequence[str], now: datetime) -> list[bytes]:
        asked = "\\".join(f"^{s}" for s in specimen_ids)
        return [
            f"H|\\^&|||{self.sender}|||||||P|1|{_stamp(now)}".encode(),
            f"Q|1|{asked}||^^^ALL||||||||O".encode(),
            b"L|1",
        ]


@functools.cache
def _control_levels(material: str) -> tuple[ControlLevel, ...]:
    found = next(m for m in load_rules(RULES).control_materials if m.name == material)
    return tuple(
        ControlLevel(
            lot.lot,
            lot.level,
            {test: (Decimal(t.mean), Decimal(t.sd)) for test, t in lot.targets.items()},
        )
        for lot in found.lots
    )


PROFILES: dict[str, Profile] = {p.name: p for p in (SysmexXN(), CobasC(), ArchitectI())}
#: The kinds of analyser, as the command line also accepts them.
ALIASES = {p.kind: p.name for p in PROFILES.values()}


def profile(name: str) -> Profile:
    chosen = PROFILES.get(ALIASES.get(name, name))
    if chosen is None:
        known = ", ".join([*PROFILES, *ALIASES])
        raise ValueError(f"unknown profile {name!r}; known: {known}")
    return chosen


__all__ = ["ALIASES", "PROFILES", "Analyte", "ControlLevel", "Measured", "Profile", "Sample",
           "profile"]  # fmt: skip
