"""Test helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from consumer.reclaim import Reclaimer
from consumer.service import Consumer
from consumer.settle import Settler
from consumer.shard_group import ShardGroup
from consumer.worker import Worker
from harness.cluster import Cluster
from producer.publisher import Publisher
from producer.synthetic import SyntheticSource
from shared import wire
from shared.group import exact_lag
from shared.metrics import ConsumerMetrics, ProducerMetrics
from shared.schema import Snapshot, decode, encode
from shared.settings import Settings
from shared.shards import (
    Deployment,
    Shard,
    open_deployment,
    resolve_layout,
    shards,
    single_server,
)

DRAIN_TIMEOUT_S = 60.0
# Where a test's deployment lives: a Redis Cluster, or the URL of one server.
Where = Cluster | str


def deployed(client: aioredis.Redis, s: Settings) -> Deployment:
    """The deployment of ``s`` on the test's one server, through ``client`` (the test's
    connection, closed by its fixture): what ``open_deployment`` finds there, without asking."""
    return single_server(s.redis_url, client, s.keys, s.regions, s.shard_by, s.shards)


def publisher(client: aioredis.Redis, s: Settings, metrics: ProducerMetrics | None = None
              ) -> Publisher:
    return Publisher(deployed(client, s), s, metrics)


def settler(client: aioredis.Redis, s: Settings, name: str = "w",
            metrics: ConsumerMetrics | None = None, shard: int = 0, **seams: Any) -> Settler:
    """The consumer's settle pipeline for ``name`` on the ``shard``-th shard of ``s``
    (``seams``: Settler's ``clock``, ``check``, ``on_settled``)."""
    d = deployed(client, s)
    return Settler(ShardGroup(d, d.shards[shard]), s, name,
                   metrics or ConsumerMetrics(CollectorRegistry(), s.regions), **seams)


def worker(client: aioredis.Redis, s: Settings, name: str = "w",
           metrics: ConsumerMetrics | None = None, stop: asyncio.Event | None = None,
           **seams: Any) -> Worker:
    """A worker of the consumer ``name``, as ``Consumer.make_workers`` builds one."""
    metrics = metrics or ConsumerMetrics(CollectorRegistry(), s.regions)
    settle = settler(client, s, name, metrics, **seams)
    return Worker(settle.group, settle, s, metrics, stop or asyncio.Event())


def reclaimer(client: aioredis.Redis, s: Settings, name: str,
              metrics: ConsumerMetrics | None = None, stop: asyncio.Event | None = None
              ) -> Reclaimer:
    metrics = metrics or ConsumerMetrics(CollectorRegistry(), s.regions)
    settle = settler(client, s, name, metrics)
    return Reclaimer(settle.group, settle, s, metrics, stop or asyncio.Event())


async def publish(client: aioredis.Redis, settings: Settings, snaps: list[Snapshot]
                  ) -> list[bytes]:
    pub = publisher(client, settings)
    await pub.prepare()
    return await pub.publish(snaps)


async def publish_cycle(client: aioredis.Redis, settings: Settings, now_ms: int,
                        seed: int = 7) -> list[Snapshot]:
    snaps = SyntheticSource(settings.regions, seed=seed).cycle(now_ms)
    await publish(client, settings, snaps)
    return snaps


def load_payloads(settings: Settings, n: int, seed: int) -> list[bytes]:
    """``n`` distinct snapshots (the load generator's), encoded, as a producer would send."""
    src, base = SyntheticSource(settings.regions, seed=seed), int(time.time() * 1000)
    return [encode(src.snapshot_for_count(i, base)) for i in range(n)]


async def drain(settings: Settings) -> Consumer:
    """Run a consumer in this process until the group is drained: connected as the command
    connects (``Consumer.run`` opens the deployment of ``settings``)."""
    consumer = Consumer(settings, registry=CollectorRegistry())
    await asyncio.wait_for(consumer.run(drain=True), DRAIN_TIMEOUT_S)
    return consumer


async def prepare(client: aioredis.Redis, s: Settings) -> None:
    """The group of every shard and the scripts, as a consumer's start makes them."""
    await Consumer(s, registry=CollectorRegistry()).prepare(deployed(client, s))


def outcomes(consumer: Consumer) -> dict[str, int]:
    """Totals per outcome over all regions, read from the consumer's metrics."""
    return consumer.totals()


async def dump(client: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix`` with its value (strings) or members (zsets)."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await client.type(key)
        if kind == b"string":
            out[key] = await client.get(key)
        elif kind == b"zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out


def failures(registry: CollectorRegistry, kind: str, shard: str | None = None) -> float:
    """``regionstream_failures_total{kind=...}`` summed over every shard (or of ``shard``)."""
    return sum(s.value for m in registry.collect() for s in m.samples
               if s.name == "regionstream_failures_total" and s.labels["kind"] == kind
               and shard in (None, s.labels["shard"]))


def sample(registry: CollectorRegistry, name: str) -> float:
    """The value of the metric sample ``name`` (summed over its label sets)."""
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def now_ms() -> int:
    return int(time.time() * 1000)


async def stored_ids(client: aioredis.Redis, s: Settings) -> set[str]:
    """The snapshot ids indexed over every region (on the one server of ``client``)."""
    pipe = client.pipeline(transaction=False)
    for r in s.regions:
        pipe.zrange(s.keys.index(r), 0, -1)
    return {sid.decode() for ids in await pipe.execute() for sid in ids}


def owner(where: Where, key: str) -> sync_redis.Redis:
    """A client of the node holding ``key`` (``where`` a URL: that one server)."""
    if isinstance(where, str):
        return sync_redis.Redis.from_url(where, socket_timeout=5)
    node = where.master_of_slot(key_slot(key.encode()))
    return sync_redis.Redis(port=node.port, socket_timeout=5)


def check_exactly_once(where: Where, s: Settings, payloads: list[bytes],
                       poison: list[bytes] | dict[str, list[bytes]]) -> None:
    """Each snapshot of ``payloads`` stored once under its by-id key with an expiry and
    indexed, `latest` the newest per region, every shard's group with nothing pending or
    undelivered, the dead-letter streams holding exactly ``poison`` (a list: over all shards;
    by region: each region shard's own), no staging key left. Every key is read on the node
    holding it (``where``: a cluster, or the URL of one server)."""
    by_region: dict[str, dict[str, tuple[int, bytes]]] = {r: {} for r in s.regions}
    for p in payloads:
        snap = decode(p)
        by_region[snap.region_id][snap.meta.snapshot_id] = (snap.generated_at, p)
    for region, expected in by_region.items():
        with owner(where, s.keys.index(region)) as c:
            index = dict(c.zrange(s.keys.index(region), 0, -1, withscores=True))
            assert {k.decode() for k in index} == set(expected), region
            for sid, (_, payload) in expected.items():
                by_id = s.keys.by_id(region, sid)
                assert c.get(by_id) == payload
                assert c.pttl(by_id) > 0
            newest = max(expected.items(), key=lambda kv: (kv[1][0], kv[0]))[0]
            assert c.get(s.keys.latest(region)) == newest.encode()
            assert not list(c.scan_iter(match=f"{s.prefix}:incoming:*"))
    dead: Counter[bytes] = Counter()
    for shard in _shards_of(s, where):
        k = shard.keys
        if shard.region is not None:  # the region's data lives in its shard's slot
            assert key_slot(k.stream.encode()) == key_slot(s.keys.index(shard.region).encode())
        with owner(where, k.stream) as c:
            (group,) = [g for g in c.xinfo_groups(k.stream) if g["name"] == s.group.encode()]
            # Undelivered judged as the consumer judges it: Redis's own lag field is an
            # estimate that failovers leave wrong (990 on a group drained long before, after
            # a Sentinel fail-back).
            assert group["pending"] == 0 and exact_lag(group, c.xinfo_stream(k.stream)) == 0
            here = Counter(d[wire.F_PAYLOAD] for _, d in c.xrange(k.dlq))
        if isinstance(poison, dict):
            assert shard.region is not None, "poison by region needs --shard-by region"
            assert here == Counter(poison.get(shard.region, [])), shard.region
        dead += here
    if isinstance(poison, list):
        assert dead == Counter(poison)


async def assert_exactly_once(where: Where, s: Settings, payloads: list[bytes],
                              poison: list[bytes] | dict[str, list[bytes]]) -> None:
    """``check_exactly_once`` from a coroutine (in a thread: the loop keeps running)."""
    await asyncio.to_thread(check_exactly_once, where, s, payloads, poison)


ENGINES = ["server", "cluster"]


def engine_settings(request: pytest.FixtureRequest, settings: Settings, engine: str
                    ) -> tuple[Settings, Cluster | None]:
    """The test's names on the session's server, or on the session's Redis Cluster (whose
    default layout is a shard per region)."""
    if engine == "server":
        return settings, None
    cluster: Cluster = request.getfixturevalue("shared_cluster")
    return dataclasses.replace(settings, redis_url=cluster.url, shard_by="region"), cluster


def _shards_of(s: Settings, where: Where) -> tuple[Shard, ...]:
    """The shards of ``s`` where it lives (--shard-by resolved as the commands resolve it)."""
    return shards(s.keys, s.regions, resolve_layout(s.shard_by, isinstance(where, Cluster)))


def stored_total(where: Where, s: Settings) -> int:
    """Snapshots indexed over every region, each read on the node holding it."""
    total = 0
    for r in s.regions:
        with owner(where, s.keys.index(r)) as c:
            total += int(c.zcard(s.keys.index(r)))
    return total


async def stored(where: Where, s: Settings) -> int:
    """``stored_total`` from a coroutine (in a thread: the loop keeps running)."""
    return await asyncio.to_thread(stored_total, where, s)


def pending_total(where: Where, s: Settings) -> int:
    """Entries pending in the group over every shard."""
    total = 0
    for shard in _shards_of(s, where):
        with owner(where, shard.keys.stream) as c:
            total += int(c.xpending(shard.keys.stream, s.group)["pending"])
    return total


@contextlib.asynccontextmanager
async def deployed_publisher(settings: Settings) -> AsyncIterator[tuple[Deployment, Publisher]]:
    """A publisher through the deployment ``settings`` point at (a cluster or one server),
    its groups created; the connections closed after."""
    deployment = await open_deployment(settings.redis_url, settings.keys, settings.regions,
                                       settings.shard_by)
    try:
        pub = Publisher(deployment, settings)
        await pub.prepare()
        yield deployment, pub
    finally:
        await deployment.aclose()
