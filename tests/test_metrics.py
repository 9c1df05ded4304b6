"""Metric definitions and the group gauges, read from a known state of a real Redis."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import shutil
import subprocess
import time

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, generate_latest

from producer.service import Producer
from shared import group
from shared.group import read_group_stats
from shared.group_metrics import refresh, refresh_forever, start_group_gauges
from shared.keys import Keys
from shared.metrics import (
    CONSUMER_OUTCOMES,
    FAILURE_KINDS,
    REDIS_OPS,
    ConsumerMetrics,
    GroupMetrics,
    ProducerMetrics,
    build_info,
    producer_cadence,
)
from shared.schema import REGIONS
from shared.servers import free_port
from shared.settings import Settings
from shared.shards import single_server
from tests.conftest import wait_until
from tests.helpers import deployed, drain, publish_cycle

GHOST_READ = 3  # entries a never-acking consumer takes, so they stay pending


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    v = registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v


def full_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ConsumerMetrics(registry)
    ProducerMetrics(registry)
    GroupMetrics(registry, "snapshots", "persisters")
    producer_cadence(registry, 21600)
    build_info(registry, "0.0.0")
    return registry


def test_every_labelled_series_exists_before_any_work() -> None:
    registry = full_registry()
    for region in (*REGIONS, "unknown"):
        for outcome in CONSUMER_OUTCOMES:
            assert value(registry, "regionstream_messages_total",
                         region=region, outcome=outcome) == 0
    for region in REGIONS:
        assert value(registry, "regionstream_published_total", region=region) == 0
    for op in REDIS_OPS:
        assert value(registry, "regionstream_redis_roundtrip_seconds_count", operation=op) == 0
    assert value(registry, "regionstream_build_info", version="0.0.0") == 1
    assert value(registry, "regionstream_producer_interval_seconds") == 21600


def failure_labels(registry: CollectorRegistry) -> set[tuple[str, str]]:
    """(shard, kind) of every ``regionstream_failures_total`` series of ``registry``."""
    return {(x.labels["shard"], x.labels["kind"]) for m in registry.collect() for x in m.samples
            if x.name == "regionstream_failures_total"}


def test_failure_series_are_made_per_shard_served() -> None:
    """No shard's failure series before a worker of that shard asks for them; then every kind
    of that shard at 0, and of no other; a shard label that cannot exist is a bug."""
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)
    assert failure_labels(registry) == set()
    children = metrics.failure["all"]
    assert metrics.failure["all"] is children  # made once
    assert failure_labels(registry) == {("all", k) for k in FAILURE_KINDS}
    for kind in FAILURE_KINDS:
        assert value(registry, "regionstream_failures_total", kind=kind, shard="all") == 0
    metrics.failure[REGIONS[0]]["persist"].inc()
    assert value(registry, "regionstream_failures_total", kind="persist",
                 shard=REGIONS[0]) == 1
    assert {s for s, _ in failure_labels(registry)} == {"all", REGIONS[0]}
    with pytest.raises(KeyError):
        metrics.failure["mars"]


def sample_lines(registry: CollectorRegistry) -> list[str]:
    return [ln for ln in generate_latest(registry).decode().splitlines()
            if not ln.startswith("#")]


async def test_no_created_series_from_a_consumer_or_a_producer(
        client: aioredis.Redis, settings: Settings) -> None:
    """prometheus-client's ``*_created`` series (one per counter and histogram child) roughly
    doubled what a process exports: none, from the registries the commands make, after real
    work (counters and histograms observed)."""
    producer_registry = CollectorRegistry()
    await Producer(settings, registry=producer_registry).run(deployed(client, settings),
                                                               once=True)
    consumer = await drain(settings)
    assert consumer.totals()["persisted"] == len(REGIONS)
    assert value(consumer.registry, "regionstream_end_to_end_latency_seconds_count") == len(
        REGIONS)
    assert value(producer_registry, "regionstream_published_total", region=REGIONS[0]) == 1
    for registry in (consumer.registry, producer_registry, full_registry()):
        lines = sample_lines(registry)
        assert lines and not [ln for ln in lines if "_created" in ln]


@pytest.mark.parametrize("shard_by, served", [("none", ()), ("region", REGIONS[:2])],
                         ids=["one-stream", "two-region-shards"])
async def test_a_consumer_exports_failures_of_its_shards_only(
        client: aioredis.Redis, settings: Settings, shard_by: str,
        served: tuple[str, ...]) -> None:
    """A consumer on one stream exports ``regionstream_failures_total`` with shard="all"
    only (not 9 shards x every kind); one serving two region shards, those two."""
    s = dataclasses.replace(settings, shard_by=shard_by, shards=served)
    await Producer(s).run(deployed(client, dataclasses.replace(s, shards=())), once=True)
    consumer = await drain(s)
    assert consumer.totals()["persisted"] == len(served or REGIONS)
    assert failure_labels(consumer.registry) == {
        (shard, kind) for shard in (served or ("all",)) for kind in FAILURE_KINDS}
    assert len([ln for ln in sample_lines(consumer.registry)
                if ln.startswith("regionstream_failures_total{")]) == len(
                    served or ("all",)) * len(FAILURE_KINDS)


def test_group_gauges_are_unknown_until_read_from_redis() -> None:
    registry = CollectorRegistry()
    GroupMetrics(registry, "s", "g")
    for name in ("group_lag", "group_pending", "group_oldest_pending_age_seconds",
                 "group_consumers", "group_active_consumers"):
        assert math.isnan(value(registry, f"regionstream_{name}", stream="s", group="g",
                                shard="all"))
    assert math.isnan(value(registry, "regionstream_dlq_length", stream="s", shard="all"))


def test_names_pass_promtool_lint() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (make test installs prometheus)", pytrace=False)
    text = generate_latest(full_registry())
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    names = [ln.split()[2] for ln in text.decode().splitlines() if ln.startswith("# TYPE")]
    assert all(n.startswith("regionstream_") for n in names)


def test_one_roundtrip_histogram_per_registry() -> None:
    registry = CollectorRegistry()
    consumer = ConsumerMetrics(registry)
    # The demo runs producer and consumer on one registry: a second definition would raise.
    producer = ProducerMetrics(registry)
    group = GroupMetrics(registry, "s", "g")
    group.rtt.observe(0.01)
    assert consumer.rtt["group_info"] is group.rtt is producer.rtt["group_info"]
    assert value(registry, "regionstream_redis_roundtrip_seconds_count",
                 operation="group_info") == 1


async def known_state(client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """8 entries on the stream, 3 of them pending on a consumer that never acks, 2 dead
    letters."""
    await publish_cycle(client, settings, now_ms=int(time.time() * 1000))
    await client.xreadgroup(keys.group, "ghost", {keys.stream: ">"}, count=GHOST_READ)
    for n in range(2):
        await client.xadd(keys.dlq, {b"reason": b"undecodable", b"n": str(n).encode()})


async def test_gauges_from_a_known_redis_state(client: aioredis.Redis, settings: Settings,
                                               keys: Keys) -> None:
    await known_state(client, settings, keys)
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, keys.stream, keys.group)
    assert await refresh(deployed(client, settings), metrics)

    def gauge(name: str) -> float:
        return value(registry, f"regionstream_{name}", stream=keys.stream, group=keys.group,
                     shard="all")

    assert gauge("group_lag") == len(REGIONS) - GHOST_READ
    assert gauge("group_pending") == GHOST_READ
    assert gauge("group_consumers") == 1
    assert gauge("group_active_consumers") == 1
    assert gauge("group_oldest_pending_age_seconds") >= 0  # XADDed just now, by Redis's clock
    assert value(registry, "regionstream_stream_length", stream=keys.stream,
                 shard="all") == len(REGIONS)
    assert value(registry, "regionstream_dlq_length", stream=keys.stream, shard="all") == 2
    assert value(registry, "regionstream_group_last_refresh_timestamp_seconds",
                 shard="all") > 0
    assert value(registry, "regionstream_redis_roundtrip_seconds_count",
                 operation="group_info") == 1


async def test_stats_per_consumer_and_idle_consumers(client: aioredis.Redis, settings: Settings,
                                                     keys: Keys,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    await known_state(client, settings, keys)
    stats = await read_group_stats(client, keys)
    assert [(c.name, c.pending) for c in stats.consumers] == [("ghost", GHOST_READ)]
    assert stats.entries_added == len(REGIONS) and stats.entries_read == GHOST_READ
    assert stats.dlq_added == 2
    # A consumer idle past the threshold is known but not active (a SIGKILLed worker).
    monkeypatch.setattr(group, "ACTIVE_CONSUMER_IDLE_S", 0.0)
    assert stats.active_consumers == 0


async def test_missing_stream_reads_as_no_consumers(client: aioredis.Redis, settings: Settings,
                                                    keys: Keys) -> None:
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, keys.stream, keys.group)
    assert await refresh(deployed(client, settings), metrics)
    labels = {"stream": keys.stream, "group": keys.group, "shard": "all"}
    assert value(registry, "regionstream_group_consumers", **labels) == 0
    assert value(registry, "regionstream_group_active_consumers", **labels) == 0
    assert math.isnan(value(registry, "regionstream_group_lag", **labels))


async def test_redis_error_is_counted_and_gauges_keep_their_value(keys: Keys) -> None:
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, keys.stream, keys.group)
    metrics.shard["all"].pending.set(7)
    url = f"redis://127.0.0.1:{free_port()}/0"
    dead = aioredis.from_url(url, socket_connect_timeout=1)
    try:
        assert not await refresh(single_server(url, dead, keys, REGIONS), metrics)
    finally:
        await dead.aclose()
    assert value(registry, "regionstream_group_refresh_errors_total") == 1
    assert value(registry, "regionstream_group_pending", stream=keys.stream,
                 group=keys.group, shard="all") == 7


async def test_refresher_reads_at_once_and_stops_on_the_event(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, keys.stream, keys.group)
    stop = asyncio.Event()
    stop.set()  # already stopping: exactly one refresh, then return without waiting
    await asyncio.wait_for(
        refresh_forever(deployed(client, settings), metrics, stop, every=3600), 10)
    assert value(registry, "regionstream_group_last_refresh_timestamp_seconds",
                 shard="all") > 0


@pytest.mark.parametrize("given", [True, False], ids=["the-commands-deployment", "its-own"])
async def test_background_task_of_the_cli(client: aioredis.Redis, settings: Settings,
                                          keys: Keys, given: bool) -> None:
    await known_state(client, settings, keys)
    registry = CollectorRegistry()
    stop = asyncio.Event()
    task = start_group_gauges(settings, registry, stop,
                              deployment=deployed(client, settings) if given else None)

    async def refreshed() -> bool:
        return registry.get_sample_value("regionstream_group_pending",
                                         {"stream": keys.stream, "group": keys.group,
                                          "shard": "all"}) == 3

    try:
        await wait_until(refreshed, within=10, what="the group gauges to be read")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_gauges_through_a_shard_subset_deployment_cover_every_shard(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """A consumer's deployment holds its --shards only: the gauges it serves read every shard
    (a shard nobody serves must show) through that deployment's clients, and leave them
    open (they are the command's)."""
    s = dataclasses.replace(settings, shard_by="region", shards=settings.regions[:1])
    subset = deployed(client, s)
    assert [x.label for x in subset.shards] == [settings.regions[0]]
    await Producer(s).run(deployed(client, dataclasses.replace(s, shards=())), once=True)
    registry, stop = CollectorRegistry(), asyncio.Event()
    task = start_group_gauges(s, registry, stop, deployment=subset)

    async def every_shard() -> bool:
        return all(registry.get_sample_value("regionstream_stream_length",
                                             {"stream": keys.stream, "shard": r}) == 1
                   for r in s.regions)

    try:
        await wait_until(every_shard, within=10, what="every shard's gauges")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert await client.ping()


async def test_gauges_per_region_shard(client: aioredis.Redis, settings: Settings,
                                       keys: Keys) -> None:
    """--shard-by region: one series per shard, each read from that shard's own stream (the
    base stream name as ``stream``, the region as ``shard``); nothing for shard "all"."""
    s = dataclasses.replace(settings, shard_by="region")
    deployment = deployed(client, s)
    await Producer(s).run(deployment, once=True)
    busy = deployment.shards[0]
    await client.xreadgroup(keys.group, "ghost", {busy.keys.stream: ">"})
    await client.xadd(deployment.shards[1].keys.dlq, {b"reason": b"undecodable"})
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, keys.stream, keys.group, [x.label for x in deployment.shards])
    assert await refresh(deployment, metrics)

    def gauge(name: str, shard: str) -> float:
        return value(registry, f"regionstream_{name}", stream=keys.stream, group=keys.group,
                     shard=shard)

    for i, shard in enumerate(deployment.shards):
        assert value(registry, "regionstream_stream_length", stream=keys.stream,
                     shard=shard.label) == 1
        assert gauge("group_pending", shard.label) == (1 if i == 0 else 0)
        assert gauge("group_lag", shard.label) == (0 if i == 0 else 1)
        assert gauge("group_consumers", shard.label) == (1 if i == 0 else 0)
        assert value(registry, "regionstream_dlq_length", stream=keys.stream,
                     shard=shard.label) == (1 if i == 1 else 0)
    assert registry.get_sample_value("regionstream_group_lag", {
        "stream": keys.stream, "group": keys.group, "shard": "all"}) is None


