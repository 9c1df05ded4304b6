"""Hostile round 2 (issue 17), the consumer's side: batch sizes past Lua's limits, entries of
regions a consumer does not serve, Redis full or evicting, the group lost, lag Redis gets
wrong, entries with ids ahead of the clock. Each test fails without its fix."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from consumer.dead_letters import original_fields
from consumer.service import Consumer
from producer.synthetic import SyntheticSource
from shared import wire
from shared.connection import connect
from shared.group import read_group_stats
from shared.group_metrics import refresh
from shared.ids import next_id
from shared.metrics import GroupMetrics, ProducerMetrics
from shared.schema import REGIONS, encode
from shared.servers import start_redis_server
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import (
    deployed,
    drain,
    failures,
    now_ms,
    outcomes,
    prepare,
    publish,
    publish_cycle,
    publisher,
)
from tests.proc import Proc, cli_env, one_line, run_cli


def counted(registry: CollectorRegistry, region: str, outcome: str) -> float:
    return registry.get_sample_value("regionstream_messages_total",
                                     {"region": region, "outcome": outcome}) or 0.0


async def test_a_batch_of_9000_entries_of_one_region_is_stored_once_and_acknowledged(
        client: aioredis.Redis, settings: Settings) -> None:
    """Lua's unpack() fails near 8,000 values: a batch over 8,000 entries of one region failed
    in persist.lua after writing, every retry, and the stored snapshots were dead-lettered as
    max-deliveries. Persist calls are bounded per call now, whatever --batch is."""
    one = dataclasses.replace(settings, regions=("mena",), batch=9_000, max_deliveries=1)
    src, base = SyntheticSource(("mena",), seed=5), now_ms()
    snaps = [src.snapshot_for_count(i, base) for i in range(9_000)]
    for at in range(0, len(snaps), 1_000):
        await publish(client, one, snaps[at:at + 1_000])
    consumer = await drain(one)
    done = outcomes(consumer)
    assert done["persisted"] == 9_000, done
    assert done["dead_lettered"] == 0 and failures(consumer.registry, "persist") == 0
    assert await client.zcard(one.keys.index("mena")) == 9_000
    assert await client.xlen(one.keys.dlq) == 0


async def test_entries_of_regions_a_subset_consumer_does_not_serve_never_crash_it(
        client: aioredis.Redis, settings: Settings) -> None:
    """``consume --regions mena,europe`` on a stream of all 8 regions raised
    KeyError('east-asia', 'dead_lettered') on the first other entry, at every restart."""
    await publish_cycle(client, settings, now_ms())
    subset = dataclasses.replace(settings, regions=("mena", "europe"))
    consumer = await drain(subset)
    assert outcomes(consumer)["persisted"] == 2
    assert outcomes(consumer)["dead_lettered"] == 6
    for region in REGIONS:
        expected = (1.0, 0.0) if region in subset.regions else (0.0, 1.0)
        assert (counted(consumer.registry, region, "persisted"),
                counted(consumer.registry, region, "dead_lettered")) == expected, region


async def test_a_stray_entry_on_a_region_shard_is_dead_lettered_not_a_crash(
        client: aioredis.Redis, settings: Settings) -> None:
    """A region-shard consumer serving one shard meets an entry of another region in it."""
    sharded = dataclasses.replace(settings, shard_by="region", shards=("mena",))
    stray = SyntheticSource(("east-asia",), seed=3).cycle(now_ms())[0]
    own = SyntheticSource(("mena",), seed=3).cycle(now_ms())[0]
    shard = sharded.keys.shard("mena")
    for snap in (stray, own):
        await client.xadd(shard.stream, wire.entry_fields(snap, encode(snap)))
    consumer = Consumer(sharded, registry=CollectorRegistry())
    await asyncio.wait_for(consumer.run(drain=True), 60)
    assert outcomes(consumer)["persisted"] == 1
    assert outcomes(consumer)["dead_lettered"] == 1
    assert counted(consumer.registry, "east-asia", "dead_lettered") == 1.0
    assert await client.xlen(shard.dlq) == 1
    await client.delete(shard.stream, shard.dlq)


async def _used_memory(client: aioredis.Redis) -> int:
    info = await client.info("memory")
    return int(info["used_memory"])


async def test_redis_full_spends_no_deliveries_and_is_said_once_per_episode(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """Redis at maxmemory with noeviction refuses every write ("OOM command not allowed"):
    valid snapshots spent their delivery budget on those refusals and were dead-lettered as
    max-deliveries, with an ERROR line per entry and retry. Now they stay pending, nothing is
    spent, one line says it began and one that it ended, failures{kind="oom"} counts it."""
    with start_redis_server(extra=("--maxmemory-policy", "noeviction")) as server:
        s = dataclasses.replace(settings, redis_url=server.url, max_deliveries=2,
                                retry_backoff_ms=20)
        client = connect(server.url)
        try:
            snaps = await publish_cycle(client, s, now_ms())
            await client.config_set("maxmemory", "1")  # every write refused
            consumer = Consumer(s, registry=CollectorRegistry())
            task = asyncio.create_task(consumer.run(drain=True))
            # Many refusals: far more attempts than max_deliveries would have allowed.
            await wait_until(lambda: _async(failures(consumer.registry, "oom") >= 8 * 6))
            assert outcomes(consumer)["dead_lettered"] == 0
            await client.config_set("maxmemory", "0")
            await asyncio.wait_for(task, 60)
        finally:
            await client.aclose()
    done = outcomes(consumer)
    assert done["persisted"] == len(snaps) and done["dead_lettered"] == 0, done
    said = [r.getMessage() for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(said) == 2, said  # began, ended
    assert "Redis is out of memory" in said[0] and "accepts writes again" in said[1]
    assert not [r for r in caplog.records if r.levelname == "ERROR"
                and "persisting" in r.getMessage()]


async def _async(value: bool) -> bool:
    return value


async def test_drain_ends_and_lag_is_0_after_the_newest_entry_is_deleted(
        client: aioredis.Redis, settings: Settings) -> None:
    """XDEL of the stream's newest entry makes Redis report the group's lag as nil: the drain
    never exited and the lag gauge stayed NaN."""
    await publish_cycle(client, settings, now_ms())
    (newest, _), = await client.xrevrange(settings.stream, count=1)
    assert await client.xdel(settings.stream, newest) == 1
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == 7
    (raw,) = await client.xinfo_groups(settings.stream)
    assert raw["lag"] is None  # what Redis says: the case this test is about
    stats = await read_group_stats(client, settings.keys)
    assert stats.lag == 0 and stats.drained


async def test_a_wrong_lag_from_redis_does_not_make_a_drained_group_look_behind(
        client: aioredis.Redis, settings: Settings) -> None:
    """After failovers Redis's lag (entries-added minus entries-read) was wrong outright: 20
    and 32 on cluster shards whose cursor was at the last entry, 990 after a Sentinel
    fail-back. ENTRIESREAD makes the same state here: drained, and Redis says lag 8."""
    await publish_cycle(client, settings, now_ms())
    await drain(settings)
    await client.execute_command("XGROUP", "SETID", settings.stream, settings.group, "$",
                                 "ENTRIESREAD", 0)
    (raw,) = await client.xinfo_groups(settings.stream)
    assert raw["lag"] == 8  # Redis's estimate, wrong: every entry was delivered and acked
    stats = await read_group_stats(client, settings.keys)
    assert stats.lag == 0 and stats.drained
    started = time.monotonic()
    await drain(settings)  # it would wait forever on a lag of 8
    assert time.monotonic() - started < 10
    await publish_cycle(client, settings, now_ms() + 1)  # past the cursor: lag again
    stats = await read_group_stats(client, settings.keys)
    assert stats.lag is not None and stats.lag >= 1 and not stats.drained


@pytest.mark.parametrize("policy", ["volatile-lru", "allkeys-lru"])
def test_writers_refuse_a_redis_that_may_evict_unless_told(policy: str) -> None:
    """Nothing read maxmemory-policy: with volatile-lru and memory full, 1,355 of 2,000 stored
    snapshots were then gone (drain said persisted=2000, exit 0); with allkeys-lru the stream
    was evicted with its group. Every writing command refuses such a server with one line
    (exit 3), unless --allow-eviction says the loss is accepted."""
    with start_redis_server(extra=("--maxmemory-policy", policy)) as server:
        flags = ["--redis-url", server.url, "--stream", f"ev-{policy}", "--prefix", "ev"]
        for command in (["produce", "--once"], ["consume", "--drain"], ["replay", "--dlq"]):
            line = one_line(run_cli([*command, *flags]), 3)
            assert line == (
                f"regionstream: Redis at {server.url} has maxmemory-policy {policy}: when full "
                "it deletes keys (stored snapshots, or the stream with its group and pending "
                "entries); set maxmemory-policy noeviction, or pass --allow-eviction "
                "(REGIONSTREAM_ALLOW_EVICTION=1) to accept losing data"), command
        produced = run_cli(["produce", "--once", "--allow-eviction", *flags])
        assert produced.returncode == 0, produced.stderr.decode()[-2000:]
        assert f"maxmemory-policy {policy}" in produced.stderr.decode()  # said, not silent
        dry = run_cli(["replay", "--dlq", "--dry-run", *flags])  # writes nothing: allowed
        assert dry.returncode == 0, dry.stderr.decode()[-2000:]
        env = cli_env() | {"REGIONSTREAM_ALLOW_EVICTION": "1"}
        consumed = run_cli(["consume", "--drain", "--block-ms", "100", *flags], env=env)
        assert consumed.returncode == 0, consumed.stderr.decode()[-2000:]
        assert b"persisted=8 " in consumed.stderr


async def test_the_eviction_policy_and_evicted_keys_are_exported(settings: Settings) -> None:
    with start_redis_server(extra=("--maxmemory-policy", "allkeys-lru")) as server:
        s = dataclasses.replace(settings, redis_url=server.url)
        client = connect(server.url)
        try:
            await client.config_set("maxmemory", str(await _used_memory(client) + 2**20))
            for i in range(64):  # 4 MB into a 1 MB margin: Redis evicts
                await client.set(f"filler:{i}", b"x" * 65536)
            evicted = int((await client.info("stats"))["evicted_keys"])
            assert evicted > 0
            registry = CollectorRegistry()
            metrics = GroupMetrics(registry, s.stream, s.group)
            assert await refresh(deployed(client, s), metrics)
        finally:
            await client.aclose()
    labels = {"stream": s.stream, "group": s.group, "shard": "all"}
    assert registry.get_sample_value("regionstream_redis_maxmemory_policy",
                                     labels | {"policy": "allkeys-lru"}) == 1.0
    # Redis may evict a few more keys by the time the gauges are read: never fewer.
    assert (registry.get_sample_value("regionstream_redis_evicted_keys", labels) or 0) >= evicted


def test_more_workers_than_redis_py_s_default_pool_never_run_out_of_connections(
        settings: Settings) -> None:
    """redis-py's pool holds 100 connections unless told otherwise: --shard-by region
    --workers 13 (8 shards x 14 readers) logged "Too many connections" on a healthy Redis."""
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix, "--shard-by", "region"]
    assert run_cli(["produce", "--once", *flags]).returncode == 0
    done = run_cli(["consume", "--drain", "--workers", "13", "--block-ms", "200", *flags])
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert "Too many connections" not in err
    assert "persisted=8 " in err


async def _xadd_pairs(client: aioredis.Redis, stream: str,
                      pairs: list[tuple[bytes, bytes]]) -> bytes:
    flat = [x for pair in pairs for x in pair]
    entry_id: bytes = await client.execute_command("XADD", stream, "*", *flat)
    return entry_id


async def test_a_lost_group_recreated_from_0_dead_letters_each_poison_once(
        client: aioredis.Redis, settings: Settings) -> None:
    """A group lost (XGROUP DESTROY, an eviction, a restart without persistence) is recreated
    from id 0: the whole stream is read again. Stored snapshots come back as redeliveries;
    old poison was dead-lettered a second time."""
    await publish_cycle(client, settings, now_ms())
    await _xadd_pairs(client, settings.stream, [(b"payload", b"{not json")])
    first = await drain(settings)
    assert outcomes(first)["persisted"] == 8 and outcomes(first)["dead_lettered"] == 1
    assert await client.xgroup_destroy(settings.stream, settings.group) == 1
    again = await drain(settings)  # recreates the group from 0
    assert outcomes(again)["redelivered"] == 8 and outcomes(again)["dead_lettered"] == 0
    assert await client.xlen(settings.keys.dlq) == 1
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0


NAMES = [wire.F_PAYLOAD, wire.F_REGION, wire.F_SCHEMA, b"dlq_reason", b"x"]


@hyp_settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
@given(st.lists(st.lists(st.tuples(st.sampled_from(NAMES), st.binary(max_size=8)),
                         min_size=1, max_size=6), min_size=1, max_size=8))
def test_every_field_of_an_entry_reaches_its_dead_letter(
        redis_url: str, batch: list[list[tuple[bytes, bytes]]]) -> None:
    """redis-py's dict dropped one of two fields sharing a name: the entry was judged on what
    was left and its dead letter lost a field. Over generated field lists (names repeated or
    not): every entry is dead-lettered once (none of them is a snapshot), its dead letter gives
    back every (name, value) pair in order, and a repeated name is the reason when there is
    one."""
    async def run() -> None:
        s = Settings.load({"redis_url": redis_url, "stream": f"rf:{uuid.uuid4().hex[:10]}",
                           "group": "g", "prefix": "rf", "block_ms": 10}, env={})
        client = connect(redis_url)
        try:
            ids = [await _xadd_pairs(client, s.stream, pairs) for pairs in batch]
            consumer = await drain(s)
            assert outcomes(consumer)["dead_lettered"] == len(batch)
            dead = {d[b"dlq_original_id"]: d for _, d in await client.xrange(s.keys.dlq)}
            assert len(dead) == len(batch) == await client.xlen(s.keys.dlq)
            for entry_id, pairs in zip(ids, batch, strict=True):
                restored = original_fields(dead[entry_id])
                assert list(zip(restored[::2], restored[1::2], strict=True)) == pairs
                names = [n for n, _ in pairs]
                if len(set(names)) < len(names):
                    assert dead[entry_id][b"dlq_reason"] == b"repeated-field"
        finally:
            await client.delete(s.stream, s.keys.dlq, s.keys.dlq_ids)
            await client.aclose()

    asyncio.run(run())


async def test_an_entry_id_ahead_of_the_clock_is_reported_not_a_zero_latency(
        client: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """``XADD stream 9999999999999-0 ...`` from outside: that entry and every auto-id after it
    carry a time centuries ahead; their latency read as 0 and zeroed the figures. They are left
    out, counted, and said once."""
    snaps = SyntheticSource(settings.regions, seed=9).cycle(now_ms())
    await client.xadd(settings.stream, wire.entry_fields(snaps[0], encode(snaps[0])),
                      id="9999999999999-0")
    await publish(client, settings, snaps[1:])  # Redis gives them ids after 9999999999999
    consumer = await drain(settings)
    registry = consumer.registry
    assert outcomes(consumer)["persisted"] == 8
    assert registry.get_sample_value("regionstream_ids_ahead_of_clock_total") == 8
    assert registry.get_sample_value("regionstream_end_to_end_latency_seconds_count") == 0
    said = [r for r in caplog.records if "ahead of this clock" in r.getMessage()
            and r.name == "regionstream.consumer"]
    assert len(said) == 1


def test_the_demo_prints_names_holding_markup_as_they_are() -> None:
    """The demo's banner put --stream and --group into rich markup: 'd[/]x' crashed it."""
    done = run_cli(["demo", "--duration", "2", "--interval", "1", "--plain",
                    "--stream", "d[/]x", "--group", "g[bold]"])
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert "-> stream 'd[/]x' -> group 'g[bold]'" in err and "Traceback" not in err


