"""Which driver reads a message when none is configured: ``driver: auto``.

The H record's sender (H.5) decides first: each driver's ``sender_pattern`` names its
family, matched without regard to case or padding. When no pattern matches (an operator
renamed the analyser, a sibling model, no H.5 at all), each driver scores the message's
layout and the best score wins. Otherwise the generic LIS2-A2 reading is used. Every
choice comes with its reason, for ``decode`` to show and the daemon to log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from drivers.base import Driver, DriverOptions
from middleware.astm.records import Record

AUTO = "auto"


@dataclass(frozen=True, slots=True)
class Detection:
    driver: type[Driver]
    reason: str


def detect(records: Sequence[Record], candidates: Iterable[type[Driver]]) -> Detection:
    """The driver for a message, and why. ``candidates`` are every driver but the generic
    one, in a fixed order (ties of score go to the first)."""
    chosen = list(candidates)
    header = next((r for r in records if r.type == "H"), None)
    sender = " ".join(header.text(5).split()) if header is not None else ""
    if header is not None:
        for cls in chosen:
            if cls.recognises(header):
                return Detection(cls, f"sender {sender!r} names the {cls.description}")
    best: tuple[int, str, type[Driver]] | None = None
    for cls in chosen:
        points, seen = cls.score(records)
        if points > 0 and (best is None or points > best[0]):
            best = (points, seen, cls)
    said = f"sender {sender!r} not known" if sender else "no sender (H.5 empty)"
    if best is not None:
        return Detection(best[2], f"{said}; layout of the {best[2].description}: {best[1]}")
    return Detection(_generic(), f"{said} and no layout recognised: generic reading")


def _generic() -> type[Driver]:
    from drivers.generic import GenericDriver

    return GenericDriver


class AutoDriver(Driver):
    """Reads each message with the driver detected for it. One instance per connection:
    each driver it uses is made once and kept, with whatever it remembers (queries
    waiting for their answer)."""

    name = AUTO
    description = "the driver detected from each message (sender, then layout)"

    def __init__(
        self,
        options: DriverOptions | None,
        instrument: str,
        candidates: Callable[[], Iterable[type[Driver]]],
    ) -> None:
        super().__init__(options, instrument)
        self._options = options
        self._candidates = candidates
        self._made: dict[type[Driver], Driver] = {}
        self.detection: Detection | None = None
        """The last choice, with its reason."""

    def choose(self, records: Sequence[Record]) -> Driver:
        if not any(r.type == "H" for r in records) and self.detection is not None:
            # No header to tell (a driver that allows headerless messages): the same
            # analyser as before on this connection.
            cls = self.detection.driver
            self.detection = Detection(
                cls, f"no H record: read as the message before by {cls.name}"
            )
            return self._made[cls]
        self.detection = detect(records, self._candidates())
        cls = self.detection.driver
        if cls not in self._made:
            self._made[cls] = cls(self._options, self.instrument)
        return self._made[cls]
