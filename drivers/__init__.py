"""Instrument drivers: one module per analyser family, looked up by name."""

from __future__ import annotations

from drivers.base import Driver, ReadResult
from drivers.generic import GenericDriver

_DRIVERS: dict[str, type[Driver]] = {GenericDriver.name: GenericDriver}


def names() -> list[str]:
    return sorted(_DRIVERS)


def get(name: str | None) -> Driver:
    """The driver called ``name`` (the generic LIS2-A2 reading when None)."""
    key = name or GenericDriver.name
    try:
        return _DRIVERS[key]()
    except KeyError:
        raise KeyError(f"unknown driver {key!r}; known: {', '.join(names())}") from None


__all__ = ["Driver", "GenericDriver", "ReadResult", "get", "names"]