async def test_a_producer_waits_out_a_full_redis_and_then_publishes(tmp_path: Path) -> None:
    """An OOM refusal of a publish was not retried: the cycle was lost with exit 1."""
    with start_redis_server(extra=("--maxmemory-policy", "noeviction")) as server:
        client = connect(server.url)
        try:
            flags = ["--redis-url", server.url, "--stream", "full", "--prefix", "full"]
            await client.xgroup_create("full", "persisters", id="0", mkstream=True)
            await client.config_set("maxmemory", "1")  # every write refused
            producer = Proc(["produce", "--once", *flags], tmp_path / "produce.log")
            try:
                await wait_until(lambda: _async("retry" in producer.output()), 30,
                                 "a refused publish retried")
                assert await client.xlen("full") == 0
                await client.config_set("maxmemory", "0")
                code = await asyncio.to_thread(producer.proc.wait, 60)
            finally:
                producer.kill()
            assert code == 0, producer.output()[-2000:]
            assert await client.xlen("full") == 8
        finally:
            await client.aclose()


async def test_a_producer_says_when_the_stream_s_ids_run_ahead_of_the_clock(
        client: aioredis.Redis, settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    snaps = SyntheticSource(settings.regions, seed=12).cycle(now_ms())
    await client.xadd(settings.stream, wire.entry_fields(snaps[0], encode(snaps[0])),
                      id="9999999999999-0")
    registry = CollectorRegistry()
    pub = publisher(client, settings, ProducerMetrics(registry))
    await pub.prepare()
    await pub.publish(snaps[1:4])
    await pub.publish(snaps[4:])
    ahead = registry.get_sample_value("regionstream_stream_ids_ahead_seconds") or 0
    assert ahead > 9_000_000_000 - time.time()
    said = [r for r in caplog.records if "ahead of this clock" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "ERROR"


async def test_a_group_lost_while_redis_is_full_is_recreated_once_memory_is_back(
        settings: Settings) -> None:
    """XGROUP CREATE is a write: a Redis at maxmemory refuses it. A running consumer whose
    group vanished then died (exit 1) on the refusal; one starting on a full Redis without its
    group did too. Both now wait for memory, and drain once it is back."""
    with start_redis_server(extra=("--maxmemory-policy", "noeviction")) as server:
        s = dataclasses.replace(settings, redis_url=server.url, retry_backoff_ms=20)
        client = connect(server.url)
        try:
            consumer = Consumer(s, registry=CollectorRegistry())
            task = asyncio.create_task(consumer.run())
            await wait_until(lambda: _has_consumers(client, s), what="workers reading")
            await client.config_set("maxmemory", "1")  # every write refused
            await client.xgroup_destroy(s.stream, s.group)
            await wait_until(lambda: _async(failures(consumer.registry, "oom") >= 3),
                             what="the lost group's re-creation refused for memory")
            assert not task.done()
            await client.config_set("maxmemory", "0")
            await publish_cycle(client, s, now_ms())
            await wait_until(lambda: _async(outcomes(consumer)["persisted"] == 8),
                             what="the cycle persisted after memory came back")
            consumer.stop.set()
            await asyncio.wait_for(task, 30)  # ends cleanly, no exception

            # Starting on a full Redis whose group does not exist: waits, then drains.
            await client.xgroup_destroy(s.stream, s.group)
            await client.config_set("maxmemory", "1")  # every write refused
            starting = Consumer(s, registry=CollectorRegistry())
            start = asyncio.create_task(starting.run(drain=True))
            await asyncio.wait([start], timeout=1.0)
            assert not start.done()  # waiting for memory, not exited
            await client.config_set("maxmemory", "0")
            await asyncio.wait_for(start, 60)
            assert outcomes(starting)["redelivered"] == 8
        finally:
            await client.aclose()


async def _has_consumers(client: aioredis.Redis, s: Settings) -> bool:
    try:
        return bool(await client.xinfo_consumers(s.stream, s.group))
    except redis_errors.ResponseError:
        return False


def _run_with_stdout(args: list[str], redirect: str) -> subprocess.CompletedProcess[bytes]:
    """``regionstream ARGS`` with its stdout redirected by the shell (``>/dev/full``, ``>&-``)."""
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "regionstream", *args])
    return subprocess.run(["sh", "-c", f"{command} {redirect}"], capture_output=True,
                          timeout=60, env=cli_env(), check=False)


