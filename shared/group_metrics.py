"""Group-level state read from Redis: the ``regionstream_group_*`` gauges and ``top``'s header.

``read_group_stats`` reads everything in ONE pipelined round trip (TIME, XINFO STREAM, XINFO
GROUPS, XINFO CONSUMERS, XPENDING, XLEN and XINFO STREAM of the dead-letter stream).

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
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError, ResponseError

from shared.aio import pause
from shared.connection import connect
from shared.keys import Keys
from shared.metrics import UNKNOWN, GroupMetrics
from shared.settings import Settings

log = logging.getLogger("regionstream.metrics")

# How often the group gauges are read from Redis: well under a usual 15 s scrape interval, so
# a scrape sees a value at most this old, and negligible load (one round trip) on Redis.
GROUP_REFRESH_S = 5.0
# A consumer whose last read attempt is older than this is not counted as active. A live worker
# re-reads at least every --block-ms (2 s by default) or after a back-off (1 s), so a minute is
# far beyond any healthy gap, and well under the 60 s min-idle after which its entries are
# reclaimed.
ACTIVE_CONSUMER_IDLE_S = 60.0


@dataclass(frozen=True, slots=True)
class ConsumerStat:
    name: str
    pending: int
    idle_s: float


@dataclass(frozen=True, slots=True)
class GroupStats:
    """One consistent read of a stream, its group and its dead-letter stream."""

    at: float  # Redis server time: ages below do not depend on this host's clock
    exists: bool  # the stream and the group both exist
    stream_length: int = 0
    entries_added: int | None = None  # ever XADDed to the stream (Redis >= 7.0)
    lag: int | None = None  # undelivered entries; None when Redis cannot tell (after XDEL)
    entries_read: int | None = None  # ever delivered to the group (Redis >= 7.0)
    pending: int = 0
    oldest_pending_age_s: float | None = None  # None when nothing is pending
    consumers: tuple[ConsumerStat, ...] = ()
    dlq_length: int = 0
    dlq_added: int | None = None

    @property
    def active_consumers(self) -> int:
        return sum(1 for c in self.consumers if c.idle_s < ACTIVE_CONSUMER_IDLE_S)


def _text(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


def _id_seconds(entry_id: bytes) -> float:
    return int(entry_id.split(b"-", 1)[0]) / 1000


def _optional_int(v: Any) -> int | None:
    return None if v is None else int(v)


def _group_of(groups: Any, name: str) -> dict[str, Any] | None:
    if isinstance(groups, ResponseError):
        return None
    for g in groups:
        if _text(g["name"]) == name:
            found: dict[str, Any] = g
            return found
    return None


async def read_group_stats(redis: aioredis.Redis, keys: Keys) -> GroupStats:
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    pipe.xinfo_stream(keys.stream)
    pipe.xinfo_groups(keys.stream)
    pipe.xinfo_consumers(keys.stream, keys.group)
    pipe.xpending(keys.stream, keys.group)
    pipe.xinfo_stream(keys.dlq)
    # A missing stream, group or DLQ is an error reply in its slot, not a failed round trip.
    server_time, stream, groups, consumers, pending, dlq = await pipe.execute(
        raise_on_error=False)
    if isinstance(server_time, BaseException):
        raise server_time
    now = server_time[0] + server_time[1] / 1_000_000
    dlq_length, dlq_added = (0, None) if isinstance(dlq, ResponseError) else (
        int(dlq["length"]), _optional_int(dlq.get("entries-added")))
    if isinstance(stream, ResponseError):
        return GroupStats(now, False, dlq_length=dlq_length, dlq_added=dlq_added)
    length, added = int(stream["length"]), _optional_int(stream.get("entries-added"))
    group = _group_of(groups, keys.group)
    if group is None or isinstance(consumers, ResponseError) or isinstance(
            pending, ResponseError):
        return GroupStats(now, False, length, added, dlq_length=dlq_length, dlq_added=dlq_added)
    lag = _optional_int(group.get("lag"))
    if lag is None and group["last-delivered-id"] == stream["last-generated-id"]:
        lag = 0  # Redis cannot count after deletions, but nothing is past the group's cursor
    oldest = now - _id_seconds(pending["min"]) if pending["pending"] else None
    stats = tuple(ConsumerStat(_text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
                  for c in consumers)
    return GroupStats(now, True, length, added, lag, _optional_int(group.get("entries-read")),
                      int(group["pending"]), oldest, stats, dlq_length, dlq_added)


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
    keys = Keys(prefix=settings.prefix, stream=settings.stream, group=settings.group)
    metrics = GroupMetrics(registry, keys.stream, keys.group)

    async def run() -> None:
        client = connect(settings.redis_url)
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
