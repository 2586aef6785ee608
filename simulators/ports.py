"""Free TCP ports for a daemon started on this machine (the demo, tests, benchmarks).

A port the kernel hands out for ``bind(0)`` is in its range for outgoing connections: a
daemon that connects out (to the LIS, to an analyser) while it starts may be given that
very port as its source before it listens on it, and then cannot. Ports are taken below
that range instead, and never the same one twice in a process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()


def _below_outgoing() -> tuple[int, int]:
    try:
        low = int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default when the range cannot be read
    return min(10000, low // 2), low


def use_share(index: int, count: int) -> None:
    """Take ports only from the ``index``-th of ``count`` equal slices of the range, so that
    processes picking ports side by side (parallel test workers) never pick the same."""
    if not 0 <= index < count:
        raise ValueError(f"share {index} of {count}")
    _share[:] = [index, count]


_share = [0, 1]


def free_port() -> int:
    """A port nobody listens on now, outside the range of outgoing connections (and in
    this process's share of it)."""
    low, high = _below_outgoing()
    index, count = _share
    width = (high - low) // count
    low, high = low + index * width, low + (index + 1) * width
    for _ in range(1000):
        port = random.randrange(low, high)
        if port in _given:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise OSError(f"no free port found between {low} and {high}")