async def test_a_replay_whose_stdout_fails_reports_what_it_moved_on_stderr(
        client: aioredis.Redis, settings: Settings) -> None:
    """``replay --dlq > /dev/full`` moved every dead letter and ended in an ENOSPC traceback:
    nothing said what it had changed."""
    await publish_cycle(client, settings, now_ms())
    for i in range(3):
        await _xadd_pairs(client, settings.stream, [(b"payload", b"{broken %d" % i)])
    await drain(settings)
    assert await client.xlen(settings.keys.dlq) == 3
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix]
    done = _run_with_stdout(["replay", "--dlq", *flags], ">/dev/full")
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err
    assert await client.xlen(settings.keys.dlq) == 0  # it did move them...
    report = json.loads(err[err.index("{"):err.rindex("}") + 1])  # ...and says which
    assert len(report["entries"]) == 3
    assert err.strip().splitlines()[-1] == ("regionstream: cannot write to standard output: "
                                            "No space left on device")


@pytest.mark.parametrize("redirect", [">/dev/full", ">&-"])
@pytest.mark.parametrize("command", [["pending"], ["pending", "--json"], ["top", "--once"],
                                     ["acl"], ["show", "mena"]])
async def test_stdout_full_or_closed_is_one_line_for_every_command(
        client: aioredis.Redis, settings: Settings, redirect: str, command: list[str]) -> None:
    await publish_cycle(client, settings, now_ms())
    await drain(settings)
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix]
    if command == ["acl"]:
        flags = ["--stream", settings.stream, "--prefix", settings.prefix]
    done = _run_with_stdout([*command, *flags], redirect)
    err = done.stderr.decode()
    assert done.returncode == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("regionstream: cannot write to standard "
                                                   "output: "), err


