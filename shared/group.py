"""The consumer group: creating it, and reading its state from Redis (stream-id arithmetic is
``shared.ids``; the producer's trim policy ``producer.trim``)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.aio import pause
from shared.connection import ErrorKind, backoff, classify
from shared.ids import CLOCK_AHEAD_S, id_key, id_seconds, text
from shared.keys import Keys
from shared.memory import Memory, memory_of
from shared.shards import Deployment, read_each

log = logging.getLogger("regionstream")

async def ensure_group(redis: aioredis.Redis, keys: Keys) -> bool:
    """Create the group (and the stream) if missing; True if it was created.

    The group starts at id 0, so entries published before any consumer ran are processed."""
    try:
        await redis.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if classify(exc) is ErrorKind.BUSYGROUP:
            return False
        # Refused for another reason (XGROUP CREATE is a write: a Redis at maxmemory refuses
        # it before looking): fine if the group is there already; a consumer starting while
        # Redis is full should wait for memory like a running one, not die here.
        if await _group_exists(redis, keys):
            return False
        raise
    return True


async def ensure_group_when_writable(redis: aioredis.Redis, keys: Keys, stop: asyncio.Event,
                                     who: str) -> bool:
    """``ensure_group``, waiting (with back-off, until ``stop``) while Redis is full: a
    consumer or producer starting on a Redis at maxmemory (noeviction) whose stream or group
    does not exist yet waits for memory like a running one, instead of exiting 1."""
    attempt = 0
    while True:
        try:
            return await ensure_group(redis, keys)
        except ResponseError as exc:
            if classify(exc) is not ErrorKind.OOM or stop.is_set():
                raise
            attempt += 1
            if attempt == 1:
                log.error("%s: Redis is out of memory: cannot create group %s on %s yet; "
                          "waiting for memory (%s)", who, keys.group, keys.stream, exc)
            if await pause(stop, backoff().compute(attempt)):
                raise


async def _group_exists(redis: aioredis.Redis, keys: Keys) -> bool:
    try:
        groups: Any = await redis.xinfo_groups(keys.stream)
    except ResponseError:  # no such stream
        return False
    return any(text(g["name"]) == keys.group for g in groups)


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
    lag: int | None = None  # undelivered entries (exact_lag); None when Redis cannot tell
    entries_read: int | None = None  # ever delivered to the group (Redis >= 7.0)
    pending: int = 0
    # None when nothing is pending, or when the oldest pending id is ahead of the clock
    oldest_pending_age_s: float | None = None
    consumers: tuple[ConsumerStat, ...] = ()
    dlq_length: int = 0
    dlq_added: int | None = None
    memory: Memory | None = None  # the node's eviction policy and evictions, when asked
    # The group's cursor (last-delivered id) is past the stream's last id: someone ran XGROUP
    # SETID into the future, and every entry added since is behind the cursor, never to be
    # delivered. Not drained, whatever else holds (``cursor_ahead_message`` says it).
    cursor_ahead: str | None = None

    @property
    def drained(self) -> bool:
        """Nothing undelivered and nothing pending: what ``consume --drain`` waits for."""
        return (self.exists and self.pending == 0 and self.lag == 0
                and self.cursor_ahead is None)

    @property
    def active_consumers(self) -> int:
        return sum(1 for c in self.consumers if c.idle_s < ACTIVE_CONSUMER_IDLE_S)


def total(values: list[int | None]) -> int | None:
    """A sum over shards of a figure Redis may not know (lag): unknown if any shard's is."""
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _optional_int(v: Any) -> int | None:
    return None if v is None else int(v)


def exact_lag(group: dict[str, Any], stream: dict[str, Any]) -> int | None:
    """Entries past the group's cursor, from facts that stay exact: 0 when the stream's newest
    entry is at or before the group's last-delivered id, whatever Redis's ``lag`` says. That
    field is an estimate (entries-added minus entries-read): nil after an XDEL of the newest
    entry (``consume --drain`` never exited), and wrong outright after failovers (20-990 for
    groups drained long before, on a cluster and after a Sentinel fail-back). When entries are
    past the cursor, Redis's figure is the hint (at least 1), None if it cannot tell."""
    if cursor_ahead(group, stream):
        return None  # what is behind the cursor is unknown, and will not be delivered
    newest = stream.get("last-entry")
    if not newest or id_key(newest[0]) <= id_key(group["last-delivered-id"]):
        return 0
    hint = _optional_int(group.get("lag"))
    return None if hint is None else max(1, hint)


