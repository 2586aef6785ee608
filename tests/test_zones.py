"""The host's zone, when the settings name none: a zone with its rules, never the offset
in force at start-up."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from middleware.domain import ReagentUse
from middleware.engine.context import ResultContext
from middleware.engine.engine import Engine
from middleware.engine.qc import NO_QC
from middleware.engine.rules import ReagentLot, load_rules
from middleware.zones import host_zone, read_host_zone, without_summer_time, zone_or_host
from tests.test_engine_checks import ADULT_MAN, result

ROOT = Path(__file__).resolve().parent.parent
ZONES = Path("/usr/share/zoneinfo")
WINTER = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SUMMER = datetime(2026, 7, 15, 12, 0, tzinfo=UTC)

needs_zone_files = pytest.mark.skipif(
    not (ZONES / "Europe" / "Paris").is_file(), reason="no zone database in /usr/share/zoneinfo"
)


def offsets(zone: tzinfo) -> tuple[timedelta | None, timedelta | None]:
    return WINTER.astimezone(zone).utcoffset(), SUMMER.astimezone(zone).utcoffset()


PARIS = (timedelta(hours=1), timedelta(hours=2))
NEW_YORK = (timedelta(hours=-5), timedelta(hours=-4))


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("Europe/Paris", PARIS),
        (":Europe/Paris", PARIS),  # POSIX's leading colon
        ("", (timedelta(0), timedelta(0))),  # set and empty: UTC
        ("UTC", (timedelta(0), timedelta(0))),
    ],
)
def test_tz_names_a_zone_with_its_summer_and_winter(
    tz: str, expected: tuple[timedelta, timedelta], tmp_path: Path
) -> None:
    # TZ wins over the system's zone, which here does not exist.
    assert offsets(read_host_zone(tz, tmp_path / "localtime")) == expected


@needs_zone_files
def test_tz_may_name_a_zone_file(tmp_path: Path) -> None:
    assert offsets(read_host_zone(str(ZONES / "America/New_York"), tmp_path / "x")) == NEW_YORK
    assert offsets(read_host_zone(":" + str(ZONES / "Europe/Paris"), tmp_path / "x")) == PARIS


@needs_zone_files
def test_the_system_zone_by_the_name_its_link_gives(tmp_path: Path) -> None:
    localtime = tmp_path / "localtime"
    localtime.symlink_to(ZONES / "Europe" / "Paris")
    zone = read_host_zone(None, localtime)
    assert isinstance(zone, ZoneInfo)
    assert zone.key == "Europe/Paris"
    assert offsets(zone) == PARIS


@needs_zone_files
def test_an_alias_keeps_the_name_lab_it_chose(tmp_path: Path) -> None:
    # US/Eastern is itself a link to America/New_York: the name shown is the one chosen.
    chosen = tmp_path / "chosen"
    chosen.symlink_to(ZONES / "US" / "Eastern")
    localtime = tmp_path / "localtime"
    localtime.symlink_to(chosen)  # through a link outside the zone database
    zone = read_host_zone(None, localtime)
    assert isinstance(zone, ZoneInfo)
    assert zone.key == "US/Eastern"
    assert offsets(zone) == NEW_YORK


@needs_zone_files
@pytest.mark.parametrize("variant", ["posix", "right"])
def test_a_posix_or_right_zone_is_read_as_the_zone_it_names(variant: str, tmp_path: Path) -> None:
    # right/ zones count leap seconds, which the host's clock does not.
    database = tmp_path / "usr" / "share" / "zoneinfo"
    (database / variant / "Europe").mkdir(parents=True)
    shutil.copyfile(ZONES / "Europe" / "Paris", database / variant / "Europe" / "Paris")
    localtime = tmp_path / "localtime"
    localtime.symlink_to(database / variant / "Europe" / "Paris")
    zone = read_host_zone(None, localtime)
    assert isinstance(zone, ZoneInfo)
    assert zone.key == "Europe/Paris"


def test_a_loop_of_links_is_the_offset_in_force(tmp_path: Path) -> None:
    localtime, other = tmp_path / "localtime", tmp_path / "other"
    localtime.symlink_to(other)
    other.symlink_to(localtime)
    assert without_summer_time(read_host_zone(None, localtime))


@needs_zone_files
def test_a_copied_zone_file_keeps_its_rules(tmp_path: Path) -> None:
    # Container images often copy the zone's file rather than link it.
    localtime = tmp_path / "localtime"
    shutil.copyfile(ZONES / "America" / "New_York", localtime)
    assert offsets(read_host_zone(None, localtime)) == NEW_YORK


@pytest.mark.parametrize("tz", ["CET-1CEST,M3.5.0,M10.5.0/3", "Nowhere/Atlantis", "/no/such/file"])
def test_what_names_no_zone_falls_back_to_the_offset_in_force(tz: str, tmp_path: Path) -> None:
    now = datetime.now().astimezone()
    zone = read_host_zone(tz, tmp_path / "localtime")
    assert now.astimezone(zone).utcoffset() == now.utcoffset()


def test_no_tz_and_no_system_zone_is_the_offset_in_force(tmp_path: Path) -> None:
    (tmp_path / "garbage").write_bytes(b"not a zone file")
    now = datetime.now().astimezone()
    for localtime in (tmp_path / "missing", tmp_path / "garbage"):
        assert now.astimezone(read_host_zone(None, localtime)).utcoffset() == now.utcoffset()


def test_only_a_fixed_offset_is_without_summer_time(tmp_path: Path) -> None:
    assert without_summer_time(read_host_zone("CET-1CEST,M3.5.0,M10.5.0/3", tmp_path / "x"))
    assert not without_summer_time(read_host_zone("Europe/Paris", tmp_path / "x"))
    assert not without_summer_time(read_host_zone("", tmp_path / "x"))  # UTC


@pytest.fixture
def host_in(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "Europe/Paris")
    host_zone.cache_clear()
    yield
    host_zone.cache_clear()


@needs_zone_files
@pytest.mark.usefixtures("host_in")
def test_a_configured_zone_wins_over_the_host() -> None:
    assert zone_or_host(ZoneInfo("America/New_York")) == ZoneInfo("America/New_York")
    assert offsets(zone_or_host(None)) == PARIS


@needs_zone_files
@pytest.mark.usefixtures("host_in")
def test_a_lot_expires_at_midnight_of_the_host_in_summer_as_in_winter() -> None:
    # With the offset in force when the engine was made (+01:00 in winter), 1 July 22:30
    # UTC would be 23:30 on 1 July, and a lot expired at midnight (00:30 on 2 July, summer
    # time) would pass for an hour.
    rules = load_rules(ROOT / "rules").model_copy(
        update={"reagent_lots": [ReagentLot(reagent="GLU reagent", lot="A1",
                                            expiry=date(2026, 7, 1))]}
    )  # fmt: skip
    engine = Engine(rules)
    for at, expired in ((datetime(2026, 7, 1, 21, 30, tzinfo=UTC), False),
                        (datetime(2026, 7, 1, 22, 30, tzinfo=UTC), True)):  # fmt: skip
        made = result("GLU", "5.0", completed_at=at - timedelta(minutes=5),
                      reagents=(ReagentUse("GLU reagent", "A1", "GLU"),))  # fmt: skip
        decision = engine.redecide(NO_QC, ResultContext(made, at, patient=ADULT_MAN))
        assert ("reagent-expired:A1" in decision.reasons) is expired, at


@needs_zone_files
def test_a_process_reads_its_zone_from_tz() -> None:
    code = (
        "from middleware.zones import host_zone; from datetime import datetime, UTC;"
        "z = host_zone(); print(z, datetime(2026, 7, 15, tzinfo=UTC).astimezone(z).utcoffset())"
    )
    env = {**os.environ, "TZ": "America/New_York"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, check=True, timeout=60)  # fmt: skip
    assert done.stdout.split() == ["America/New_York", "-1", "day,", "20:00:00"]