async def test_replay_pending_says_which_entries_were_deleted_not_replayed(
        client: aioredis.Redis, settings: Settings) -> None:
    """``replay --pending`` said "replayed 2" when XCLAIM had silently dropped one of them
    (deleted from the stream while pending): it reported work it did not do."""
    await publish_cycle(client, settings, now_ms())
    await prepare(client, settings)
    read = await client.xreadgroup(settings.group, "dead", {settings.stream: ">"}, count=2)
    ids = [i for i, _ in read[0][1]]
    await client.xdel(settings.stream, ids[0])
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix]
    done = run_cli(["replay", "--pending", "--consumer", "dead", "--min-idle-ms", "0",
                    "--json", *flags])
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["outcomes"] == {"deleted_from_stream": 1, "persisted": 1}
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0
    human = run_cli(["replay", "--pending", "--min-idle-ms", "0", *flags])
    assert human.returncode == 0


@pytest.mark.parametrize("value", ["-5", "99999999999999999999", "1e3"])
def test_replay_min_idle_ms_out_of_range_is_a_usage_error(value: str) -> None:
    """A value Redis refuses was an exit 1 from inside the replay (after it began)."""
    line = one_line(run_cli(["replay", "--pending", "--min-idle-ms", value]), 2)
    assert line.startswith("regionstream replay: argument --min-idle-ms: ")


