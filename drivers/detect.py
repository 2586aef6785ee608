"""Which driver reads a message when none is configured: ``driver: auto``.

The H record's sender (H.5) decides first: each driver's ``sender_pattern`` names its
family, matched without regard to case or padding. When no pattern matches (an operator
renamed the analyser, a sibling model, no H.5 at all), each driver scores the message's
layout and the best score wins. Otherwise the generic LIS2-A2 reading is used. Every
choice comes with its reason, for ``decode`` to show and the daemon to log. HL7 drivers
(drivers/hl7.py) are chosen the same way, by the same pieces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from drivers.base import Driver, DriverOptions, Tables, header_of, sender_of
from drivers.generic import GenericDriver
from middleware.astm.records import Record
from middleware.domain import HostQuery, InstrumentMessage, Order

AUTO = "auto"

F = TypeVar("F", bound=Tables)


@dataclass(frozen=True, slots=True)
class Detection(Generic[F]):
    """A driver chosen for a message, and why (for a person to read)."""

    driver: type[F]
    reason: str


def by_sender_then_layout(
    candidates: Iterable[type[F]],
    names: Callable[[type[F]], bool],
    scores: Callable[[type[F]], tuple[int, str]],
    sender: str,
    unknown: str,
    base: type[F],
    base_reading: str,
) -> Detection[F]:
    """The first candidate the sender ``names``, else the best the layout ``scores`` (ties
    go to the first), else ``base``; ``unknown`` says why the sender named none."""
    chosen = list(candidates)
    for cls in chosen:
        if names(cls):
            return Detection(cls, f"sender {sender!r} names the {cls.description}")
    best: tuple[int, str, type[F]] | None = None
    for cls in chosen:
        points, seen = scores(cls)
        if points > 0 and (best is None or points > best[0]):
            best = (points, seen, cls)
    if best is not None:
        return Detection(best[2], f"{unknown}; layout of the {best[2].description}: {best[1]}")
    return Detection(base, f"{unknown} and no layout recognised: {base_reading}")


def or_before(found: Detection[F], before: Detection[F] | None, base: type[F]) -> Detection[F]:
    """A connection is one analyser: a message that names no family is read by the family
    of the message before it, and says so."""
    if found.driver is not base or before is None or before.driver is base:
        return found
    unknown = found.reason.rsplit(": ", 1)[0]  # without the base reading it fell back on
    return Detection(
        before.driver, f"{unknown}: read as the message before by {before.driver.name}"
    )


class Instances(Generic[F]):
    """A connection's one instance of each driver class it uses, made when first needed,
    with the instrument's options and name."""

    def __init__(self, options: DriverOptions | None, instrument: str) -> None:
        self._options, self._instrument = options, instrument
        self._made: dict[type[F], F] = {}

    def of(self, cls: type[F]) -> F:
        made = self._made.get(cls)
        if made is None:
            made = self._made[cls] = cls(self._options, self._instrument)
        return made


def detect(records: Sequence[Record], candidates: Iterable[type[Driver]]) -> Detection[Driver]:
    """The driver for a message, and why. ``candidates`` are every driver but the generic
    one, in a fixed order."""
    header = header_of(records)
    sender = sender_of(header) if header is not None else ""
    if header is None:
        unknown = "no H record"
    else:
        unknown = f"sender {sender!r} not known" if sender else "no sender (H.5 empty)"
    return by_sender_then_layout(
        candidates,
        lambda cls: header is not None and cls.recognises(header),
        lambda cls: cls.score(records),
        sender,
        unknown,
        GenericDriver,
        "generic reading",
    )


class AutoDriver(Driver):
    """Reads each message with the driver detected for it. One instance per connection:
    each driver it uses is made once and kept, with whatever it remembers (queries
    waiting for their answer). A connection is one analyser: a message that names no
    family (a sender garbled in transit, a message without H record) is read by the
    driver of the message before."""

    name = AUTO
    description = "the driver detected from each message (sender, then layout)"

    def __init__(
        self,
        options: DriverOptions | None,
        instrument: str,
        candidates: Sequence[type[Driver]],
    ) -> None:
        super().__init__(options, instrument)
        # As given: the drivers made name the instrument, not "auto".
        self._made: Instances[Driver] = Instances(options, instrument)
        self._candidates = candidates
        self.detection: Detection[Driver] | None = None
        """The last choice, with its reason."""

    def choose(self, records: Sequence[Record]) -> Driver:
        found = or_before(detect(records, self._candidates), self.detection, GenericDriver)
        made = self._made.of(found.driver)
        self.detection = found
        return made

    def fallback(self) -> Driver:
        """The standard's reading, with the instrument's options."""
        return self._made.of(GenericDriver)

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        return self.choose(records).read(records)

    def _last(self) -> Driver:
        """The driver of the analyser's latest message (the standard's before any)."""
        return self._made.of(self.detection.driver if self.detection is not None else GenericDriver)

    def writable(self, orders: Iterable[Order], encoding: str) -> tuple[list[Order], list[str]]:
        return self._last().writable(orders, encoding)

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        return self._last().answer_query(query, orders, now)
