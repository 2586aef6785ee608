"""Instrument drivers: one module per analyser family, found by name.

Adding an instrument is one new module here defining a ``Driver`` subclass, listed in
``_MODULES``; see docs/drivers.md.
"""

from __future__ import annotations

import importlib

from drivers.base import Driver, DriverOptions

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


def get(name: str | None, options: DriverOptions | None = None, instrument: str = "") -> Driver:
    """A driver instance; the generic LIS2-A2 reading when ``name`` is None."""
    return driver_class(name)(options, instrument)


def identify(header_sender: str) -> type[Driver] | None:
    """The driver whose sender pattern matches an H record's sender field, if any."""
    for cls in _DRIVERS.values():
        if cls.sender_pattern is not None and cls.sender_pattern.search(header_sender):
            return cls
    return None


__all__ = ["Driver", "DriverOptions", "driver_class", "get", "identify", "names"]
