"""Replaying what crashed consumers left pending: XAUTOCLAIM sweeps, and forgetting consumers
that are gone for good."""

from __future__ import annotations

import logging
import time
from typing import Any

from consumer import scripts
from consumer.worker import NEW, StepResult, Worker
from shared.aio import pause
from shared.failpoints import failpoint
from shared.group import text

log = logging.getLogger("regionstream.consumer")

# A sweep follows XAUTOCLAIM's cursor to the end of the pending list, but at most this many
# pages (of --batch entries each) before it yields to the interval: a huge backlog of a dead
# consumer is worked off over several sweeps instead of monopolising the process.
MAX_PAGES_PER_SWEEP = 50
CURSOR_START = b"0-0"


class Reclaimer(Worker):
    """Claims entries idle longer than ``--min-idle-ms`` from any consumer of the group and
    settles them through the same path as new entries.

    The minimum idle time is what keeps two live consumers from working on one entry: a live
    worker settles what it reads within milliseconds (and re-reads what failed every second),
    so only an entry whose consumer stopped touching it for ``min_idle`` - a crashed or hung
    process - is claimed, and XAUTOCLAIM's claim resets the idle time, so no second reclaimer
    takes it while this one works on it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claim_cursor = CURSOR_START

    async def _read(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        if self.cursor != NEW:  # after a restart or a failure: our own pending entries first
            return await super()._read()
        started = time.perf_counter()
        next_cursor, entries, deleted = await self.redis.xautoclaim(
            self.keys.stream, self.keys.group, self.name, self.settings.min_idle_ms,
            start_id=self.claim_cursor, count=self.settings.batch)
        self.metrics.rtt["claim"].observe(time.perf_counter() - started)
        self.claim_cursor = next_cursor
        if deleted:  # trimmed or deleted while pending: Redis dropped them from the list
            self.count_lost(len(deleted))
        if entries:
            failpoint("reclaim.after-claim")
            self.metrics.reclaimed.inc(len(entries))
            log.info("%s: reclaimed %d idle entries", self.name, len(entries))
        return list(entries)

    async def sweep(self) -> int:
        """Claim and settle pages until the cursor wraps (or the page bound); returns the
        number of entries handled."""
        handled = 0
        self.claim_cursor = CURSOR_START
        for _ in range(MAX_PAGES_PER_SWEEP):
            result = await self.step()
            handled += result.read
            if result.failed or self.stop.is_set():
                break
            if self.cursor == NEW and self.claim_cursor == CURSOR_START:
                break
        return handled

    async def iteration(self) -> StepResult:
        handled = await self.sweep()
        await self.forget_dead_consumers()
        await pause(self.stop, self.settings.claim_interval_ms / 1000)
        return StepResult(read=handled)

    async def forget_dead_consumers(self) -> list[str]:
        """Delete consumers idle longer than ``--consumer-timeout`` that hold nothing. One with
        pending entries is never deleted (XGROUP DELCONSUMER would drop its entries); the
        check and the delete are one script."""
        timeout_ms = int(self.settings.consumer_timeout_s * 1000)
        forgotten = []
        for c in await self.redis.xinfo_consumers(self.keys.stream, self.keys.group):
            if int(c["pending"]) or int(c["idle"]) < timeout_ms:
                continue
            # The name as Redis holds it: another client's need not be UTF-8 (text() is for
            # the log line only; its escapes would name no consumer).
            if await scripts.call(self.redis, scripts.forget_consumer(), [self.keys.stream],
                                  [self.keys.group, c["name"], timeout_ms]):
                name = text(c["name"])
                forgotten.append(name)
                log.info("forgot consumer %r: idle %.0fs with nothing pending", name,
                         int(c["idle"]) / 1000)
        return forgotten
