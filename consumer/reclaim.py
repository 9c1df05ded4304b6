"""Replaying what crashed consumers left pending: XAUTOCLAIM sweeps, and forgetting consumers
that are gone for good."""

from __future__ import annotations

import asyncio
import logging
import time

from consumer import scripts
from consumer.settle import Settled, Settler
from consumer.shard_group import ShardGroup
from consumer.worker import Batch, RetryLoop
from shared.aio import pause
from shared.failpoints import failpoint
from shared.ids import text
from shared.metrics import ConsumerMetrics
from shared.settings import Settings

log = logging.getLogger("regionstream.consumer")

# A sweep follows XAUTOCLAIM's cursor to the end of the pending list, but at most this many
# pages (of --batch entries each) before it yields to the interval: a huge backlog of a dead
# consumer is worked off over several sweeps instead of monopolising the process.
MAX_PAGES_PER_SWEEP = 50
CURSOR_START = b"0-0"


class Reclaimer:
    """Claims entries idle longer than ``--min-idle-ms`` from any consumer of the group and
    settles them through the same settler as new entries.

    The minimum idle time is what keeps two live consumers from working on one entry: a live
    worker settles what it reads within milliseconds (and re-reads what failed every second),
    so only an entry whose consumer stopped touching it for ``min_idle`` - a crashed or hung
    process - is claimed, and XAUTOCLAIM's claim resets the idle time, so no second reclaimer
    takes it while this one works on it."""

    def __init__(self, group: ShardGroup, settler: Settler, settings: Settings,
                 metrics: ConsumerMetrics, stop: asyncio.Event) -> None:
        self.group, self.settler, self.settings = group, settler, settings
        self.name, self.metrics, self.stop = settler.consumer, metrics, stop
        # After a restart or a failure: its own pending entries first (claimed, then lost).
        self.loop = RetryLoop.of(group, settler, settings, metrics, stop)
        self.own = self.loop.own
        self.claim_cursor = CURSOR_START

    async def run(self) -> None:
        """Sweep, forget dead consumers, wait ``--claim-interval-ms``; until ``stop``. A
        graceful stop then settles what it still holds (what failed in its last sweep)."""
        await self.loop.run(self.round)
        await self.own.settle(self.settler)

    async def round(self) -> Batch:
        settled = await self.sweep()
        await self.forget_dead_consumers()
        await pause(self.stop, self.settings.claim_interval_ms / 1000)
        return settled

    async def next_batch(self) -> Batch:
        """One page: of its own pending list while it lasts, else of XAUTOCLAIM."""
        if not self.own.done:
            return Batch(await self.settler.settle(await self.own.page()), own=True)
        started = time.perf_counter()
        next_cursor, entries, deleted = await self.group.autoclaim(
            self.name, self.settings.min_idle_ms, self.claim_cursor, self.settings.batch)
        self.metrics.rtt["claim"].observe(time.perf_counter() - started)
        self.claim_cursor = next_cursor
        if deleted:  # trimmed or deleted while pending: Redis dropped them from the list
            self.settler.count_lost(len(deleted))
        if entries:
            failpoint("reclaim.after-claim")
            self.metrics.reclaimed.inc(len(entries))
            log.info("%s: reclaimed %d idle entries", self.name, len(entries))
        return Batch(await self.settler.settle(entries))

    async def sweep(self) -> Batch:
        """Claim and settle pages until the cursor wraps (or the page bound). Returns a batch
        that counts every entry handled (``read``); a failed page ends the sweep, and its
        entries are taken again first (own pending) at the next."""
        handled = 0
        self.claim_cursor = CURSOR_START
        for _ in range(MAX_PAGES_PER_SWEEP):
            claiming = self.own.done  # (the walk of its own list does not move the cursor)
            batch = await self.next_batch()
            handled += batch.read
            if batch.failed:
                self.own.again()
                break
            if self.stop.is_set():
                break
            if claiming and self.claim_cursor == CURSOR_START:  # XAUTOCLAIM wrapped around
                break
        return Batch(Settled(read=handled))

    async def forget_dead_consumers(self) -> list[str]:
        """Delete consumers idle longer than ``--consumer-timeout`` that hold nothing. One with
        pending entries is never deleted (XGROUP DELCONSUMER would drop its entries); the
        check and the delete are one script."""
        timeout_ms = int(self.settings.consumer_timeout_s * 1000)
        forgotten = []
        for c in await self.group.consumers():
            if int(c["pending"]) or int(c["idle"]) < timeout_ms:
                continue
            # The name as Redis holds it: another client's need not be UTF-8 (text() is for
            # the log line only; its escapes would name no consumer).
            if await self.group.call(scripts.forget_consumer(), [self.group.keys.stream],
                                     [self.group.keys.group, c["name"], timeout_ms]):
                name = text(c["name"])
                forgotten.append(name)
                log.info("forgot consumer %r: idle %.0fs with nothing pending", name,
                         int(c["idle"]) / 1000)
        return forgotten
