"""Replay of pending messages and dead letters, on real Redis with real processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import signal
import time
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from consumer.ops import replay_range
from consumer.service import Consumer
from producer.synthetic import SyntheticSource
from shared import wire
from shared.connection import connect
from shared.keys import Keys
from shared.metrics import ConsumerMetrics
from shared.schema import Snapshot, encode
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import (
    deployed,
    drain,
    failures,
    now_ms,
    outcomes,
    prepare,
    publish_cycle,
    reclaimer,
    sample,
    stored,
)
from tests.proc import common_flags, run_cli, spawn_cli
from tests.test_chaos import N, finish, kill_while_holding, prefill, settled

MIN_IDLE_MS = 1_000
CLAIM_INTERVAL_MS = 200



async def consumer_pending(client: aioredis.Redis, s: Settings, name: str) -> int:
    for c in await client.xinfo_consumers(s.stream, s.group):
        if c["name"].decode() == name:
            return int(c["pending"])
    return 0


@pytest.mark.chaos
async def test_killed_consumer_is_reclaimed_by_another_within_min_idle(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    await prefill(settings)
    held = await kill_while_holding(settings.redis_url, settings, "victim")
    stored_at_kill = await stored(settings.redis_url, settings)
    started = time.monotonic()
    rescuer = spawn_cli(["consume", "--name", "rescuer", "--workers", "1", "--batch", "50",
                         "--block-ms", "100", "--min-idle-ms", str(MIN_IDLE_MS),
                         "--claim-interval-ms", str(CLAIM_INTERVAL_MS), *common_flags(settings)])

    async def victims_settled() -> bool:
        return (await consumer_pending(client, settings, "victim-0")
                + await consumer_pending(client, settings, "victim-1")) == 0

    await wait_until(victims_settled, what="the victim's entries reclaimed")
    took = time.monotonic() - started
    # min-idle + claim interval, plus the rescuer's start-up and a loaded CI machine's slack
    assert took < (MIN_IDLE_MS + CLAIM_INTERVAL_MS) / 1000 + 5.0, took

    async def all_stored() -> bool:
        info = await client.xpending(settings.stream, settings.group)
        return await stored(settings.redis_url, settings) == N and info["pending"] == 0

    await wait_until(all_stored, what="everything persisted and acked")
    rescuer.send_signal(signal.SIGTERM)
    code, err = await finish(rescuer)
    assert code == 0
    counts = settled(err)
    # none persisted twice: the rescuer wrote exactly what was missing, and recognized the
    # entries the victim had persisted without acking as redeliveries
    assert counts["persisted"] == N - stored_at_kill
    assert counts["redelivered"] <= held
    assert b"reclaimed" in err


async def test_failing_message_dead_lettered_after_exactly_max_deliveries_then_replayed(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    s = dataclasses.replace(settings, max_deliveries=3, retry_backoff_ms=10)
    snaps = await publish_cycle(client, s, now_ms())
    victim = snaps[0]
    await client.hset(keys.index(victim.region_id), "fault", "not a zset")
    consumer = await drain(s)
    assert outcomes(consumer)["dead_lettered"] == 1
    assert outcomes(consumer)["persisted"] == 7
    (dlq_id, fields), = await client.xrange(keys.dlq)
    assert fields[b"dlq_reason"] == b"max-deliveries"
    assert fields[b"dlq_deliveries"] == b"3"
    assert b"WRONGTYPE" in fields[b"dlq_error"]
    assert fields[b"snapshot_id"] == victim.meta.snapshot_id.encode()
    failed = failures(consumer.registry, "persist")
    assert failed == 3  # one per delivery
    # Fix the cause, replay the dead letter: it is persisted.
    await client.delete(keys.index(victim.region_id))
    dry = run_cli(["replay", "--dlq", "--dry-run", "--json", *common_flags(s)])
    assert json.loads(dry.stdout)["entries"][0]["id"] == dlq_id.decode()
    assert await client.xlen(keys.dlq) == 1  # a dry run moves nothing
    done = run_cli(["replay", "--dlq", "--reason", "max-deliveries", "--json",
                    *common_flags(s)])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["entries"][0]["new_id"]
    assert await client.xlen(keys.dlq) == 0
    consumer = await drain(s)
    assert outcomes(consumer)["persisted"] == 1
    assert await client.get(keys.latest(victim.region_id)) == victim.meta.snapshot_id.encode()


async def test_poison_kinds_get_distinct_reasons(client: aioredis.Redis, settings: Settings,
                                                 keys: Keys) -> None:
    import msgspec

    s = dataclasses.replace(settings, max_bytes=20_000)
    snaps = await publish_cycle(client, s, now_ms())
    good = dict((await client.xrange(s.stream, count=1))[0][1])
    mismatch = {**good, b"region": b"europe"}
    huge = {**good, b"payload": b" " * 30_000}
    doc = msgspec.json.decode(good[b"payload"])
    doc["meta"]["snapshot_confidence"] = 7
    invalid = {**good, b"payload": msgspec.json.encode(doc)}
    for f in ({b"schema": b"1"}, mismatch, huge, invalid, {**good, b"encoding": b"gzip"},
              {**good, b"payload": b"\xff\xfe"}):
        await client.xadd(s.stream, f)
    consumer = await drain(s)
    reasons = [f[b"dlq_reason"].decode() for _, f in await client.xrange(keys.dlq)]
    assert reasons == ["missing-payload", "field-mismatch", "too-large", "schema-invalid",
                       "unsupported-encoding", "undecodable"]
    assert outcomes(consumer)["invalid"] == 6 and outcomes(consumer)["persisted"] == 8
    assert len(snaps) == 8


async def test_cleanup_never_deletes_a_consumer_holding_entries(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    await publish_cycle(client, settings, now_ms())
    await prepare(client, settings)
    await client.xgroup_createconsumer(settings.stream, settings.group, "idle-empty")
    await client.xreadgroup(settings.group, "idle-holding", {settings.stream: ">"}, count=2)
    timeout_s = 0.2

    async def both_idle() -> bool:
        idle = {c["name"]: c["idle"] for c in
                await client.xinfo_consumers(settings.stream, settings.group)}
        return min(idle.values()) > timeout_s * 1000

    await wait_until(both_idle, what="consumers idle past the timeout")
    s = dataclasses.replace(settings, consumer_timeout_s=timeout_s)
    assert await reclaimer(client, s, "janitor").forget_dead_consumers() == ["idle-empty"]
    names = [c["name"] for c in await client.xinfo_consumers(settings.stream, settings.group)]
    assert names == [b"idle-holding"]
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 2


async def test_group_deleted_while_consuming_is_recreated(client: aioredis.Redis,
                                                          settings: Settings, keys: Keys) -> None:
    consumer = Consumer(settings, registry=CollectorRegistry())
    task = asyncio.create_task(consumer.run())
    first = await publish_cycle(client, settings, now_ms() - 7_200_000, seed=1)  # own bucket

    async def persisted(n: int) -> bool:
        return outcomes(consumer)["persisted"] >= n

    await wait_until(lambda: persisted(8), what="first cycle persisted")
    await client.xgroup_destroy(settings.stream, settings.group)  # Redis "lost" the group
    second = await publish_cycle(client, settings, now_ms(), seed=2)
    await wait_until(lambda: persisted(16), what="consumption resumed")
    consumer.stop.set()
    await asyncio.wait_for(task, 30)
    assert consumer.registry.get_sample_value("regionstream_nogroup_recoveries_total") >= 1
    for snap in second:
        assert await client.get(keys.latest(snap.region_id)) == snap.meta.snapshot_id.encode()
    assert len(first) == 8


async def test_pending_and_replay_pending_cli(client: aioredis.Redis, settings: Settings,
                                              keys: Keys) -> None:
    await publish_cycle(client, settings, now_ms())
    await prepare(client, settings)
    await client.xreadgroup(settings.group, "dead-host-0", {settings.stream: ">"}, count=5)
    flags = common_flags(settings)
    report = json.loads(run_cli(["pending", "--json", *flags]).stdout)
    assert report["pending"] == 5 and report["lag"] == 3 and report["stream_length"] == 8
    (row,) = report["consumers"]
    assert row["name"] == "dead-host-0" and row["pending"] == 5 and row["max_deliveries"] == 1
    table = run_cli(["pending", *flags])
    assert b"dead-host-0" in table.stdout and table.returncode == 0
    dry = json.loads(run_cli(["replay", "--pending", "--consumer", "dead-host-0",
                              "--min-idle-ms", "0", "--dry-run", "--json", *flags]).stdout)
    assert len(dry["ids"]) == 5
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 5
    done = json.loads(run_cli(["replay", "--pending", "--consumer", "dead-host-0",
                               "--min-idle-ms", "0", "--json", *flags]).stdout)
    assert done["outcomes"] == {"persisted": 5}
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0


async def test_replay_range_is_idempotent(client: aioredis.Redis, settings: Settings,
                                          keys: Keys) -> None:
    from tests.helpers import dump

    await publish_cycle(client, settings, now_ms())
    await drain(settings)
    before = await dump(client, settings.prefix)
    done = json.loads(run_cli(["replay", "--range", "-", "+", "--json",
                               *common_flags(settings)]).stdout)
    assert done["outcomes"] == {"redelivered": 8}, done
    assert await dump(client, settings.prefix) == before
    # history whose keys were lost (say, a restore) is written again from the stream
    await client.delete(*[k for k in before if b":snapshot" in k])
    done = json.loads(run_cli(["replay", "--range", "-", "+", "--json",
                               *common_flags(settings)]).stdout)
    assert done["outcomes"] == {"redelivered": 8}  # markers still within the window...
    await client.delete(*[k for k in before if b":dedup:" in k])
    done = json.loads(run_cli(["replay", "--range", "-", "+", "--json",
                               *common_flags(settings)]).stdout)
    assert done["outcomes"] == {"persisted": 8}  # ...once they are gone too, it is rebuilt
    assert await dump(client, settings.prefix) == before  # rebuilt exactly as it was


async def test_entries_deleted_while_pending_are_counted_and_dropped(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    await publish_cycle(client, settings, now_ms())
    await prepare(client, settings)
    read = await client.xreadgroup(settings.group, "dead", {settings.stream: ">"}, count=8)
    ids = [i for i, _ in read[0][1]]
    await client.xdel(settings.stream, *ids[:3])  # someone trimmed/deleted them meanwhile

    async def idle_enough() -> bool:
        rows = await client.xpending_range(settings.stream, settings.group, "-", "+", 8)
        return min(r["time_since_delivered"] for r in rows) >= 5

    await wait_until(idle_enough, what="entries idle past the minimum")
    s = dataclasses.replace(settings, min_idle_ms=5)
    registry = CollectorRegistry()
    janitor = reclaimer(client, s, "janitor", ConsumerMetrics(registry))
    assert (await janitor.sweep()).read == 5  # its own (empty) pending list, then a claim
    assert sample(registry, "regionstream_lost_trimmed_total") == 3
    assert sample(registry, "regionstream_reclaimed_total") == 5
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0


@pytest.mark.chaos
async def test_connection_kills_lose_nothing(client: aioredis.Redis, settings: Settings,
                                             keys: Keys) -> None:
    """Redis drops every client connection again and again while entries flow: no worker
    dies, and every entry ends persisted and acked."""
    s = dataclasses.replace(settings, workers=3, batch=20)
    consumer = Consumer(s, registry=CollectorRegistry())
    task = asyncio.create_task(consumer.run())  # its own client, as in production
    await prefill(s, n=1000)
    kills = 0
    for _ in range(20):  # bounded chaos: kill all other clients' connections, 20 times
        if await stored(s.redis_url, s) >= 1000:
            break
        kills += int(await client.execute_command("CLIENT", "KILL", "TYPE", "normal",
                                                  "SKIPME", "yes"))
        await wait_until(lambda: _progressed(client, keys, s), what="progress after a kill")

    async def done() -> bool:
        info = await client.xpending(s.stream, s.group)
        return await stored(s.redis_url, s) == 1000 and info["pending"] == 0

    await wait_until(done, what="all entries persisted after the kills")
    assert not task.done(), "the consumer died"
    consumer.stop.set()
    await asyncio.wait_for(task, 30)
    assert kills > 0
    totals = consumer.totals()
    # A batch whose reply was lost with its connection was settled on the server all the same
    # (persisted and acked in one script), so this process could not count it; Redis above is
    # the ground truth: all 1000 stored, nothing pending.
    assert totals["persisted"] + totals["redelivered"] <= 1000
    assert failures(consumer.registry, "transient") > 0


_last_seen: dict[str, int] = {}


async def _progressed(client: aioredis.Redis, keys: Keys, s: Settings) -> bool:
    n = await stored(s.redis_url, s)
    before = _last_seen.get(s.stream, -1)
    _last_seen[s.stream] = max(before, n)
    return n > before or n >= 1000



@pytest.mark.chaos
async def test_busy_redis_is_waited_out(settings: Settings) -> None:
    """A script hogging Redis (every other client gets BUSY) holds the workers back; once it
    is killed they go on, none of them dead, nothing lost."""
    from shared.connection import connect
    from shared.servers import start_redis_server

    with start_redis_server(extra=("--lua-time-limit", "50")) as server:
        s = dataclasses.replace(settings, redis_url=server.url, retry_backoff_ms=20,
                                claim_interval_ms=50)
        consumer = Consumer(s, registry=CollectorRegistry())
        task = asyncio.create_task(consumer.run())
        admin = connect(server.url)
        hog = connect(server.url, retries=0, socket_timeout=None)
        try:
            await publish_cycle(admin, s, now_ms() - 7_200_000, seed=1)
            await wait_until(lambda: _persisted(consumer, 8), what="first cycle")
            busy = asyncio.create_task(hog.eval("while true do end", 0))

            async def refused() -> bool:
                value = failures(consumer.registry, "transient")
                return bool(value)

            await wait_until(refused, what="workers refused with BUSY")
            await admin.script_kill()
            with pytest.raises(ResponseError, match=r"[Kk]illed"):
                await busy
            await publish_cycle(admin, s, now_ms(), seed=2)
            await wait_until(lambda: _persisted(consumer, 16), what="consumption after BUSY")
            assert not task.done(), "a worker died"
        finally:
            consumer.stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await admin.aclose()
            await hog.aclose()


async def _persisted(consumer: Consumer, n: int) -> bool:
    return consumer.totals()["persisted"] >= n


async def _one_cycle_on_the_stream(client: aioredis.Redis, s: Settings) -> list[Snapshot]:
    await prepare(client, s)
    snaps = SyntheticSource(s.regions, seed=3).cycle(now_ms())
    for snap in snaps:
        await client.xadd(s.stream, wire.entry_fields(snap, encode(snap)))
    return snaps


async def test_replay_range_reports_a_refused_persist_and_goes_on(
        client: aioredis.Redis, settings: Settings) -> None:
    """A user that may not run the persist script: every entry is reported failed, the
    replay goes through the whole range and returns its report (the settle pipeline's stop on
    a refusal no retry fixes belongs to consuming, where entries stay pending; a range replay
    acknowledges nothing and had stopped on the first page, reporting nothing done)."""
    await _one_cycle_on_the_stream(client, settings)
    user = f"u-{uuid.uuid4().hex[:10]}"
    await client.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["~*"],
                             channels=["&*"], commands=["+@all", "-evalsha", "-evalsha_ro"])
    url = settings.redis_url.replace("redis://", f"redis://{user}:pw@")
    limited = connect(url)
    try:
        s = dataclasses.replace(settings, redis_url=url)
        done = await replay_range(deployed(limited, s), s.keys, s, start="-", end="+",
                                  dry_run=False)
    finally:
        await limited.aclose()
        await client.acl_deluser(user)
    assert (done.entries, done.outcomes) == (8, {"failed": 8})


async def test_replay_range_says_nothing_but_its_report(
        client: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A persist that fails (one region's index of the wrong type): the report counts it;
    no consumer log line ("persisting ... failed", "they stay pending") is written for a
    replay that retries and acknowledges nothing."""
    snaps = await _one_cycle_on_the_stream(client, settings)
    await client.set(settings.keys.index(snaps[0].region_id), b"not a zset")
    caplog.set_level(logging.DEBUG, logger="regionstream")
    done = await replay_range(deployed(client, settings), settings.keys, settings, start="-",
                              end="+", dry_run=False)
    assert done.outcomes == {"failed": 1, "persisted": 7}
    assert [r.getMessage() for r in caplog.records] == []
