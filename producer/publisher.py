"""Publishing snapshots: one pipelined round trip per cycle, and trimming that never drops an
entry a consumer group still needs."""

from __future__ import annotations

import time
from collections.abc import Sequence

import redis.asyncio as aioredis

from shared import failpoints, wire
from shared.group import ensure_group, min_id, safe_trim_id
from shared.keys import Keys
from shared.metrics import ProducerMetrics
from shared.schema import Snapshot, encode
from shared.settings import Settings


class Publisher:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings,
                 metrics: ProducerMetrics | None = None) -> None:
        self.redis, self.keys, self.settings, self.metrics = redis, keys, settings, metrics

    async def prepare(self) -> None:
        """Create the consumer group if missing, so that entries published before any consumer
        started are kept for it (trimming respects every group it can see)."""
        await ensure_group(self.redis, self.keys)

    async def publish(self, snaps: Sequence[Snapshot],
                      payloads: Sequence[bytes] | None = None) -> list[bytes]:
        """XADD every snapshot in one round trip, atomically; returns the entry ids in order."""
        if not snaps:
            return []
        payloads = payloads if payloads is not None else [encode(s) for s in snaps]
        # MULTI/EXEC: the whole cycle appears on the stream at once (and all or nothing), so a
        # blocked reader is handed every region in one delivery instead of the first entry.
        pipe = self.redis.pipeline(transaction=True)
        for snap, payload in zip(snaps, payloads, strict=True):
            pipe.xadd(self.keys.stream, wire.entry_fields(snap, payload))  # type: ignore[arg-type]
        started = time.perf_counter()
        if failpoints.due("producer.publish-in-flight"):
            await failpoints.die_after_sending(
                self.redis, [("MULTI",), *(c[0] for c in pipe.command_stack), ("EXEC",)])
        ids: list[bytes] = await pipe.execute()
        failpoints.failpoint("producer.after-publish")
        if self.metrics is not None:
            self.metrics.rtt["publish"].observe(time.perf_counter() - started)
            for snap in snaps:
                self.metrics.region[snap.region_id].inc()
        return ids

    async def trim(self) -> int:
        """Trim entries older than the stream retention, but none that any group has not
        acknowledged or not yet read. Returns the number of entries removed."""
        bound = await safe_trim_id(self.redis, self.keys)
        if bound is None:
            return 0
        retention_ms = self.settings.stream_retention_s * 1000
        if retention_ms:
            cutoff = b"%d-0" % max(0, int(time.time() * 1000) - retention_ms)
            bound = min_id(bound, cutoff)
        # Exact (not "~") trimming: with "~" Redis may keep more, never less, but exact makes
        # the retention promise checkable.
        started = time.perf_counter()
        removed: int = await self.redis.xtrim(self.keys.stream, minid=bound, approximate=False)
        if self.metrics is not None:
            self.metrics.rtt["trim"].observe(time.perf_counter() - started)
        return removed
