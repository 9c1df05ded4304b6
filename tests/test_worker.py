"""Worker mechanics on real Redis: round trips per batch, replay order, NOSCRIPT, trimming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.connection import Connection

from consumer import scripts
from consumer.settle import Fate, Settled
from consumer.shard_group import Entry, ShardGroup
from consumer.worker import Worker
from shared.connection import connect
from shared.keys import Keys
from shared.metrics import ConsumerMetrics
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import (
    drain,
    failures,
    now_ms,
    outcomes,
    prepare,
    publish,
    publish_cycle,
    publisher,
    settler,
    stored_ids,
    worker,
)


class CountingConnection(Connection):
    """Counts what goes out: one send_packed_command is one request on the wire (a pipeline
    is packed into a single send)."""

    sends = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1  # (connect() subclasses it: not type(self))
        await super().send_packed_command(command, check_health)


async def commandstats(client: aioredis.Redis) -> dict[str, int]:
    info = await client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}


async def test_a_whole_batch_costs_one_round_trip(client: aioredis.Redis, settings: Settings,
                                                  keys: Keys) -> None:
    snaps = await publish_cycle(client, settings, now_ms())
    await client.xadd(settings.stream, {"schema": "1", "payload": b"not json"})  # one poison
    await prepare(client, settings)
    counted = connect(settings.redis_url, connection_class=CountingConnection)
    settle = settler(counted, settings)
    entries = (await counted.xreadgroup(settings.group, "w", {settings.stream: ">"},
                                        count=100))[0][1]
    assert len(entries) == 9
    before_stats = await commandstats(client)
    CountingConnection.sends = 0
    result = await settle.settle(entries)
    sends = CountingConnection.sends
    after_stats = await commandstats(client)
    await counted.aclose()
    assert result.read == 9 and result.failed == 0
    assert sends == 1, f"{sends} round trips for one batch"
    # 8 regions -> 8 persist calls (one per region: its keys share a slot) + 1 dead-letter call
    assert after_stats["evalsha"] - before_stats.get("evalsha", 0) == 9
    assert after_stats.get("script|exists", 0) == before_stats.get("script|exists", 0)
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0
    assert len(snaps) == 8


async def test_restarted_worker_replays_its_own_pending_before_new(
        client: aioredis.Redis, settings: Settings) -> None:
    old = await publish_cycle(client, settings, now_ms() - 60_000, seed=1)
    await prepare(client, settings)
    # "crash": read a batch and never settle it
    await client.xreadgroup(settings.group, "w", {settings.stream: ">"}, count=100)
    new = await publish_cycle(client, settings, now_ms(), seed=2)
    seen: list[Settled] = []
    restarted = worker(client, settings, "w", on_settled=seen.append)  # same name
    ids = [e[0] for e in await client.xrange(settings.stream)]
    first = await restarted.next_batch()
    assert first.own and [o.entry_id for o in seen[0].outcomes] == ids[:8]  # the old cycle
    assert await stored_ids(client, settings) == {s.meta.snapshot_id for s in old}
    assert not restarted.own.done
    empty = await restarted.next_batch()  # own pending list walked to its end...
    assert empty.own and empty.read == 0 and restarted.own.done
    second = await restarted.next_batch()  # ...then it switches to new entries
    assert not second.own and [o.entry_id for o in seen[-1].outcomes] == ids[8:]
    assert len(new) == 8


async def test_script_flush_is_survived(client: aioredis.Redis, settings: Settings) -> None:
    await publish_cycle(client, settings, now_ms())
    await prepare(client, settings)
    await client.script_flush()
    assert await client.script_exists(scripts.persist().sha) == [False]
    registry = CollectorRegistry()
    w = worker(client, settings, metrics=ConsumerMetrics(registry))
    assert (await w.next_batch()).own  # a fresh worker first walks its (empty) pending list
    result = await w.next_batch()
    assert result.read == 8 and result.failed == 0
    assert result.settled.tally() == {Fate.PERSISTED: 8}
    assert await client.script_exists(scripts.persist().sha) == [True]
    assert failures(registry, "noscript", shard="all") == 1  # this shard's counter


async def test_trim_never_drops_unacknowledged_entries(client: aioredis.Redis,
                                                       settings: Settings, keys: Keys) -> None:
    import dataclasses

    s = dataclasses.replace(settings, stream_retention_s=0)  # keep no acknowledged history
    await publish_cycle(client, s, now_ms() - 120_000, seed=1)
    await drain(s)  # all 8 acked
    second = await publish_cycle(client, s, now_ms() - 60_000, seed=2)
    # another group that has read nothing yet, and a consumer holding entries in ours
    await client.xgroup_create(s.stream, "late-group", id="0")
    pub = publisher(client, s)
    assert await pub.trim() == 0  # late-group still needs everything
    await client.xgroup_destroy(s.stream, "late-group")
    await client.xreadgroup(s.group, "holder", {s.stream: ">"}, count=3)  # 3 pending
    await publish_cycle(client, s, now_ms(), seed=3)  # 8 undelivered
    removed = await pub.trim()
    assert removed == 8  # only the first, fully acknowledged cycle
    remaining = [e[1][b"snapshot_id"].decode() for e in await client.xrange(s.stream)]
    assert remaining[:8] == [x.meta.snapshot_id for x in second]
    assert len(remaining) == 16


async def test_trim_keeps_retention_window(client: aioredis.Redis, settings: Settings,
                                           keys: Keys) -> None:
    await publish_cycle(client, settings, now_ms())
    await drain(settings)
    assert await publisher(client, settings).trim() == 0  # acked, but within 24 h


async def test_persist_script_runs_on_fakeredis_for_the_demo_fallback(settings: Settings
                                                                      ) -> None:
    import dataclasses

    from shared.servers import start_fake_server

    with start_fake_server() as server:
        s = dataclasses.replace(settings, redis_url=server.url)
        fake = connect(server.url)  # with retries: fakeredis drops a connection after an error reply
        try:
            snaps = await publish_cycle(fake, s, now_ms())
            consumer = await drain(s)
            assert outcomes(consumer)["persisted"] == 8
            await publish(fake, s, snaps)
            assert outcomes(await drain(s))["redelivered"] == 8
        finally:
            await fake.aclose()


class FrozenRedis(ShardGroup):
    """The shard's group on a Redis that froze while a worker waited for new entries: the
    read never returns, and giving it up takes as long as the grace period allows (redis-py
    disconnects a cancelled read; from a frozen server that can hang)."""

    def __init__(self, group: ShardGroup) -> None:
        super().__init__(group.deployment, group.shard)
        self.reading, self.giving_up = asyncio.Event(), asyncio.Event()
        self.own_reads_after_giving_up = 0

    async def read(self, consumer: str, cursor: bytes, count: int, block_ms: int | None
                   ) -> list[Entry]:
        if cursor != b">":
            if self.giving_up.is_set():
                self.own_reads_after_giving_up += 1
            return await super().read(consumer, cursor, count, block_ms)
        self.reading.set()
        try:
            await asyncio.Event().wait()  # frozen
        except asyncio.CancelledError:
            self.giving_up.set()
            await asyncio.Event().wait()  # the disconnect hangs too, until cancelled again
        raise AssertionError("unreachable")


async def test_the_grace_deadline_ends_a_worker_giving_up_its_read(
        client: aioredis.Redis, settings: Settings) -> None:
    """A SIGTERM asks the worker to give up its blocking read; the grace period running out
    while it does (Redis frozen) must end the worker. That cancellation was taken for the
    read's own: the worker went on to settle its pending list, with no deadline left, and
    the process exited ~10 s (a socket timeout) after --grace (1 run in 8 of the chaos test
    test_sigterm_while_redis_hangs_exits_within_grace)."""
    await prepare(client, settings)
    stop = asyncio.Event()
    real = worker(client, settings, stop=stop)
    frozen = FrozenRedis(real.group)
    w = Worker(frozen, real.settler, settings, real.metrics, stop)
    task = asyncio.create_task(w.run())
    await wait_until(lambda: _is_set(frozen.reading), what="the worker reading new entries")
    stop.set()  # SIGTERM: the worker gives up its read
    await wait_until(lambda: _is_set(frozen.giving_up), what="the read being given up")
    task.cancel()  # the grace period is over
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert frozen.own_reads_after_giving_up == 0


async def _is_set(event: asyncio.Event) -> bool:
    return event.is_set()


def test_a_consumer_process_tunes_the_cycle_collector() -> None:
    """``tune_gc`` (called by ``regionstream consume``): what the process made at start is
    frozen out of the collector's walks, and the young generation waits for more objects. In a
    subprocess: the suite's own collector stays as it is."""
    probe = ("import gc; from consumer.service import GC_YOUNG_THRESHOLD, tune_gc; "
             "frozen = gc.get_freeze_count(); tune_gc(); "
             "print(gc.get_freeze_count() > frozen, gc.get_threshold()[0] == GC_YOUNG_THRESHOLD, "
             "gc.isenabled())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["True", "True", "True"]