async def test_a_dlq_ids_key_of_another_type_names_itself(
        client: aioredis.Redis, settings: Settings) -> None:
    """Exit 3 was right, but the line named neither the key nor the command."""
    await client.set(settings.keys.dlq_ids, b"not a zset")
    await _xadd_pairs(client, settings.stream, [(b"payload", b"{broken")])
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix]
    done = run_cli(["consume", "--drain", "--block-ms", "100", *flags])
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    last = done.stderr.decode().strip().splitlines()[-1]
    assert f"ZSCORE {settings.keys.dlq_ids}" in last and "WRONGTYPE" in last, last
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 1
    await client.delete(settings.keys.dlq_ids)


def test_produce_from_a_closed_stdin_is_one_line() -> None:
    """``produce --source - <&-`` ended in AttributeError ('NoneType' has no 'fileno')."""
    done = subprocess.run(
        ["sh", "-c", f"{shlex.quote(sys.executable)} -m regionstream produce --source - <&-"],
        capture_output=True, timeout=60, env=cli_env(), check=False)
    assert one_line(done, 2) == "regionstream produce: --source -: standard input is closed"


async def test_a_closed_stderr_neither_breaks_a_command_nor_fills_its_stdout(
        client: aioredis.Redis, settings: Settings) -> None:
    """With stderr closed, produce died (sys.stderr.isatty() on None: nothing published, exit
    1), and every message printed to stderr went to stdout instead."""
    line = encode(SyntheticSource(settings.regions, seed=21).cycle(now_ms())[0])
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix]
    command = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "regionstream",
                                                "produce", "--source", "-", *flags])
    done = await asyncio.to_thread(
        subprocess.run, ["sh", "-c", f"{command} 2>&-"], input=line + b"\n{bad\n",
        capture_output=True, timeout=60, env=cli_env(), check=False)
    assert done.returncode == 4  # one line rejected, the other published
    assert done.stdout == b""
    assert await client.xlen(settings.stream) == 1
    shown = _run_with_stdout(["show", "atlantis", "--json", *flags], "2>&-")
    assert shown.returncode == 2 and shown.stdout == b""


