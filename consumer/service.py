"""The consumer process: N workers of one group, graceful shutdown, ``--drain``."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from consumer import scripts
from consumer.reclaim import Reclaimer
from consumer.worker import Worker
from shared.aio import pause
from shared.connection import SOCKET_TIMEOUT_S, ErrorKind, PermanentError, classify
from shared.group import ensure_group_when_writable, read_shard_stats
from shared.layout import layout_mismatch
from shared.metrics import CONSUMER_OUTCOMES, ConsumerMetrics
from shared.settings import Settings
from shared.shards import Deployment, open_deployment, single_server

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

# How often --drain asks Redis whether the group is empty while workers are idle.
DRAIN_POLL_S = 0.2
EXIT_SECOND_SIGNAL = 130


@dataclass
class Consumer:
    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.keys = self.settings.keys
        self.metrics = ConsumerMetrics(self.registry, self.settings.regions)
        self.workers: list[Worker] = []

    def totals(self) -> dict[str, int]:
        """Entries settled so far by this process, per outcome over all regions."""
        return {k: self.metrics.totals[k] for k in CONSUMER_OUTCOMES}

    def _deployment(self, target: Deployment | aioredis.Redis) -> Deployment:
        if isinstance(target, Deployment):
            return target
        s = self.settings
        return single_server(target, self.keys, s.regions, s.shard_by, s.shards)

    async def prepare(self, target: Deployment | aioredis.Redis) -> None:
        """Every shard's group, and the scripts on every node (a client: one server)."""
        deployment = self._deployment(target)
        for shard in deployment.shards:
            client = deployment.client_for(shard)
            await ensure_group_when_writable(client, shard.keys, self.stop, "consumer")
        for client in deployment.node_clients():
            for name in scripts.ALL:  # load once per node; calls then go out as EVALSHA
                await client.script_load(scripts.script(name).body)

    def make_workers(self, target: Deployment | aioredis.Redis) -> list[Worker]:
        """``--workers`` workers and a reclaimer per shard: every process serves every shard,
        so whichever process survives a crash picks up what the dead one held."""
        deployment = self._deployment(target)
        s = self.settings
        self.workers = []
        for shard in deployment.shards:
            client = deployment.client_for(shard)
            regions = (shard.region,) if shard.region else None
            self.workers += [
                Worker(client, shard.keys, s, self.keys.consumer_name(s.name, i), self.metrics,
                       self.stop, regions=regions)
                for i in range(s.workers)]
            self.workers.append(Reclaimer(client, shard.keys, s,
                                          self.keys.reclaimer_name(s.name), self.metrics,
                                          self.stop, regions=regions))
        return self.workers

    async def run(self, *, drain: bool = False, redis: aioredis.Redis | None = None) -> None:
        """Run the workers (and the reclaimers) until stopped, or drained with ``drain``.

        Without ``redis``, the workers get clients that never re-send a command by themselves
        (see shared.connection.connect: a silently re-sent XREADGROUP would skip entries) and
        set-up and the drain watch get ones that do; a Redis Cluster is found out and each
        shard's commands go to the node that owns it. With ``redis`` (tests), everything goes
        through that one client, in the --shard-by layout of a single server."""
        st = self.settings
        if redis is not None:
            control = workers = self._deployment(redis)
        else:
            control = await open_deployment(st.redis_url, self.keys, st.regions, st.shard_by,
                                            only=st.shards, tls=st.tls)
            workers = await open_deployment(
                st.redis_url, self.keys, st.regions, st.shard_by, only=st.shards, tls=st.tls,
                retries=0, socket_timeout=SOCKET_TIMEOUT_S + st.block_ms / 1000,
                max_connections=pool_size(st))
        try:
            await self.prepare(control)
            if (mismatch := await layout_mismatch(control, self.keys, st.regions)) is not None:
                log.warning("%s", mismatch)
            tasks = [asyncio.create_task(w.run(), name=w.name)
                     for w in self.make_workers(workers)]
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
            await self._supervise(tasks)
        finally:
            # One line a supervisor or a test can read: what this process settled.
            log.info("settled: %s", " ".join(f"{k}={v}" for k, v in self.totals().items()))
            if redis is None:
                await control.aclose()
                await workers.aclose()

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

    def install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> None:
        """First SIGINT/SIGTERM: stop reading, finish and ack in-flight work, exit 0. Second:
        exit at once (what is pending is replayed by the next start: nothing is lost)."""

        def on_signal(signum: int) -> None:
            if self.stop.is_set():
                log.warning("second %s: exiting now", signal.Signals(signum).name)
                os._exit(EXIT_SECOND_SIGNAL)
            log.info("%s: finishing in-flight work (grace %.1fs)",
                     signal.Signals(signum).name, self.settings.grace_s)
            self.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)

