"""The core pipeline on a real Redis: produce -> stream -> group -> store."""

from __future__ import annotations

import asyncio
import logging
import re

import msgspec
import pytest
import redis.asyncio as aioredis
from msgspec.structs import replace
from prometheus_client import CollectorRegistry

from consumer.service import Consumer
from producer.synthetic import SyntheticSource
from shared.keys import Keys
from shared.schema import REGIONS
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import drain, dump, failures, now_ms, outcomes, publish, publish_cycle


async def test_one_cycle_lands_every_region(client: aioredis.Redis, settings: Settings,
                                            keys: Keys) -> None:
    snaps = await publish_cycle(client, settings, now_ms())
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == len(REGIONS) == 8
    for snap in snaps:
        r, sid = snap.region_id, snap.meta.snapshot_id
        assert await client.get(keys.latest(r)) == sid.encode()
        assert await client.zrange(keys.index(r), 0, -1, withscores=True) == [
            (sid.encode(), float(snap.generated_at))]
        stored = await client.get(keys.by_id(r, sid))
        assert stored is not None and msgspec.json.decode(stored)["meta"]["snapshot_id"] == sid
        ttl = await client.ttl(keys.by_id(r, sid))
        assert settings.retention_s - 60 < ttl <= settings.retention_s
        bucket = snap.generated_at // settings.dedup_window_ms
        marker = keys.dedup(r, snap.meta.trigger_reason, bucket)
        assert await client.get(marker) == sid.encode()
        # until the end of its bucket + retention: a duplicate however late finds it
        assert await client.pexpiretime(marker) == (
            (bucket + 1) * settings.dedup_window_ms + settings.retention_ms)
    byid = [k async for k in client.scan_iter(match=f"{settings.prefix}:snapshot-by-id:*")]
    assert len(byid) == 8
    info = await client.xinfo_groups(settings.stream)
    assert info[0]["pending"] == 0 and info[0]["lag"] == 0


async def test_same_cycle_again_writes_nothing_and_counts_redelivered(
        client: aioredis.Redis, settings: Settings) -> None:
    snaps = await publish_cycle(client, settings, now_ms())
    await drain(settings)
    before = await dump(client, settings.prefix)
    await publish(client, settings, snaps)  # a producer retry: the same entries again
    consumer = await drain(settings)
    assert outcomes(consumer)["redelivered"] == 8
    assert outcomes(consumer)["persisted"] == 0
    assert await dump(client, settings.prefix) == before


