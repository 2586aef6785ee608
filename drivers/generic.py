"""The generic CLSI LIS2-A2 (E1394) driver, for any analyser without one of its own."""

from __future__ import annotations

from drivers.base import Driver


class GenericDriver(Driver):
    """The standard's reading, unchanged."""

    name = "generic"
