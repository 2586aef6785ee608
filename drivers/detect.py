"""Which driver reads a message when none is configured: ``driver: auto``.

The H record's sender (H.5) decides first: each driver's ``sender_pattern`` names its
family, matched without regard to case or padding. When no pattern matches (an operator
renamed the analyser, a sibling model, no H.5 at all), each driver scores the message's
layout and the best score wins. Otherwise the generic LIS2-A2 reading is used. Every
choice comes with its reason, for ``decode`` to show and the daemon to log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from drivers.base import Driver, DriverOptions, header_of, sender_of
from drivers.generic import GenericDriver
from middleware.astm.records import Record
from middleware.domain import HostQuery, InstrumentMessage, Order

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Detection:
    """A driver chosen for a message, and why (for a person to read)."""

    driver: type[Driver]
    reason: str

    @property
    def generic(self) -> bool:
        return self.driver is GenericDriver


def detect(records: Sequence[Record], candidates: Iterable[type[Driver]]) -> Detection:
    """The driver for a message, and why. ``candidates`` are every driver but the generic
    one, in a fixed order (ties of score go to the first)."""
    chosen = list(candidates)
    header = header_of(records)
    sender = sender_of(header) if header is not None else ""
    if header is not None:
        for cls in chosen:
            if cls.recognises(header):
                return Detection(cls, f"sender {sender!r} names the {cls.description}")
    best: tuple[int, str, type[Driver]] | None = None
    for cls in chosen:
        points, seen = cls.score(records)
        if points > 0 and (best is None or points > best[0]):
            best = (points, seen, cls)
    if header is None:
        said = "no H record"
    else:
        said = f"sender {sender!r} not known" if sender else "no sender (H.5 empty)"
    if best is not None:
        return Detection(best[2], f"{said}; layout of the {best[2].description}: {best[1]}")
    return Detection(GenericDriver, f"{said} and no layout recognised: generic reading")


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
        self._options = options
        self._instrument = instrument  # as given: the drivers made name it, not "auto"
        self._candidates = candidates
        self._made: dict[type[Driver], Driver] = {}
        self.detection: Detection | None = None
        """The last choice, with its reason."""

    def choose(self, records: Sequence[Record]) -> Driver:
        found = detect(records, self._candidates)
        before = self.detection
        if found.generic and before is not None and not before.generic:
            unknown = found.reason.removesuffix(": generic reading")
            found = Detection(
                before.driver, f"{unknown}: read as the message before by {before.driver.name}"
            )
        made = self._made_for(found.driver)
        self.detection = found
        return made

    def _made_for(self, cls: type[Driver]) -> Driver:
        """The connection's one instance of ``cls``, made when first needed."""
        made = self._made.get(cls)
        if made is None:
            made = self._made[cls] = cls(self._options, self._instrument)
        return made

    def fallback(self) -> Driver:
        """The standard's reading, with the instrument's options."""
        return self._made_for(GenericDriver)

    def read(self, records: Sequence[Record]) -> InstrumentMessage:
        return self.choose(records).read(records)

    def answer_query(
        self, query: HostQuery, orders: Iterable[Order], now: datetime
    ) -> list[Record]:
        last = self.detection.driver if self.detection is not None else GenericDriver
        return self._made_for(last).answer_query(query, orders, now)
