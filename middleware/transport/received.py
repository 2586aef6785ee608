"""The bytes one connection received that no raw row holds yet, with when they came.

Every byte an analyser sends is kept in exactly one raw row (REQUIREMENTS D1). The link
core says where a message, a transfer or noise ends as a stream offset; the pipeline cuts
the bytes there, and lets them go only once the row that holds them has committed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes ``[start, start + len(data))`` of a connection's stream."""

    start: int
    data: bytes
    first_at: datetime
    last_at: datetime

    @property
    def end(self) -> int:
        return self.start + len(self.data)


class ReceivedBytes:
    def __init__(self) -> None:
        self._data = bytearray()
        self._base = 0  # stream offset of _data[0]
        # (stream offset of a read's first byte, when it came), oldest first; the first
        # entry is at or before _base once anything was read.
        self._reads: deque[tuple[int, datetime]] = deque()

    @property
    def base(self) -> int:
        return self._base

    @property
    def end(self) -> int:
        return self._base + len(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def add(self, data: bytes, at: datetime) -> None:
        if data:
            self._reads.append((self.end, at))
            self._data += data

    def peek(self, upto: int, now: datetime) -> Span:
        """The bytes from the first not yet kept up to stream offset ``upto``; ``now``
        stands for their times when there are none."""
        upto = max(self._base, min(upto, self.end))
        first, last = self._times(upto) if self._reads else (now, now)
        return Span(self._base, bytes(self._data[: upto - self._base]), first, last)

    def arrived(self, upto: int) -> datetime | None:
        """When the read that brought the bytes just before ``upto`` came; None when no
        byte is held."""
        if not self._reads:
            return None
        return self._times(max(self._base, min(upto, self.end)))[1]

    def release(self, upto: int) -> None:
        """The bytes before ``upto`` are kept in a committed row: forget them."""
        upto = max(self._base, min(upto, self.end))
        del self._data[: upto - self._base]
        self._base = upto
        while len(self._reads) > 1 and self._reads[1][0] <= upto:
            self._reads.popleft()

    def take(self, upto: int, now: datetime) -> Span:
        span = self.peek(upto, now)
        self.release(upto)
        return span

    def _times(self, upto: int) -> tuple[datetime, datetime]:
        first = self._reads[0][1]
        last = first
        for offset, at in self._reads:
            if offset >= upto and upto > self._base:
                break
            last = at
        return first, last