async def test_different_snapshot_in_taken_bucket_is_a_duplicate(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    # Both cycles at the start of one dedup bucket, the second with other snapshot ids but the
    # first's trigger per region: every one of the 8 is a duplicate, whatever the clock says
    # (two cycles 1 ms apart straddled a bucket boundary once in a while, and a filtered list
    # could come out empty and pass vacuously).
    t = now_ms() // settings.dedup_window_ms * settings.dedup_window_ms
    first = await publish_cycle(client, settings, t, seed=1)
    others = SyntheticSource(settings.regions, seed=2).cycle(t + 1)
    second = [replace(o, meta=replace(o.meta, trigger_reason=f.meta.trigger_reason))
              for f, o in zip(first, others, strict=True)]
    assert len(second) == 8
    assert all(s.meta.snapshot_id != f.meta.snapshot_id
               for s, f in zip(second, first, strict=True))
    await publish(client, settings, second)
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == 8
    assert outcomes(consumer)["duplicate"] == 8
    for f, s in zip(first, second, strict=True):
        assert not await client.exists(keys.by_id(s.region_id, s.meta.snapshot_id))
        assert await client.get(keys.latest(f.region_id)) == f.meta.snapshot_id.encode()


async def test_older_snapshot_never_becomes_latest(client: aioredis.Redis, settings: Settings,
                                                   keys: Keys) -> None:
    t = now_ms()
    newer = await publish_cycle(client, settings, t, seed=3)
    await drain(settings)
    older = await publish_cycle(client, settings, t - 3_600_000, seed=4)  # an hour earlier
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == 8
    for n, o in zip(newer, older, strict=True):
        assert await client.get(keys.latest(n.region_id)) == n.meta.snapshot_id.encode()
        # ...but the older one is stored and indexed
        assert await client.zscore(keys.index(o.region_id), o.meta.snapshot_id) == o.generated_at
        assert await client.exists(keys.by_id(o.region_id, o.meta.snapshot_id))


async def test_older_and_newer_in_one_batch_latest_is_newest(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    t = now_ms()
    newer = await publish_cycle(client, settings, t, seed=5)
    await publish_cycle(client, settings, t - 7_200_000, seed=6)  # published after, older
    await drain(settings)
    for n in newer:
        assert await client.get(keys.latest(n.region_id)) == n.meta.snapshot_id.encode()
        assert await client.zcard(keys.index(n.region_id)) == 2


async def test_failed_write_leaves_no_marker_and_heals_on_redelivery(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    snaps = await publish_cycle(client, settings, now_ms())
    victim = snaps[0]
    r, sid = victim.region_id, victim.meta.snapshot_id
    await client.hset(keys.index(r), "fault", "index key holds a hash, not a zset")
    consumer_task = await _consume_until_failed_once(client, settings)
    marker = keys.dedup(r, victim.meta.trigger_reason,
                        victim.generated_at // settings.dedup_window_ms)
    assert not await client.exists(marker), "marker written although the data write failed"
    assert await client.get(keys.latest(r)) is None
    info = await client.xpending(settings.stream, settings.group)
    assert info["pending"] == 1  # the failed entry stays pending, nothing else
    # The other regions went through meanwhile.
    for s in snaps[1:]:
        assert await client.get(keys.latest(s.region_id)) == s.meta.snapshot_id.encode()
    await client.delete(keys.index(r))  # the fault is removed
    consumer = await consumer_task
    assert await client.get(keys.latest(r)) == sid.encode()
    assert await client.get(marker) == sid.encode()
    assert outcomes(consumer)["persisted"] == 8


async def _consume_until_failed_once(client: aioredis.Redis, settings: Settings):  # type: ignore[no-untyped-def]
    """Start a draining consumer; return its task once it has failed the victim once."""
    import asyncio

    from prometheus_client import CollectorRegistry

    from consumer.service import Consumer
    from tests.conftest import wait_until

    consumer = Consumer(settings, registry=CollectorRegistry())
    task = asyncio.create_task(consumer.run(drain=True))

    async def failed() -> bool:
        value = failures(consumer.registry, "persist")
        return bool(value)

    await wait_until(failed, what="a persist failure")

    async def finish() -> object:
        await asyncio.wait_for(task, 30)
        return consumer

    return asyncio.ensure_future(finish())


async def test_poison_goes_to_dlq_and_neighbours_persist(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    snaps = await publish_cycle(client, settings, now_ms())
    await client.xadd(settings.stream, {"region": "mena", "schema": "1", "payload": b"{not json"})
    await client.xadd(settings.stream, {"region": "mena", "schema": "1", "payload": b'{"a":1}'})
    await client.xadd(settings.stream, {"region": "mena", "schema": "99", "payload": b"{}"})
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == 8
    assert outcomes(consumer)["invalid"] == 3
    dlq = await client.xrange(keys.dlq)
    reasons = [fields[b"dlq_reason"] for _, fields in dlq]
    assert reasons == [b"undecodable", b"schema-invalid", b"unsupported-schema"]
    assert all(fields[b"dlq_group"] == settings.group.encode() for _, fields in dlq)
    assert dlq[0][1][b"payload"] == b"{not json"  # the original fields travel along
    for s in snaps:
        assert await client.get(keys.latest(s.region_id)) == s.meta.snapshot_id.encode()


async def test_a_running_consumer_says_what_it_settled_duplicates_apart(
        client: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """The dedup rule made visible: a producer publishing other snapshots into taken dedup
    buckets is not a consumer storing nothing; its periodic lines count the duplicates apart,
    with their rate."""
    caplog.set_level(logging.INFO, logger="regionstream.consumer")
    snaps = await publish_cycle(client, settings, now_ms(), seed=1)
    consumer = Consumer(settings, registry=CollectorRegistry(), progress_every_s=0.05)
    task = asyncio.create_task(consumer.run())

    def said(outcome: str) -> int:
        lines = [r.getMessage() for r in caplog.records
                 if r.getMessage().startswith("settled in the last")]
        return sum(int(m) for line in lines for m in re.findall(rf"\b{outcome}=(\d+)", line))

    async def all_said(outcome: str, n: int) -> bool:
        return said(outcome) == n

    await wait_until(lambda: all_said("persisted", 8), what="the first cycle said")
    # Other snapshots (new ids) of the same regions, triggers and 15-minute buckets.
    await publish(client, settings, [replace(s, meta=replace(
        s.meta, snapshot_id=s.meta.snapshot_id[:13] + "f" * 12)) for s in snaps])
    await wait_until(lambda: all_said("duplicate", 8), what="the repeat said as duplicates")
    consumer.stop.set()
    await asyncio.wait_for(task, 30)
    assert said("persisted") == 8 and outcomes(consumer)["duplicate"] == 8
    line = next(r.getMessage() for r in caplog.records if "duplicate=" in r.getMessage())
    assert "/s)" in line and "dedup window" in line, line