def test_observe_many_exposes_exactly_what_observe_does() -> None:
    """The consumer's batched histogram update must be indistinguishable, in the exposition,
    from one observe() per value: every bound hit exactly, below the first, past the last."""
    from prometheus_client import Histogram

    from shared.metrics import LATENCY_BUCKETS, observe_many

    values = [0.0, 0.0004, *LATENCY_BUCKETS, *(b * 1.01 for b in LATENCY_BUCKETS), 1e9, 0.003]
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    h1 = Histogram("lat", "x", registry=one_by_one, buckets=LATENCY_BUCKETS)
    h2 = Histogram("lat", "x", registry=batched, buckets=LATENCY_BUCKETS)
    for v in values:
        h1.observe(v)
    observe_many(h2, values[:7])
    observe_many(h2, values[7:])
    observe_many(h2, [])

    def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {(x.name, x.labels.get("le", "")): x.value for m in registry.collect()
                for x in m.samples if not x.name.endswith("_created")}

    expected, got = samples(one_by_one), samples(batched)
    # the sum is added up in another order (exactly, with fsum): equal to rounding
    assert got.pop(("lat_sum", "")) == pytest.approx(expected.pop(("lat_sum", "")), rel=1e-12)
    assert got == expected  # every bucket and the count exactly
    assert value(batched, "lat_count") == len(values)


