"""One worker of the group: a named consumer reading batches and handing them to its settler.

A worker and a reclaimer differ only in where their batches come from (``XREADGROUP >`` new
entries, or ``XAUTOCLAIM`` of idle ones); both first walk their own pending list (what they
held before a restart or a failure: ``OwnPending``) and both run in a ``RetryLoop``, which
turns Redis errors into back-offs instead of crashes.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import Histogram
from redis.exceptions import RedisError, ResponseError

from consumer.settle import Settled, Settler
from consumer.shard_group import Entry, ShardGroup
from shared.aio import abandon, pause
from shared.connection import ErrorKind, PermanentError, backoff, classify
from shared.group import ensure_group
from shared.metrics import ConsumerMetrics
from shared.settings import Settings

log = logging.getLogger("regionstream.consumer")


JITTER = 0.5  # back-offs vary by +-50%
# At a graceful stop a worker settles at most this many batches of its own pending entries;
# anything beyond (a huge backlog) stays pending and is replayed at the next start.
FINISH_MAX_PAGES = 50

ONLY_OWN = b"0"  # XREADGROUP from 0: this consumer's own pending entries (replay)
NEW = b">"  # XREADGROUP from >: entries never delivered to the group


@dataclass(slots=True)
class Batch:
    """One batch: how it was read and how it settled."""

    settled: Settled
    own: bool = False  # read from the consumer's own pending list
    abandoned: bool = False  # a blocking read given up at stop

    @property
    def read(self) -> int:
        return self.settled.read

    @property
    def failed(self) -> int:
        return self.settled.failed


class OwnPending:
    """The walk of a consumer's own pending list (``XREADGROUP`` from 0, page after page):
    what it was given before a restart or a failure is settled before anything new."""

    def __init__(self, group: ShardGroup, name: str, count: int, rtt: Histogram) -> None:
        self.group, self.name, self.count, self.rtt = group, name, count, rtt
        self.cursor = ONLY_OWN  # a (re)started consumer begins with its own entries

    @property
    def done(self) -> bool:
        return self.cursor == NEW

    def again(self) -> None:
        """Walk it again from the start (after a failure: what was read may not be settled;
        harmless if it was: such entries are recognized as redeliveries)."""
        self.cursor = ONLY_OWN

    async def settle(self, settler: Settler) -> None:
        """On a graceful stop: walk the list from its start and settle it (bounded: a huge
        backlog stays pending, replayed at the next start). A Redis error is logged: the
        entries stay pending."""
        self.again()
        try:
            for _ in range(FINISH_MAX_PAGES):
                settled = await settler.settle(await self.page())
                if self.done or settled.failed:
                    return
        except (RedisError, OSError) as exc:
            log.warning("%s: could not settle own pending entries at stop: %s", self.name, exc)

    async def page(self) -> list[Entry]:
        started = time.perf_counter()
        entries = await self.group.read(self.name, self.cursor, self.count, None)
        self.rtt.observe(time.perf_counter() - started)
        self.cursor = entries[-1][0] if entries else NEW
        return entries


class RetryLoop:
    """Runs ``step`` until ``stop``: a Redis error backs off (transient: exponentially, capped
    and jittered) instead of killing the consumer; a lost group is recreated; a refusal no
    retry fixes (a missing permission, the stream of the wrong type) stops it. After any
    error, ``own.again()``: what was read before is settled first."""

    def __init__(self, group: ShardGroup, name: str, settings: Settings,
                 metrics: ConsumerMetrics, stop: asyncio.Event, own: OwnPending) -> None:
        self.group, self.name, self.settings, self.stop, self.own = (
            group, name, settings, stop, own)
        self.metrics, self.failure = metrics, metrics.failure[group.label]
        # A Redis that is down for a minute is retried every second or so, not hammered.
        self.backoff = backoff()
        self.errors_in_a_row = 0

    @classmethod
    def of(cls, group: ShardGroup, settler: Settler, settings: Settings,
           metrics: ConsumerMetrics, stop: asyncio.Event) -> RetryLoop:
        """The loop of the consumer ``settler`` settles for, with its own pending walk."""
        own = OwnPending(group, settler.consumer, settings.batch, metrics.rtt["read"])
        return cls(group, settler.consumer, settings, metrics, stop, own)

    async def run(self, step: Callable[[], Awaitable[Batch]]) -> None:
        while not self.stop.is_set():
            try:
                batch = await step()
            except ResponseError as exc:
                await self._refused(exc)
                continue
            except (RedisError, OSError) as exc:
                kind = classify(exc)
                if kind is ErrorKind.PERMANENT:
                    raise PermanentError(f"{self.name} talking to Redis", exc) from exc
                if kind is not ErrorKind.TRANSIENT:
                    raise
                self.failure["transient"].inc()
                log.warning("%s: Redis unavailable (%s); retrying", self.name, exc)
                await self.group.note_error(exc)
                self.own.again()
                self.errors_in_a_row += 1
                await self.pause(self.backoff.compute(self.errors_in_a_row))
                continue
            self.errors_in_a_row = 0
            if batch.failed:  # settings.retry_backoff_ms says why it is not 0
                self.own.again()  # retry what failed, after a pause
                await self.pause(self.settings.retry_backoff_ms / 1000)

    async def _refused(self, exc: ResponseError) -> None:
        kind = classify(exc)
        keys = self.group.keys
        # The commands that raise here (XREADGROUP, XAUTOCLAIM, XPENDING, XACK) all work on the
        # stream: a wrong type there, like a missing permission, is a deployment fault.
        if kind in (ErrorKind.PERMANENT, ErrorKind.WRONGTYPE):
            raise PermanentError(f"{self.name} on stream {keys.stream}", exc) from exc
        self.own.again()  # whatever was read before the error is retried first
        if kind is ErrorKind.NOGROUP:
            # Redis lost the group (restart without persistence, someone ran XGROUP DESTROY):
            # recreate it rather than failing every read.
            try:
                await ensure_group(self.group.redis, keys)
            except (RedisError, OSError) as again:
                if classify(again) not in (ErrorKind.OOM, ErrorKind.TRANSIENT):
                    raise
                # Redis full (XGROUP CREATE is a write) or away: the next read finds the
                # group missing again and tries again, after a back-off; never fatal.
                self.failure["oom" if classify(again) is ErrorKind.OOM else "transient"].inc()
                log.warning("%s: consumer group %s is missing on %s and Redis cannot "
                            "recreate it yet (%s); retrying", self.name, keys.group,
                            keys.stream, again)
                await self.pause(self.settings.retry_backoff_ms / 1000)
                return
            self.metrics.nogroup.inc()
            self.failure["nogroup"].inc()
            log.error("%s: consumer group %s was missing on %s; recreated it", self.name,
                      keys.group, keys.stream)
            return
        self.failure[{ErrorKind.TRANSIENT: "transient", ErrorKind.OOM: "oom"}.get(
            kind, "other")].inc()
        log.error("%s: Redis refused a command: %s", self.name, exc)
        if kind is ErrorKind.TRANSIENT:  # MOVED, ASK, TRYAGAIN, CLUSTERDOWN, UNBLOCKED...
            await self.group.note_error(exc)
        await self.pause(self.settings.retry_backoff_ms / 1000)

    async def pause(self, seconds: float) -> None:
        # Jitter, so that workers hit by the same outage don't retry in lockstep.
        await pause(self.stop, seconds * random.uniform(1 - JITTER, 1 + JITTER))


class Worker:
    """Reads new entries of its shard's group (after its own pending ones) and settles them,
    batch after batch, until ``stop``; then settles what it still holds."""

    def __init__(self, group: ShardGroup, settler: Settler, settings: Settings,
                 metrics: ConsumerMetrics, stop: asyncio.Event) -> None:
        self.group, self.settler, self.settings = group, settler, settings
        self.name, self.metrics, self.stop = settler.consumer, metrics, stop
        self.loop = RetryLoop.of(group, settler, settings, metrics, stop)
        self.own = self.loop.own

    async def run(self) -> None:
        """Batches until ``stop`` is set; errors back off instead of killing the worker. A
        graceful stop then settles and acks everything this worker still holds."""
        await self.loop.run(self.next_batch)
        await self.own.settle(self.settler)

    async def next_batch(self) -> Batch:
        """One batch: from the own pending list while it lasts, else new entries. A blocking
        read for new entries is abandoned when ``stop`` is set, so a shutdown does not wait
        out ``block_ms``; whatever the server delivered to the abandoned read is in our
        pending list, which ``OwnPending.settle`` settles at the stop."""
        if not self.own.done:
            return Batch(await self.settler.settle(await self.own.page()), own=True)
        read = asyncio.ensure_future(self._read_new())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the grace period is over: leave no read behind
            abandon(read)
            raise
        finally:
            stopped.cancel()
        if not read.done():
            read.cancel()
            try:
                await read
            except asyncio.CancelledError:
                # The read's own cancellation, or this task's: the grace period ran out while
                # the read was being given up (Redis frozen). That one must end the worker,
                # not be taken for the read's, or it goes on to settle with no deadline left.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
            self.own.again()
            return Batch(Settled(), abandoned=True)
        return Batch(await self.settler.settle(read.result()))

    async def _read_new(self) -> list[Entry]:
        started = time.perf_counter()
        entries = await self.group.read(self.name, NEW, self.settings.batch,
                                        self.settings.block_ms)
        self.metrics.rtt["read"].observe(time.perf_counter() - started)
        return entries

