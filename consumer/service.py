"""The consumer process: N workers of one group, graceful shutdown, ``--drain``."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from consumer import scripts
from consumer.message import check_entry
from consumer.reclaim import Reclaimer
from consumer.settle import Check, Settled, Settler
from consumer.shard_group import ShardGroup
from consumer.worker import Worker
from shared.aio import pause
from shared.connection import SOCKET_TIMEOUT_S, ErrorKind, PermanentError, classify
from shared.group import ensure_group_when_writable, read_shard_stats
from shared.layout import layout_mismatch
from shared.metrics import CONSUMER_OUTCOMES, ConsumerMetrics
from shared.settings import Settings
from shared.shards import Deployment, open_deployment

log = logging.getLogger("regionstream.consumer")

# Connections beyond one per worker and reclaimer: redis-py's health checks and a reconnect
# overlapping the connection it replaces.
POOL_SPARE = 4


def pool_size(s: Settings) -> int:
    """Connections the workers' client may open (per node on a cluster): every worker and
    reclaimer of every shard it may serve holds one while its read or settle is in flight.
    redis-py's default of 100 silently capped them: --workers 110, or --shard-by region
    --workers 12 (8 x 13), logged "Too many connections" hundreds of times on a healthy
    Redis."""
    shards = len(s.shards or s.regions)  # an upper bound: the layout is not resolved yet
    return shards * (s.workers + 1) + POOL_SPARE

# The cycle collector's first threshold in a consumer process (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """For a process that runs a consumer (``regionstream consume``; an application embedding
    a ``Consumer`` decides for itself). A message leaves a few dozen container objects behind
    for the collector to track (the lists of a decoded snapshot, an entry's fields), none of
    them in a reference cycle: with the default threshold the collector ran every dozen or so
    messages, and the older generations' collections walked every object the process made at
    start (redis-py, asyncio, prometheus-client) again and again. ``gc.freeze`` moves those
    out of its sight; a higher first threshold runs it less often. Cyclic garbage is still
    collected."""
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


# How often --drain asks Redis whether the group is empty while workers are idle.
DRAIN_POLL_S = 0.2
# How often a running consumer says what it settled since it last said so (when anything).
PROGRESS_EVERY_S = 60.0


@dataclass
class Consumer:
    """``--workers`` workers and a reclaimer per shard, in one process. ``check`` and
    ``on_settled`` are seams (see consumer.settle.Settler): the benchmarks observe through
    them; production keeps the defaults."""

    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    check: Check = check_entry
    on_settled: Callable[[Settled], None] | None = None
    progress_every_s: float = PROGRESS_EVERY_S

    def __post_init__(self) -> None:
        self.keys = self.settings.keys
        self.metrics = ConsumerMetrics(self.registry, self.settings.regions)
        self.workers: list[Worker | Reclaimer] = []

    def totals(self) -> dict[str, int]:
        """Entries settled so far by this process, per outcome over all regions."""
        return {k: self.metrics.totals[k] for k in CONSUMER_OUTCOMES}

    async def prepare(self, deployment: Deployment) -> None:
        """Every shard's group, and the scripts on every node."""
        for shard in deployment.shards:
            await ensure_group_when_writable(deployment.client_for(shard), shard.keys,
                                             self.stop, "consumer")
        for client in deployment.node_clients():
            for name in scripts.ALL:  # load once per node; calls then go out as EVALSHA
                await client.script_load(scripts.script(name).body)

    def settler(self, group: ShardGroup, name: str) -> Settler:
        return Settler(group, self.settings, name, self.metrics, check=self.check,
                       on_settled=self.on_settled)

    def make_workers(self, deployment: Deployment) -> list[Worker | Reclaimer]:
        """``--workers`` workers and a reclaimer per shard: every process serves every shard,
        so whichever process survives a crash picks up what the dead one held."""
        s = self.settings
        self.workers = []
        for shard in deployment.shards:
            group = ShardGroup(deployment, shard)
            self.workers += [
                Worker(group, self.settler(group, self.keys.consumer_name(s.name, i)), s,
                       self.metrics, self.stop)
                for i in range(s.workers)]
            self.workers.append(Reclaimer(group, self.settler(
                group, self.keys.reclaimer_name(s.name)), s, self.metrics, self.stop))
        return self.workers

    async def run(self, deployment: Deployment | None = None, *, drain: bool = False) -> None:
        """Run the workers (and the reclaimers) until stopped, or drained with ``drain``.

        ``deployment`` (the command's, opened once; None: opened here from the settings)
        serves the set-up and the drain watch; the workers get clients of their own made from
        it, which never re-send a command by themselves (see shared.connection.connect: a
        silently re-sent XREADGROUP would skip entries). On a Redis Cluster each shard's
        commands go to the node that owns it."""
        st = self.settings
        async with contextlib.AsyncExitStack() as stack:
            if deployment is None:
                deployment = await open_deployment(st.redis_url, self.keys, st.regions,
                                                   st.shard_by, only=st.shards, tls=st.tls)
                stack.push_async_callback(deployment.aclose)
            workers = deployment.with_options(
                retries=0, socket_timeout=SOCKET_TIMEOUT_S + st.block_ms / 1000,
                max_connections=pool_size(st))
            stack.push_async_callback(workers.aclose)
            stack.callback(self._say_totals)
            await self._run(deployment, workers, drain)

    def _say_totals(self) -> None:
        # One line a supervisor or a test can read: what this process settled.
        log.info("settled: %s", " ".join(f"{k}={v}" for k, v in self.totals().items()))

    async def _run(self, control: Deployment, workers: Deployment, drain: bool) -> None:
        st = self.settings
        await self.prepare(control)
        if (mismatch := await layout_mismatch(control, self.keys, st.regions)) is not None:
            log.warning("%s", mismatch)
        tasks = [asyncio.create_task(w.run(), name=w.name) for w in self.make_workers(workers)]
        shards = ("stream " + st.stream if control.layout == "none" else
                  f"{len(control.shards)} region shards of {st.stream}"
                  + (f" ({', '.join(st.shards)})" if st.shards else "")
                  + (" on a Redis Cluster" if control.cluster else ""))
        log.info("consuming %s as group %s: %d consumer(s) per shard (%s), batch %d, "
                 "block %d ms, reclaim after %d ms idle%s", shards, st.group, st.workers,
                 ", ".join(self.keys.consumer_name(st.name, i) for i in range(st.workers)),
                 st.batch, st.block_ms, st.min_idle_ms, " (until drained)" if drain else "")
        if drain:
            tasks.append(asyncio.create_task(self._drain_watch(control)))
        tasks.append(asyncio.create_task(self._say_progress(), name="progress"))
        await self._supervise(tasks)

    async def _supervise(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait for the workers until a stop (signal, drained) or a crash; then give them
        ``grace_s`` to settle what they hold, and cancel the rest: their entries stay pending
        for replay. A crashed worker stops the others (the process then exits non-zero)."""
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            while not self.stop.is_set():
                done, _ = await asyncio.wait([*tasks, stopped],
                                             return_when=asyncio.FIRST_COMPLETED)
                self._raise_crash(done)
                if all(t.done() for t in tasks):
                    return
            self.stop.set()
            _, late = await asyncio.wait(tasks, timeout=self.settings.grace_s)
            if late:
                log.warning("grace period of %.1fs over: cancelling %d busy worker(s); what "
                            "they hold stays pending and is replayed", self.settings.grace_s,
                            len(late))
            self._raise_crash(t for t in tasks if t.done())
        finally:
            stopped.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _raise_crash(self, done: Iterable[asyncio.Future[Any]]) -> None:
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                self.stop.set()
                raise t.exception()  # type: ignore[misc]

    async def _say_progress(self) -> None:
        """Every ``progress_every_s``, one line of what was settled since the last one, if
        anything, with per-second rates: duplicates are counted apart, so that a producer
        whose snapshots all fall in taken dedup buckets (the same region, trigger and
        --dedup-window as a stored one) shows as such, not as a consumer that stores
        nothing."""
        last, since = self.totals(), time.monotonic()
        while not await pause(self.stop, self.progress_every_s):
            now, at = self.totals(), time.monotonic()
            done = {k: now[k] - last[k] for k in now if now[k] != last[k]}
            if done:
                dt = max(at - since, 1e-9)
                log.info("settled in the last %.0f s: %s (a duplicate has the region, trigger "
                         "and %d s dedup window of a stored snapshot)", dt,
                         " ".join(f"{k}={n} ({n / dt:.1f}/s)" for k, n in done.items()),
                         self.settings.dedup_window_s)
            last, since = now, at

    async def _drain_watch(self, deployment: Deployment) -> None:
        """Stop once every shard's group has no undelivered and no pending entries."""
        while not self.stop.is_set():
            try:
                stats = await read_shard_stats(deployment)
            except (RedisError, OSError) as exc:  # a failover or a moved slot: ask again
                if classify(exc) is not ErrorKind.TRANSIENT:
                    raise
                stats = []  # read_shard_stats re-read the slot map already
            for s in stats:  # never drained, never said so: stop, saying what to fix
                if s.cursor_ahead is not None:
                    raise PermanentError("draining", s.cursor_ahead)
            drained = bool(stats) and all(s.drained for s in stats)
            if drained:
                log.info("group %s drained", self.keys.group)
                self.stop.set()
                return
            await pause(self.stop, DRAIN_POLL_S)