async def test_a_group_cursor_set_past_the_stream_is_not_drained_and_not_trimmed_under(
        client: aioredis.Redis, settings: Settings) -> None:
    """XGROUP SETID into the future: every entry added since sits behind the cursor, never to
    be delivered. ``top`` said lag 0, ``consume --drain`` exited 0 "drained" with nothing
    persisted, and the producer's trim removed the undelivered entries."""
    await publish_cycle(client, settings, now_ms())
    await drain(settings)
    await client.execute_command("XGROUP", "SETID", settings.stream, settings.group,
                                 "9999999999999-0")
    await publish_cycle(client, settings, now_ms() + 1)
    stats = await read_group_stats(client, settings.keys)
    assert stats.lag is None and not stats.drained and stats.cursor_ahead
    flags = ["--redis-url", settings.redis_url, "--stream", settings.stream, "--group",
             settings.group, "--prefix", settings.prefix]
    done = run_cli(["consume", "--drain", "--block-ms", "100", *flags])
    last = done.stderr.decode().strip().splitlines()[-1]
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert "is past the stream's last id" in last and "XGROUP SETID" in last, last
    pub = publisher(client, dataclasses.replace(settings, stream_retention_s=0))
    assert await pub.trim() == 0  # the 16 entries stay: 8 of them were never delivered
    assert await client.xlen(settings.stream) == 16