def cursor_ahead(group: dict[str, Any], stream: dict[str, Any]) -> bool:
    """The group's last-delivered id is past every id the stream ever gave (XGROUP SETID to a
    future id): entries added since sit behind the cursor and are never delivered."""
    return id_key(group["last-delivered-id"]) > id_key(stream["last-generated-id"])


def cursor_ahead_message(keys: Keys, group: dict[str, Any], stream: dict[str, Any]) -> str:
    return (f"group {keys.group} on {keys.stream}: its cursor "
            f"{text(group['last-delivered-id'])} is past the stream's last id "
            f"{text(stream['last-generated-id'])} (an XGROUP SETID?): entries added since are "
            f"never delivered; set it back (XGROUP SETID {keys.stream} {keys.group} <the last "
            f"id it processed>) and restart")


def _group_of(groups: Any, name: str) -> dict[str, Any] | None:
    if isinstance(groups, ResponseError):
        return None
    for g in groups:
        if text(g["name"]) == name:
            found: dict[str, Any] = g
            return found
    return None


async def read_group_stats(redis: aioredis.Redis, keys: Keys, *, memory: bool = False
                           ) -> GroupStats:
    """One pipelined read; ``memory``: also the node's ``INFO memory`` and ``INFO stats``
    (the group gauges export the eviction policy and evicted keys)."""
    pipe = redis.pipeline(transaction=False)
    pipe.time()
    pipe.xinfo_stream(keys.stream)
    pipe.xinfo_groups(keys.stream)
    pipe.xinfo_consumers(keys.stream, keys.group)
    pipe.xpending(keys.stream, keys.group)
    pipe.xinfo_stream(keys.dlq)
    if memory:
        pipe.info("memory")
        pipe.info("stats")
    # A missing stream, group or DLQ is an error reply in its slot, not a failed round trip.
    server_time, stream, groups, consumers, pending, dlq, *info = await pipe.execute(
        raise_on_error=False)
    if isinstance(server_time, BaseException):
        raise server_time
    node = None
    if info and not any(isinstance(i, BaseException) for i in info):
        node = memory_of(info[0], info[1])
    for reply in (stream, groups, consumers, pending, dlq):
        # A redirect (MOVED, ASK: the slot is elsewhere now) or a failover reply says nothing
        # about the stream: the caller re-reads the slot map and asks again.
        if isinstance(reply, ResponseError) and classify(reply) is ErrorKind.TRANSIENT:
            raise reply
    now = server_time[0] + server_time[1] / 1_000_000
    # No dead-letter stream yet: nothing was ever added to it (most region shards have none).
    dlq_length, dlq_added = (0, 0) if isinstance(dlq, ResponseError) else (
        int(dlq["length"]), _optional_int(dlq.get("entries-added")))
    if isinstance(stream, ResponseError):
        return GroupStats(now, False, dlq_length=dlq_length, dlq_added=dlq_added, memory=node)
    length, added = int(stream["length"]), _optional_int(stream.get("entries-added"))
    group = _group_of(groups, keys.group)
    if group is None or isinstance(consumers, ResponseError) or isinstance(
            pending, ResponseError):
        return GroupStats(now, False, length, added, dlq_length=dlq_length, dlq_added=dlq_added,
                          memory=node)
    lag = exact_lag(group, stream)
    oldest = now - id_seconds(pending["min"]) if pending["pending"] else None
    if oldest is not None and oldest < -CLOCK_AHEAD_S:
        oldest = None  # an id ahead of Redis's clock says nothing of its age: unknown, not 0
    stats = tuple(ConsumerStat(text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
                  for c in consumers)
    ahead = cursor_ahead_message(keys, group, stream) if cursor_ahead(group, stream) else None
    return GroupStats(now, True, length, added, lag, _optional_int(group.get("entries-read")),
                      int(group["pending"]), oldest, stats, dlq_length, dlq_added, node, ahead)




async def read_shard_stats(deployment: Deployment) -> list[GroupStats]:
    """``read_group_stats`` of every shard, in shard order, concurrently, each on its node
    (a redirect re-reads the slot map and asks again: ``read_each``)."""
    return await read_each(deployment, lambda shard, client: read_group_stats(client,
                                                                              shard.keys))
