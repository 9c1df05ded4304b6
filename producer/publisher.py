"""Publishing snapshots: one pipelined round trip per cycle, and trimming that never drops an
entry a consumer group still needs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from shared import failpoints, wire
from shared.aio import pause
from shared.connection import ErrorKind, backoff, classify
from shared.group import ensure_group, min_id, safe_trim_id
from shared.keys import Keys
from shared.metrics import ProducerMetrics
from shared.schema import Snapshot, encode
from shared.settings import Settings

log = logging.getLogger("regionstream.producer")


class Unconfirmed(Exception):
    """Fewer replicas than --min-replicas confirmed a publish within the timeout: a failover
    now could lose it, so it is published again (the repeat is deduplicated downstream)."""

    def __init__(self, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed the publish within "
                         f"{timeout_ms} ms")


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
        """XADD every snapshot in one round trip, atomically; returns the entry ids in order.

        With ``min_replicas`` set, a WAIT rides in the same round trip, after the EXEC, and
        Unconfirmed is raised when fewer replicas confirmed the writes in time."""
        if not snaps:
            return []
        payloads = payloads if payloads is not None else [encode(s) for s in snaps]
        # MULTI/EXEC: the whole cycle appears on the stream at once (and all or nothing), so a
        # blocked reader is handed every region in one delivery instead of the first entry.
        # Sent as commands of a plain pipeline, so a WAIT can follow the EXEC.
        pipe = self.redis.pipeline(transaction=False)
        commands: list[tuple[object, ...]] = [("MULTI",)]
        for snap, payload in zip(snaps, payloads, strict=True):
            fields = wire.entry_fields(snap, payload)
            commands.append(("XADD", self.keys.stream, "*",
                             *(part for item in fields.items() for part in item)))
        commands.append(("EXEC",))
        wanted, timeout_ms = self.settings.min_replicas, self.settings.min_replicas_timeout_ms
        if wanted:
            commands.append(("WAIT", wanted, timeout_ms))
        for command in commands:
            pipe.execute_command(*command)
        started = time.perf_counter()
        if failpoints.due("producer.publish-in-flight"):
            await failpoints.die_after_sending(self.redis, commands[:-1] if wanted else commands)
        replies = await pipe.execute()
        ids: list[bytes] = replies[len(snaps) + 1]
        for reply in ids:  # an XADD that failed inside EXEC comes back as an error value
            if isinstance(reply, Exception):
                raise reply
        failpoints.failpoint("producer.after-publish")
        if self.metrics is not None:
            self.metrics.rtt["publish"].observe(time.perf_counter() - started)
        if wanted and replies[-1] < wanted:
            if self.metrics is not None:
                self.metrics.unconfirmed.inc()
            raise Unconfirmed(replies[-1], wanted, timeout_ms)
        if self.metrics is not None:
            for snap in snaps:
                self.metrics.region[snap.region_id].inc()
        return ids

    async def publish_until_done(self, snaps: Sequence[Snapshot],
                                 payloads: Sequence[bytes] | None, stop: asyncio.Event
                                 ) -> list[bytes]:
        """publish(), again after a capped, jittered backoff while Redis is unavailable (a
        failover, a restart) or replicas did not confirm, until it lands or ``stop`` is set.
        A retried publish that had landed after all is recognized downstream as a redelivery:
        an outage delays snapshots, it does not lose them. Anything else is raised at once."""
        failures, delays = 0, backoff()
        while True:
            try:
                return await self.publish(snaps, payloads)
            except (RedisError, OSError, Unconfirmed) as exc:
                if self.metrics is not None:
                    self.metrics.publish_failures.inc()
                retry = isinstance(exc, Unconfirmed) or classify(exc) is ErrorKind.TRANSIENT
                if not retry or stop.is_set():
                    raise
                failures += 1
                log.warning("publishing %d snapshot(s) failed (%s); retry %d", len(snaps), exc,
                            failures)
                if await pause(stop, delays.compute(failures)):
                    raise

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
