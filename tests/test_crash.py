"""SIGKILL in the middle of a stream: nothing acknowledged is lost, nothing is stored twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.daemon import DaemonProcess, connect, free_port, query
from tests.messages import three_tests
from tests.peer import ACK, ENQ, EOT, StreamPeer, frames_for, send_message


def message(n: int) -> list[bytes]:
    return three_tests(n, b"CRASH-TEST")


async def send_until_killed(peer: StreamPeer, records: list[bytes], frames_sent: int) -> None:
    """Start a message and stop after ``frames_sent`` frames without reading the last reply."""
    await peer.write(ENQ)
    assert await peer.read(1) == ACK
    frames = frames_for(records)
    for i, data in enumerate(frames[:frames_sent]):
        await peer.write(data)
        if i < frames_sent - 1:
            assert await peer.read(1) == ACK


def test_sigkill_loses_nothing_acknowledged_and_stores_nothing_twice(
    tmp_path: Path, database_url: str
) -> None:
    port = free_port()
    daemon = DaemonProcess(
        tmp_path,
        [{"name": "an1", "transport": "tcp-server", "host": "127.0.0.1", "port": port}],
        database_url=database_url,
    )
    total = 12
    # Message number -> how the daemon dies while it is being sent: after some of its
    # frames; right after its last frame (commit and kill race); and well after its last
    # frame (committed, but the analyser never read the ACK).
    kills = {3: (4, 0.0), 6: (7, 0.0), 9: (7, 0.5)}
    # Message number after whose ACK the daemon dies at once: what was acknowledged stays.
    killed_after_ack = {5, 10}
    acknowledged: list[int] = []

    async def analyser() -> None:
        peer = StreamPeer(*await connect(port))
        for n in range(total):
            if n in kills:
                frames_sent, wait = kills[n]
                await send_until_killed(peer, message(n), frames_sent)
                await asyncio.sleep(wait)
                await asyncio.to_thread(daemon.kill)
                await peer.close()
                await asyncio.to_thread(daemon.start)
                peer = StreamPeer(*await connect(port))
                # The analyser saw no ACK for this message: it sends it again, whole.
            await send_message(peer, message(n))
            acknowledged.append(n)
            if n in killed_after_ack:
                await asyncio.to_thread(daemon.kill)
                await peer.close()
                await asyncio.to_thread(daemon.start)
                peer = StreamPeer(*await connect(port))
        await peer.write(EOT)
        await asyncio.sleep(0.2)
        await peer.close()

    daemon.start()
    try:
        asyncio.run(analyser())
    finally:
        daemon.stop()

    assert acknowledged == list(range(total))
    db = database_url
    per_specimen = dict(query(db, "SELECT specimen_id, count(*) FROM results GROUP BY specimen_id"))
    assert per_specimen == {f"S{n:04d}": 3 for n in range(total)}
    assert query(db, "SELECT count(*) FROM messages") == [(total,)]
    [(duplicates,)] = query(db, "SELECT count(*) FROM raw_transmissions WHERE duplicate")
    # The message committed before the kill came again and was recognised.
    assert duplicates >= 1
    [(stored,)] = query(db, "SELECT count(*) FROM raw_transmissions WHERE message_id IS NOT NULL")
    assert stored == total + duplicates
