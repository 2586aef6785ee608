"""Worklist downloads to an analyser: the orders queued for it (``store/worklist.py``)
sent over its open connection, oldest first, each as its own ASTM message (H, P, O, L).

One is marked sent only once the analyser has taken it (its last frame acknowledged and
the line given back); one the link could not deliver (the connection lost, frames refused)
stays queued with the attempt and its reason, and goes again on the next round or the next
connection. The analyser may so get an order twice, never lose one; analysers take a
repeated order for a specimen as that specimen's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Sequence
from datetime import tzinfo

import structlog

from drivers import Driver
from middleware.astm.records import encode_record
from middleware.store import Store, worklist
from middleware.store.sql import utcnow
from middleware.transport.channel import LinkChannel, SendError
from middleware.zones import zone_or_host

log = structlog.get_logger("middleware.worklist")

#: Seconds between looks at the queue when nothing wakes the downloader: orders another
#: daemon took for this analyser are found so.
POLL_SECONDS = 2.0


class WorklistDownloader:
    def __init__(
        self,
        instrument: str,
        driver: Driver,
        store: Store,
        channels: Callable[[], Sequence[LinkChannel]],
        encoding: str = "latin-1",
        poll_seconds: float = POLL_SECONDS,
        timezone: tzinfo | None = None,
    ) -> None:
        self.instrument = instrument
        self.driver = driver
        self.store = store
        self.channels = channels
        """The instrument's open connections, newest last."""
        self.encoding = encoding
        self.timezone = zone_or_host(timezone)
        """The analyser's zone (the host's when None): what it is sent is stamped on its
        wall clock."""
        self.poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self.log = log.bind(instrument=instrument)

    def wake(self) -> None:
        """Look at the queue now (orders came, or the analyser connected)."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
            open_ = [c for c in self.channels() if not c.closed]
            if open_:
                await self.send_pending(open_[-1])

    async def send_pending(self, channel: LinkChannel) -> int:
        """Send what is queued over ``channel``, until the queue is empty or a send fails;
        returns how many the analyser took."""
        taken = 0
        while True:
            batch = await self.store.read_async(
                functools.partial(worklist.pending, instrument=self.instrument)
            )
            if not batch:
                return taken
            for download in batch:
                cancel = download.action == worklist.CANCEL
                records = self.driver.download(
                    download.order, cancel, utcnow().astimezone(self.timezone)
                )
                try:
                    encoded = [encode_record(r).encode(self.encoding) for r in records]
                except UnicodeEncodeError as exc:
                    # A specimen id the analyser's character set cannot carry is never
                    # sent mangled: set aside, said, and the queue goes on.
                    reason = f"cannot be written in {self.encoding}: {exc.reason}"
                    self.log.error("order refused for the analyser", download=download.id,
                                   error=reason)  # fmt: skip
                    await self.store.write(
                        functools.partial(worklist.mark_refused, download_id=download.id,
                                          error=reason)
                    )  # fmt: skip
                    continue
                try:
                    await channel.send(encoded)
                except SendError as exc:
                    self.log.warning("order not delivered to the analyser; kept to send again",
                                     download=download.id, error=str(exc))  # fmt: skip
                    await self.store.write(
                        functools.partial(
                            worklist.mark_failed, download_id=download.id, error=str(exc)
                        )
                    )
                    return taken
                await self.store.write(
                    functools.partial(worklist.mark_sent, download_id=download.id, at=utcnow())
                )
                taken += 1
                self.log.info(
                    "order sent to the analyser",
                    download=download.id,
                    action=download.action,
                    tests=len(download.order.test_codes),
                )