def test_next_id_rolls_over_a_full_sequence() -> None:
    assert next_id(b"1000-18446744073709551615") == b"1001-0"
    assert next_id(b"1000-7") == b"1000-8"


async def test_a_stream_whose_ids_run_ahead_is_still_trimmed_to_what_groups_need(
        client: aioredis.Redis, settings: Settings) -> None:
    """After an outside XADD with a future id no entry is ever older than the retention:
    trimming stopped for good and the stream grew. It keeps what some group still needs."""
    snaps = SyntheticSource(settings.regions, seed=14).cycle(now_ms())
    await client.xadd(settings.stream, wire.entry_fields(snaps[0], encode(snaps[0])),
                      id="9999999999999-0")
    await publish(client, settings, snaps[1:])
    await drain(settings)
    await publish(client, settings, SyntheticSource(settings.regions, seed=15).cycle(now_ms()))
    pub = publisher(client, settings)  # the default retention: a day
    assert await pub.trim() == 8  # the acknowledged ones; the 8 undelivered stay
    assert await client.xlen(settings.stream) == 8
    done = outcomes(await drain(settings))
    assert done["persisted"] + done["duplicate"] == 8  # the undelivered ones, all settled


async def test_a_pending_entry_ahead_of_the_clock_has_an_unknown_age_not_0(
        client: aioredis.Redis, settings: Settings) -> None:
    snaps = SyntheticSource(settings.regions, seed=16).cycle(now_ms())
    await client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    await client.xadd(settings.stream, wire.entry_fields(snaps[0], encode(snaps[0])),
                      id="9999999999999-0")
    await client.xreadgroup(settings.group, "dead", {settings.stream: ">"})
    stats = await read_group_stats(client, settings.keys)
    assert stats.pending == 1 and stats.oldest_pending_age_s is None
    registry = CollectorRegistry()
    metrics = GroupMetrics(registry, settings.stream, settings.group)
    assert await refresh(deployed(client, settings), metrics)
    age = registry.get_sample_value("regionstream_group_oldest_pending_age_seconds",
                                    {"stream": settings.stream, "group": settings.group,
                                     "shard": "all"})
    assert age is not None and math.isnan(age)  # unknown, where it read 0 (healthy)