async def test_a_shard_that_cannot_be_read_shows_as_stale(
        client: aioredis.Redis, settings: Settings, keys: Keys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Freshness is per shard: a shard whose read fails keeps its old refresh time (and its
    old values) while the others move on, and the failure is counted."""
    import shared.group_metrics as gm

    s = dataclasses.replace(settings, shard_by="region")
    deployment = deployed(client, s)
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, keys.stream, keys.group, [x.label for x in deployment.shards])
    assert await refresh(deployment, metrics)
    first = {x.label: value(registry, "regionstream_group_last_refresh_timestamp_seconds",
                            shard=x.label) for x in deployment.shards}
    broken = deployment.shards[0]
    real = gm.read_group_stats

    async def failing(redis: aioredis.Redis, k: Keys, **options: bool) -> group.GroupStats:
        if k == broken.keys:
            raise ConnectionError("node unreachable")
        return await real(redis, k, **options)

    monkeypatch.setattr(gm, "read_group_stats", failing)
    assert not await refresh(deployment, metrics)
    for x in deployment.shards:
        now = value(registry, "regionstream_group_last_refresh_timestamp_seconds",
                    shard=x.label)
        assert (now == first[x.label]) if x is broken else (now > first[x.label]), x.label
    assert value(registry, "regionstream_group_refresh_errors_total") == 1


async def test_refresh_errors_are_exported_and_counted_before_redis_answers(
        settings: Settings) -> None:
    s = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    registry, stop = CollectorRegistry(), asyncio.Event()
    task = start_group_gauges(s, registry, stop)
    assert value(registry, "regionstream_group_refresh_errors_total") == 0  # first scrape

    async def counted() -> bool:
        return (registry.get_sample_value("regionstream_group_refresh_errors_total") or 0) >= 1

    try:
        await wait_until(counted, within=20, what="the failed connection counted")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
