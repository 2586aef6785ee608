"""The fault rig of ``make faults`` (faults/), kept working: one short case on each
database, and an account that finds a result the LIS never got."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faults.cases import Options, analyser_corrupt
from faults.rig import Rig, stations


def test_a_corrupting_analyser_loses_nothing_on_the_rig(tmp_path: Path, database_url: str
                                                         ) -> None:  # fmt: skip
    kind = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    outcome = asyncio.run(analyser_corrupt(Options(tmp_path, kind, database_url)))
    assert not outcome.failed, outcome
    assert outcome.sent > 0 and outcome.delivered == outcome.sent
    assert outcome.controls.split("/")[0] == outcome.controls.split("/")[1]


def test_the_account_counts_a_result_the_lis_never_got_as_lost(
    tmp_path: Path, database_url: str
) -> None:
    """The LIS down for good: what the analysers sent is stored and waits in the outbox,
    and the account, not finding it anywhere it may be, says lost."""

    async def case() -> tuple[int, int]:
        rig = Rig(tmp_path, database_url, stations("haematology", patients=3))
        async with rig:
            await rig.lis.stop()
            await rig.run_analysers()
            outcome = await rig.settle("lis-gone", "any", within=1.0)
        return outcome.sent, outcome.lost

    sent, lost = asyncio.run(case())
    assert sent > 0 and lost == sent
