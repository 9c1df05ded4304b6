"""Group-level state read from Redis: the ``regionstream_group_*`` gauges and ``top``'s header.

``shared.group.read_group_stats`` reads everything in ONE pipelined round trip.

The gauges are refreshed by a background task on an interval rather than on scrape: a scrape
then never waits on Redis (a slow or unreachable Redis would otherwise make the whole target
look down and hide every other metric), and N scrapers do not multiply the load on Redis.
Every process of a deployment exports the same values; dashboards aggregate them with
``max by (stream, group)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from shared.aio import pause
from shared.connection import connect
from shared.group import GroupStats, read_group_stats
from shared.keys import Keys
from shared.metrics import UNKNOWN, GroupMetrics
from shared.settings import Settings

log = logging.getLogger("regionstream.metrics")

# How often the group gauges are read from Redis: well under a usual 15 s scrape interval, so
# a scrape sees a value at most this old, and negligible load (one round trip) on Redis.
GROUP_REFRESH_S = 5.0


def publish(metrics: GroupMetrics, stats: GroupStats) -> None:
    """Set the gauges from one read. A missing group reads as 0 consumers and NaN lag, so the
    "no active consumers" alert fires rather than going quiet."""
    metrics.stream_length.set(stats.stream_length)
    metrics.dlq_length.set(stats.dlq_length)
    metrics.lag.set(UNKNOWN if stats.lag is None else stats.lag)
    metrics.pending.set(stats.pending)
    metrics.oldest_pending_age.set(max(0.0, stats.oldest_pending_age_s or 0.0))
    metrics.consumers.set(len(stats.consumers))
    metrics.active_consumers.set(stats.active_consumers)
    metrics.last_refresh.set(stats.at)


async def refresh(redis: aioredis.Redis, keys: Keys, metrics: GroupMetrics) -> bool:
    """One refresh; a Redis error is counted and logged, and the gauges keep their last value
    (``regionstream_group_last_refresh_timestamp_seconds`` shows how old it is)."""
    started = time.perf_counter()
    try:
        stats = await read_group_stats(redis, keys)
    except (RedisError, OSError) as exc:
        metrics.refresh_errors.inc()
        log.warning("reading group gauges of %s/%s failed: %s", keys.stream, keys.group, exc)
        return False
    metrics.rtt.observe(time.perf_counter() - started)
    publish(metrics, stats)
    return True


async def refresh_forever(redis: aioredis.Redis, keys: Keys, metrics: GroupMetrics,
                          stop: asyncio.Event, every: float = GROUP_REFRESH_S) -> None:
    while True:
        await refresh(redis, keys, metrics)
        if await pause(stop, every):
            return


def start_group_gauges(settings: Settings, registry: CollectorRegistry,
                       stop: asyncio.Event | None = None) -> asyncio.Task[None]:
    """Register the group gauges in ``registry`` and refresh them in a background task of the
    running loop, on a connection of its own (a worker's blocked XREADGROUP never delays it).
    The task ends when ``stop`` is set or it is cancelled (``asyncio.run`` cancels it at exit)."""
    keys = settings.keys
    metrics = GroupMetrics(registry, keys.stream, keys.group)

    async def run() -> None:
        client = connect(settings.redis_url, tls=settings.tls)
        try:
            await refresh_forever(client, keys, metrics, stop or asyncio.Event())
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    task = asyncio.get_running_loop().create_task(run(), name="group-gauges")
    _RUNNING.add(task)  # the loop keeps only a weak reference to tasks
    task.add_done_callback(_RUNNING.discard)
    return task


_RUNNING: set[asyncio.Task[None]] = set()
