"""Instrument drivers: one module per analyser family, found by name.

Adding an instrument is one new module here defining a ``Driver`` subclass, listed in
``_MODULES``; see docs/drivers.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from drivers.base import Driver, DriverOptions
from drivers.detect import AUTO, AutoDriver, Detection, detect
from drivers.hl7 import Hl7AutoDriver, Hl7Driver, detect_hl7
from middleware.astm.records import Record
from middleware.hl7.segments import Hl7Message

_MODULES = (
    "generic",
    "roche_cobas",
    "ortho_vitros",
    "erba_xl",
    "mindray_bs",
    "abbott_architect",
    "sysmex_xn",
    "horiba_yumizen",
    "mindray_bc",
    "snibe_maglumi",
    "beckman_access",
    "beckman_au",
    "euroimmun_analyzer",
    "biorad_ih",
    "cepheid_genexpert",
    "abbott_afinion",
    "siemens_dca",
    "siemens_atellica",
    "siemens_centaur",
    "siemens_dimension",
    "sysmex_ca",
    "hl7",
    "mindray_hl7",
    "mindray_bs_hl7",
    "pixcell_hemoscreen",
)


def _load() -> tuple[dict[str, type[Driver]], dict[str, type[Hl7Driver]]]:
    astm: dict[str, type[Driver]] = {}
    hl7: dict[str, type[Hl7Driver]] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"drivers.{module_name}")
        for value in vars(module).values():
            if not isinstance(value, type) or value.__module__ != module.__name__:
                continue
            if issubclass(value, Driver) and value is not AutoDriver:
                astm[value.name] = value
            elif issubclass(value, Hl7Driver) and value is not Hl7AutoDriver:
                hl7[value.name] = value
    return astm, hl7


_DRIVERS, _HL7_DRIVERS = _load()


def names() -> list[str]:
    """Every driver, whatever protocol it speaks."""
    return sorted([*_DRIVERS, *_HL7_DRIVERS])


def protocol(name: str | None) -> str:
    """``hl7`` for a driver of an analyser that speaks HL7, else ``astm`` (``auto`` too)."""
    return "hl7" if name in _HL7_DRIVERS else "astm"


def driver_class(name: str | None) -> type[Driver]:
    key = name or "generic"
    try:
        return _DRIVERS[key]
    except KeyError:
        known = ", ".join(sorted(_DRIVERS))
        raise KeyError(f"unknown ASTM driver {key!r}; known: {known}") from None


def families() -> list[type[Driver]]:
    """Every ASTM driver but the generic reading, in the order of ``_MODULES``."""
    return [cls for cls in _DRIVERS.values() if cls.name != "generic"]


def hl7_families() -> list[type[Hl7Driver]]:
    """Every HL7 driver but the base reading, in the order of ``_MODULES``."""
    return [cls for cls in _HL7_DRIVERS.values() if cls is not Hl7Driver]


def get(name: str | None, options: DriverOptions | None = None, instrument: str = "") -> Driver:
    """An ASTM driver instance: ``auto`` detects one per message; None is the generic
    reading."""
    if name == AUTO:
        return AutoDriver(options, instrument, families())
    return driver_class(name)(options, instrument)


def get_hl7(
    name: str | None, options: DriverOptions | None = None, instrument: str = ""
) -> Hl7Driver:
    """An HL7 driver instance: ``auto`` (or None) detects the family per message."""
    if name in (None, AUTO):
        return Hl7AutoDriver(options, instrument, hl7_families())
    try:
        return _HL7_DRIVERS[name](options, instrument)
    except KeyError:
        known = ", ".join(sorted(_HL7_DRIVERS))
        raise KeyError(f"unknown HL7 driver {name!r}; known: {known}") from None


def identify_hl7(message: Hl7Message) -> Detection[Hl7Driver]:
    """The HL7 driver a message's sender (or else its layout) names, and why."""
    return detect_hl7(message, hl7_families())


def identify(records: Sequence[Record]) -> Detection[Driver]:
    """The driver a message's sender (or else its layout) names, and why."""
    return detect(records, families())


__all__ = [
    "AUTO",
    "AutoDriver",
    "Detection",
    "Driver",
    "DriverOptions",
    "Hl7Driver",
    "driver_class",
    "families",
    "get",
    "get_hl7",
    "hl7_families",
    "identify",
    "identify_hl7",
    "names",
    "protocol",
]
