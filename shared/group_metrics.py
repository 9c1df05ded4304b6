"""Group-level state read from Redis: the ``regionstream_group_*`` gauges and ``top``'s header.

``shared.group.read_group_stats`` reads everything in ONE pipelined round trip.

The gauges are refreshed by a background task on an interval rather than on scrape: a scrape
then never waits on Redis (a slow or unreachable Redis would otherwise make the whole target
look down and hide every other metric), and N scrapers do not multiply the load on Redis.
Every process of a deployment exports the same values, one series per shard; dashboards
aggregate them with ``max by (stream, group, shard)`` (then sum over shards for totals).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from prometheus_client import CollectorRegistry, Counter
from redis.exceptions import RedisError

from shared.aio import pause
from shared.group import GroupStats, read_group_stats
from shared.metrics import UNKNOWN, GroupMetrics, ShardGauges, group_refresh_errors
from shared.settings import Settings
from shared.shards import Deployment, LayoutError, Shard, open_deployment, shards

log = logging.getLogger("regionstream.metrics")

# How often the group gauges are read from Redis: well under a usual 15 s scrape interval, so
# a scrape sees a value at most this old, and negligible load (one round trip) on Redis.
GROUP_REFRESH_S = 5.0


def publish(gauges: ShardGauges, stats: GroupStats) -> None:
    """Set one shard's gauges from one read. A missing group reads as 0 consumers and NaN lag,
    so the "no active consumers" alert fires rather than going quiet."""
    gauges.stream_length.set(stats.stream_length)
    gauges.dlq_length.set(stats.dlq_length)
    gauges.lag.set(UNKNOWN if stats.lag is None else stats.lag)
    gauges.pending.set(stats.pending)
    if stats.pending and stats.oldest_pending_age_s is None:  # an id ahead of the clock
        gauges.oldest_pending_age.set(UNKNOWN)
    else:
        gauges.oldest_pending_age.set(max(0.0, stats.oldest_pending_age_s or 0.0))
    gauges.consumers.set(len(stats.consumers))
    gauges.active_consumers.set(stats.active_consumers)
    if stats.memory is not None:
        if stats.memory.evicted_keys is not None:
            gauges.evicted_keys.set(stats.memory.evicted_keys)
        if stats.memory.policy is not None:
            gauges.set_policy(stats.memory.policy)


async def refresh(deployment: Deployment, metrics: GroupMetrics) -> bool:
    """One refresh of every shard of ``deployment``, concurrently. A
    shard whose read fails is counted and logged and keeps its last values
    (``regionstream_group_last_refresh_timestamp_seconds`` shows how old they are); True if
    every shard was read."""

    async def one(shard: Shard) -> bool:
        started = time.perf_counter()
        try:
            stats = await read_group_stats(deployment.client_for(shard), shard.keys,
                                           memory=True)
        except (RedisError, OSError) as exc:
            metrics.refresh_errors.inc()
            log.warning("reading group gauges of %s/%s failed: %s", shard.keys.stream,
                        shard.keys.group, exc)
            await deployment.note_error(exc)  # a moved slot: the next refresh asks its owner
            return False
        metrics.rtt.observe(time.perf_counter() - started)
        publish(metrics.shard[shard.label], stats)
        metrics.last_refresh[shard.label].set(stats.at)
        return True

    return all(await asyncio.gather(*(one(s) for s in deployment.shards)))


async def refresh_forever(deployment: Deployment, metrics: GroupMetrics, stop: asyncio.Event,
                          every: float = GROUP_REFRESH_S) -> None:
    while True:
        await refresh(deployment, metrics)
        if await pause(stop, every):
            return


def start_group_gauges(settings: Settings, registry: CollectorRegistry,
                       stop: asyncio.Event | None = None, *,
                       deployment: Deployment | None = None) -> asyncio.Task[None]:
    """Register the group gauges in ``registry`` and refresh them in a background task of the
    running loop. Every shard of the deployment is exported, also by a consumer serving a
    ``--shards`` subset: a shard nobody serves then shows (and alerts) as having no active
    consumers. The task ends when ``stop`` is set or it is cancelled (``asyncio.run`` cancels
    it at exit).

    ``deployment``: the command's, already open (``regionstream.runtime``): the gauges read
    through its clients (a pool's connection each time: a worker's blocked XREADGROUP, on the
    workers' clients of their own, never delays them) and never close it; its owner stops
    the task first. Without one, the task opens a deployment of its own once Redis answers
    (each failed try a refresh error) and registers the gauges once the layout is known (a
    cluster or not: --shard-by auto)."""
    keys, stop = settings.keys, stop or asyncio.Event()
    errors = group_refresh_errors(registry)  # exported from the first scrape

    async def run_on(given: Deployment) -> None:
        view = _every_shard(given, settings)
        metrics = GroupMetrics(registry, keys.stream, keys.group, [s.label for s in view.shards])
        await refresh_forever(view, metrics, stop)

    async def run() -> None:
        if deployment is not None:
            await run_on(deployment)
            return
        own = await _open(settings, stop, errors)
        if own is None:
            return
        try:
            await run_on(own)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await own.aclose()

    task = asyncio.get_running_loop().create_task(run(), name="group-gauges")
    _RUNNING.add(task)  # the loop keeps only a weak reference to tasks
    task.add_done_callback(_RUNNING.discard)
    return task


def _every_shard(deployment: Deployment, settings: Settings) -> Deployment:
    """``deployment`` with every shard of its layout, through the same clients (closing it is
    its owner's): a consumer's is only its --shards."""
    every = shards(settings.keys, settings.regions, deployment.layout)
    if every == deployment.shards:
        return deployment
    return Deployment(deployment.url, deployment.tls, deployment.options, deployment.base,
                      deployment.router, deployment.layout, every)


async def _open(settings: Settings, stop: asyncio.Event, errors: Counter
                ) -> Deployment | None:
    """The deployment, once Redis answers (None: stopped first); each failed try is a
    refresh error. A bad --shard-by is the command's to report; here it only ends the task."""
    while True:
        try:
            return await open_deployment(settings.redis_url, settings.keys, settings.regions,
                                         settings.shard_by, tls=settings.tls)
        except LayoutError:
            return None
        except (RedisError, OSError) as exc:
            errors.inc()
            log.warning("group gauges: cannot reach Redis yet: %s", exc)
        if await pause(stop, GROUP_REFRESH_S):
            return None


_RUNNING: set[asyncio.Task[None]] = set()
