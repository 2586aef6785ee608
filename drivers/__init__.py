"""Instrument drivers: one module per analyser family, found by name.

Adding an instrument is one new module here defining a ``Driver`` subclass, listed in
``_MODULES``; see docs/drivers.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from drivers.base import Driver, DriverOptions
from drivers.detect import AUTO, AutoDriver, Detection, detect
from middleware.astm.records import Record

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
    "euroimmun_analyzer",
    "biorad_ih",
)


def _load() -> dict[str, type[Driver]]:
    found: dict[str, type[Driver]] = {}
    for module_name in _MODULES:
        module = importlib.import_module(f"drivers.{module_name}")
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, Driver)
                and value.__module__ == module.__name__
            ):
                found[value.name] = value
    return found


_DRIVERS = _load()


def names() -> list[str]:
    return sorted(_DRIVERS)


def driver_class(name: str | None) -> type[Driver]:
    key = name or "generic"
    try:
        return _DRIVERS[key]
    except KeyError:
        raise KeyError(f"unknown driver {key!r}; known: {', '.join(names())}") from None


def families() -> list[type[Driver]]:
    """Every driver but the generic reading, in the order of ``_MODULES``."""
    return [cls for cls in _DRIVERS.values() if cls.name != "generic"]


def get(name: str | None, options: DriverOptions | None = None, instrument: str = "") -> Driver:
    """A driver instance: ``auto`` detects one per message; None is the generic reading."""
    if name == AUTO:
        return AutoDriver(options, instrument, families())
    return driver_class(name)(options, instrument)


def identify(records: Sequence[Record]) -> Detection:
    """The driver a message's sender (or else its layout) names, and why."""
    return detect(records, families())


__all__ = [
    "AUTO",
    "AutoDriver",
    "Detection",
    "Driver",
    "DriverOptions",
    "driver_class",
    "families",
    "get",
    "identify",
    "names",
]
