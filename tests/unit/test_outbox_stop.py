"""Stopping the outbox worker mid-round, with the database gone: it stops."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from datetime import datetime
from typing import cast

from pbxbrain.adapters.outbox import OutboxWorker
from pbxbrain.domain.model import PendingDelivery
from pbxbrain.ports import Crm, OutboxStore, StoreUnavailable


class VanishingStore:
    """Hands out two rows, then the database is gone."""

    def __init__(self) -> None:
        self.claimed = False

    async def release_claims(self, node: str) -> int:
        return 0

    async def claim_deliveries(self, node: str, now: datetime, limit: int = 20,
                               lease_s: float = 120.0) -> list[PendingDelivery]:
        if self.claimed:
            raise StoreUnavailable("database down")
        self.claimed = True
        payload = {"phone": "+79990000000", "call_id": "c1", "by": None,
                   "at": now.isoformat()}
        return [PendingDelivery(id=n, key=f"called_back:c{n}", kind="called_back",
                                payload=payload, attempts=0, call_id=f"c{n}")
                for n in (1, 2)]

    async def delivered(self, delivery_ids: Collection[int], at: datetime) -> None:
        raise StoreUnavailable("database down")

    async def failing(self) -> tuple[int, str]:
        return 0, ""

    async def next_due_at(self) -> datetime | None:
        return None


class SlowCrm:
    """Takes the first row at once and hangs on the second."""

    def __init__(self) -> None:
        self.calls = 0
        self.hanging = asyncio.Event()

    async def called_back(self, phone: str, call_id: str, by: str | None, at: datetime,
                          key: str) -> None:
        self.calls += 1
        if self.calls == 2:
            self.hanging.set()
            await asyncio.sleep(3600)


async def test_given_a_stop_while_delivering_and_no_database_then_the_worker_stops() -> None:
    crm = SlowCrm()
    worker = OutboxWorker(cast(OutboxStore, VanishingStore()), cast(Crm, crm), "node-a")
    running = asyncio.create_task(worker.run())
    await asyncio.wait_for(crm.hanging.wait(), 5)

    running.cancel()  # pbxbrain stops; marking the first row fails: it goes again later

    done, _ = await asyncio.wait([running], timeout=5)
    assert done, "the worker kept running after it was cancelled"
    assert running.cancelled()
