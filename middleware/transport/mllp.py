"""Reading MLLP from a stream: the shell around :class:`middleware.hl7.mllp.MllpReader`
that the LIS's answers and its orders share."""

from __future__ import annotations

import asyncio

from middleware.hl7.mllp import CR_WAIT_SECONDS, Event, MllpReader


async def next_events(
    reader: asyncio.StreamReader, mllp: MllpReader, idle_seconds: float | None = None
) -> list[Event] | None:
    """What the peer's next bytes make; None once it closed (what is pending there is the
    caller's to end: :meth:`MllpReader.end_of_stream`). A message ended by FS without its
    CR is taken when nothing follows it for a moment: its sender waits for our answer.
    TimeoutError when nothing comes for ``idle_seconds``."""
    if not mllp.awaiting_cr:
        data = await asyncio.wait_for(reader.read(65536), idle_seconds)
    else:
        try:
            data = await asyncio.wait_for(reader.read(65536), CR_WAIT_SECONDS)
        except TimeoutError:
            return mllp.quiet()
    return mllp.receive_data(data) if data else None
