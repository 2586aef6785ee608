"""The zone the laboratory's clocks keep when the settings name none: this host's.

Analysers sit beside the host and send wall-clock times without a zone; the
laboratory's calendar says when a reagent lot has expired. Both need the zone with its
rules. ``datetime.now().astimezone()`` gives only the offset in force when it is asked:
a daemon started in winter would read summer's times an hour off, and let a lot that
expired yesterday pass for the first hour of the next day.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, tzinfo
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCALTIME = Path("/etc/localtime")


def zone_or_host(configured: tzinfo | None) -> tzinfo:
    """A zone as configured, else this host's."""
    return configured or host_zone()


def without_summer_time(zone: tzinfo) -> bool:
    """Whether ``zone`` is only the offset in force when it was read (what the host gave
    when it named no zone :func:`read_host_zone` can read); UTC has no summer to miss."""
    return not isinstance(zone, ZoneInfo) and zone is not UTC


@cache
def host_zone() -> tzinfo:
    """This host's zone, read once: a process keeps the zone it started with."""
    return read_host_zone(os.environ.get("TZ"), LOCALTIME)


def read_host_zone(tz: str | None, localtime: Path) -> tzinfo:
    """The zone that ``TZ`` names (a zone name or a zone file, with or without the
    leading ``:``; empty is UTC), else the one ``localtime`` links to or holds.

    Only when neither gives a zone with its rules (``TZ`` as a POSIX rule such as
    ``CET-1CEST,M3.5.0,M10.5.0/3``, no ``localtime``) is it the offset in force now:
    the settings' ``timezone`` is then the remedy.
    """
    if tz is not None:
        name = tz.removeprefix(":")
        if not name:
            return UTC
        zone = _from_file(Path(name)) if name.startswith("/") else _named(name)
        return zone or _offset_now()
    return _linked(localtime) or _from_file(localtime) or _offset_now()


def _named(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _linked(localtime: Path) -> ZoneInfo | None:
    """The zone by its name when ``localtime`` links into a zone database (as on Debian
    and most systems): the name is what the pages and the log can show. Links are
    followed one at a time so that the name is the one lab IT chose (``US/Eastern``, itself
    a link to ``America/New_York``, is shown as ``US/Eastern``)."""
    path = localtime
    for _ in range(_MOST_LINKS):
        try:
            target = os.readlink(path)
        except OSError:
            return None
        path = Path(os.path.normpath(path.parent / target))
        zone = _in_database(path)
        if zone is not None:
            return zone
    return None


_MOST_LINKS = 40
"""Links followed from ``localtime`` before giving up (a loop of links)."""


def _in_database(path: Path) -> ZoneInfo | None:
    parts = path.parts
    if "zoneinfo" not in parts:
        return None
    name = parts[len(parts) - parts[::-1].index("zoneinfo") :]
    if name[:1] in (("posix",), ("right",)):
        # The same rules; ``right/`` counts leap seconds, which the host's clock does not.
        name = name[1:]
    return _named("/".join(name))


def _from_file(path: Path) -> ZoneInfo | None:
    try:
        with path.open("rb") as file:
            return ZoneInfo.from_file(file, key=str(path))
    except (OSError, ValueError):
        return None


def _offset_now() -> tzinfo:
    return datetime.now().astimezone().tzinfo or UTC
