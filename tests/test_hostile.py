"""Hostile entries and injected Redis refusals, on real Redis: no entry kills a worker, and
every entry ends stored, dead-lettered or still pending - never in none of them.

Each test is the regression test of one defect found by trying the pipeline as an adversary
(see the README's "Guarantees")."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from consumer.dead_letters import PACKED_FIELD, original_fields
from consumer.message import MAX_ENTRY_FIELDS, Poison, Reason, Valid, check_entry
from consumer.ops import replay_dlq, replay_range
from consumer.service import Consumer
from consumer.settle import Fate
from producer.synthetic import SyntheticSource
from shared import wire
from shared.connection import PermanentError, connect
from shared.keys import dedup_bucket
from shared.metrics import ConsumerMetrics
from shared.schema import TRIGGER_REASONS, encode
from shared.settings import Settings
from tests.helpers import deployed, drain, now_ms, prepare, publish_cycle, settler, worker

DEEP = b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}"  # 2 KB; crash-looped every consumer


def valid_fields(seed: int = 1, region: str = "mena") -> dict[bytes, bytes]:
    (snap,) = SyntheticSource((region,), seed=seed).cycle(now_ms())
    return wire.entry_fields(snap, encode(snap))


async def pending(client: aioredis.Redis, s: Settings) -> int:
    return int((await client.xpending(s.stream, s.group))["pending"])


# -- 1. a payload nested 1,000 deep -------------------------------------------------------------

async def test_deeply_nested_payload_is_dead_lettered_not_a_crash(
        client: aioredis.Redis, settings: Settings) -> None:
    await publish_cycle(client, settings, now_ms())
    fields = valid_fields() | {wire.F_PAYLOAD: DEEP}
    bad_id = await client.xadd(settings.stream, fields)
    consumer = await drain(settings)
    assert consumer.totals()["persisted"] == 8 and consumer.totals()["dead_lettered"] == 1
    ((_, dead),) = await client.xrange(settings.keys.dlq)
    assert dead[b"dlq_reason"] == b"undecodable" and b"nested too deeply" in dead[b"dlq_error"]
    assert dead[b"dlq_original_id"] == bad_id and dead[wire.F_PAYLOAD] == DEEP
    assert await pending(client, settings) == 0
    # replay --range walks the same entry without dying, and counts it as invalid
    done = await replay_range(deployed(client, settings), settings.keys, settings, start="-",
                              end="+", dry_run=False)
    assert done.outcomes["invalid"] == 1 and done.entries == 9


@pytest.mark.parametrize("exc", [RecursionError("deep"), MemoryError(), KeyError("x"),
                                 UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")])
def test_any_exception_while_checking_makes_poison(monkeypatch: pytest.MonkeyPatch,
                                                   exc: Exception) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr("consumer.message.parse", boom)
    checked = check_entry(b"1-1", valid_fields(), max_bytes=1 << 20, now_ms=now_ms())
    assert isinstance(checked, Poison) and checked.reason is Reason.CHECK_FAILED
    assert type(exc).__name__ in checked.detail


def test_detail_has_no_control_characters_and_is_bounded() -> None:
    fields = valid_fields() | {wire.F_ENCODING: b"x\nFAKE LOG LINE\r" + b"y" * 5000}
    checked = check_entry(b"1-1", fields, max_bytes=1 << 20, now_ms=now_ms())
    assert isinstance(checked, Poison) and checked.reason is Reason.UNSUPPORTED_ENCODING
    assert "\n" not in checked.detail and "\r" not in checked.detail
    assert len(checked.detail) < 1100


# -- 2. dead-lettering never loses an entry ---------------------------------------------------

async def test_entry_with_thousands_of_fields_is_dead_lettered_whole(
        client: aioredis.Redis, settings: Settings) -> None:
    fields = {f"f{i}".encode(): str(i).encode() for i in range(4000)}
    entry_id = await client.xadd(settings.stream, fields)  # type: ignore[arg-type]
    await drain(settings)
    ((_, dead),) = await client.xrange(settings.keys.dlq)
    assert dead[b"dlq_reason"] == Reason.TOO_MANY_FIELDS.encode()
    assert dead[b"dlq_original_id"] == entry_id and PACKED_FIELD in dead
    restored = original_fields(dead)
    assert dict(zip(restored[::2], restored[1::2], strict=True)) == fields
    assert await pending(client, settings) == 0
    # replay leaves it where it is (it would only come back), and says why
    (moved,) = await replay_dlq(deployed(client, settings), settings.keys)
    assert moved.skipped and moved.new_id is None
    assert await client.xlen(settings.keys.dlq) == 1


async def test_original_fields_named_like_provenance_survive_a_round_trip(
        client: aioredis.Redis, settings: Settings) -> None:
    forged = {b"schema": b"1", b"payload": b"{nope", b"dlq_reason": b"forged",
              b"dlq_raw_x": b"y"}
    await client.xadd(settings.stream, forged)  # type: ignore[arg-type]
    await drain(settings)
    ((_, dead),) = await client.xrange(settings.keys.dlq)
    assert dead[b"dlq_reason"] == b"undecodable"  # ours, not the forged one
    (moved,) = await replay_dlq(deployed(client, settings), settings.keys)
    assert moved.new_id is not None
    (_, back), = await client.xrange(settings.stream, moved.new_id, moved.new_id)
    assert back == forged


async def test_dead_letter_stream_of_wrong_type_stops_the_worker_and_keeps_the_entry(
        client: aioredis.Redis, settings: Settings) -> None:
    await client.set(settings.keys.dlq, "not a stream")
    entry_id = await client.xadd(settings.stream, {"schema": "1", "payload": "{bad"})
    consumer = Consumer(settings, registry=CollectorRegistry())
    with pytest.raises(PermanentError, match="WRONGTYPE"):
        await asyncio.wait_for(consumer.run(drain=True), 30)
    rows = await client.xpending_range(settings.stream, settings.group, "-", "+", 10)
    assert [r["message_id"] for r in rows] == [entry_id]  # still pending, not lost
    assert consumer.metrics.totals["dead_lettered"] == 0
    await client.delete(settings.keys.dlq)  # the operator fixes it: the next run moves it
    again = await drain(settings)
    assert again.totals()["dead_lettered"] == 1
    assert await client.xlen(settings.keys.dlq) == 1 and await pending(client, settings) == 0


@pytest.fixture
async def acl_user(client: aioredis.Redis) -> AsyncIterator[tuple[str, str]]:
    """A throwaway ACL user (uuid-named) on the test server; the test sets its rules."""
    name, password = f"u-{uuid.uuid4().hex[:10]}", uuid.uuid4().hex
    yield name, password
    await client.acl_deluser(name)


def as_user(s: Settings, user: tuple[str, str]) -> str:
    return s.redis_url.replace("redis://", f"redis://{user[0]}:{user[1]}@")


async def test_failed_xack_after_dead_letter_xadd_removes_the_dead_letter_again(
        client: aioredis.Redis, settings: Settings, acl_user: tuple[str, str]) -> None:
    """A user that may XADD but not XACK: the move must not leave the entry in both places."""
    await client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    entry_id = await client.xadd(settings.stream, {"schema": "1", "payload": "{bad"})
    await client.xreadgroup(settings.group, "w", {settings.stream: ">"})
    await client.execute_command("ACL", "SETUSER", acl_user[0], "on", f">{acl_user[1]}",
                                 "~*", "+@all", "-xack")
    restricted = connect(as_user(settings, acl_user))
    try:
        poison = [(entry_id, {b"schema": b"1", b"payload": b"{bad"})]
        assert isinstance(check_entry(*poison[0], max_bytes=1 << 20, now_ms=now_ms()), Poison)
        # A failure no retry fixes: the settle pipeline stops the worker on it.
        with pytest.raises(PermanentError, match=r"XACK.*can't run"):
            await settler(restricted, settings).settle(poison)
    finally:
        await restricted.aclose()
    assert await client.xlen(settings.keys.dlq) == 0  # rolled back
    assert await pending(client, settings) == 1  # and still pending: retried later


@pytest.mark.parametrize("forbidden", ["xadd", "evalsha", "xreadgroup"])
async def test_missing_permission_stops_the_consumer_with_entries_pending(
        client: aioredis.Redis, settings: Settings, acl_user: tuple[str, str],
        forbidden: str) -> None:
    """Without a needed command the workers used to retry forever; now the process stops."""
    await publish_cycle(client, settings, now_ms())
    await client.xadd(settings.stream, {"schema": "1", "payload": "{bad"})
    await prepare(client, settings)  # group and scripts exist (an admin set them up)
    await client.execute_command("ACL", "SETUSER", acl_user[0], "on", f">{acl_user[1]}",
                                 "~*", "+@all", f"-{forbidden}")
    consumer = Consumer(dataclasses.replace(settings, redis_url=as_user(settings, acl_user)),
                        registry=CollectorRegistry())
    with pytest.raises(PermanentError, match=r"no permissions|can't run"):
        await asyncio.wait_for(consumer.run(drain=True), 30)
    assert consumer.metrics.totals["dead_lettered"] == 0
    left = await client.xpending(settings.stream, settings.group)
    stored_now = sum([await client.zcard(settings.keys.index(r)) for r in settings.regions])
    # Nothing is lost: what was not stored is still on the stream, undelivered or pending.
    assert stored_now + int(left["pending"]) + await undelivered(client, settings) >= 8


async def undelivered(client: aioredis.Redis, s: Settings) -> int:
    (group,) = [g for g in await client.xinfo_groups(s.stream) if g["name"] == s.group.encode()]
    return int(group["lag"] or 0)


# -- 5. the retry budget reads each failed entry's own delivery count ---------------------------

async def test_retry_budget_finds_failed_entries_among_many_pending(
        client: aioredis.Redis, settings: Settings) -> None:
    s = settings
    await client.xgroup_create(s.stream, s.group, id="0", mkstream=True)
    first = await client.xadd(s.stream, valid_fields(1))
    for i in range(20):
        await client.xadd(s.stream, {"filler": str(i)})
    last = await client.xadd(s.stream, valid_fields(2))
    read = await client.xreadgroup(s.group, "w", {s.stream: ">"})
    # Both have used up their deliveries; 20 other entries of the same consumer lie between.
    await client.xclaim(s.stream, s.group, "w", 0, [first, last], retrycount=s.max_deliveries)
    await client.set(s.keys.index("mena"), "not a zset")  # every persist of mena fails
    settled = await settler(client, s).settle([e for e in read[0][1] if e[0] in (first, last)])
    assert {o.entry_id: o.fate for o in settled.outcomes} == {
        first: Fate.DEAD_LETTERED, last: Fate.DEAD_LETTERED}
    assert {o.reason for o in settled.outcomes} == {Reason.MAX_DELIVERIES}
    assert await client.xlen(s.keys.dlq) == 2


# -- 7. one dedup window ----------------------------------------------------------------------

def test_load_generator_uses_the_configured_dedup_window() -> None:
    window = 3600 * 1000
    src = SyntheticSource(seed=5, dedup_window_ms=window)
    per_bucket = len(src.regions) * len(TRIGGER_REASONS)
    snaps = [src.snapshot_for_count(i, 10**12) for i in range(per_bucket * 3)]
    triples = {(s.region_id, s.meta.trigger_reason, dedup_bucket(s.generated_at, window))
               for s in snaps}
    assert len(triples) == len(snaps)
    assert src.reach_ms(per_bucket * 3) == 2 * window


async def test_count_run_is_all_distinct_under_a_large_dedup_window(
        client: aioredis.Redis, settings: Settings) -> None:
    import dataclasses

    from producer.service import Producer

    s = dataclasses.replace(settings, dedup_window_s=7200)
    producer = Producer(s, registry=CollectorRegistry())
    report = await producer.run(deployed(client, s), count=200)
    assert report.published == 200
    consumer = await drain(s)
    assert consumer.totals()["persisted"] == 200 and consumer.totals()["duplicate"] == 0


# -- 8. a round-trip metric times the round trip ------------------------------------------------

async def test_settle_round_trip_excludes_decoding(client: aioredis.Redis, settings: Settings
                                                   ) -> None:
    await publish_cycle(client, settings, now_ms())
    registry = CollectorRegistry()
    metrics = ConsumerMetrics(registry)

    def slow(entry_id: bytes, fields: dict[bytes, bytes], **limits: Any) -> Valid | Poison:
        deadline = time.perf_counter() + 0.2 / 8
        while time.perf_counter() < deadline:  # CPU, as decoding is
            pass
        return check_entry(entry_id, fields, **limits)

    w = worker(client, settings, metrics=metrics, check=slow)
    assert (await w.next_batch()).own  # its own (empty) pending list first
    result = await w.next_batch()
    assert result.settled.tally() == {Fate.PERSISTED: 8}

    def total(name: str, **labels: str) -> float:
        value = registry.get_sample_value(name, labels)
        assert value is not None, name
        return value

    batch = total("regionstream_batch_processing_seconds_sum")
    settle = total("regionstream_redis_roundtrip_seconds_sum", operation="settle")
    assert batch >= 0.2 > settle
    # totals() agrees with the exported counters (and reads no private attribute)
    persisted = sum(registry.get_sample_value("regionstream_messages_total",
                                              {"region": r, "outcome": "persisted"}) or 0
                    for r in settings.regions)
    assert metrics.totals["persisted"] == persisted == 8


async def test_max_entry_fields_is_far_above_a_real_entry() -> None:
    assert len(valid_fields()) * 4 < MAX_ENTRY_FIELDS



# -- 4. a permanent error is said once, and the process exits ----------------------------------

@pytest.mark.parametrize("forbidden", ["evalsha", "xreadgroup", "zmscore"])  # zmscore: in a script
async def test_consume_without_a_permission_exits_3_saying_what_is_missing(
        client: aioredis.Redis, settings: Settings, acl_user: tuple[str, str],
        forbidden: str) -> None:
    from tests.proc import common_flags, run_cli

    await publish_cycle(client, settings, now_ms())
    await prepare(client, settings)
    await client.execute_command("ACL", "SETUSER", acl_user[0], "on", f">{acl_user[1]}",
                                 "~*", "+@all", f"-{forbidden}")
    flags = common_flags(settings)
    flags[flags.index("--redis-url") + 1] = as_user(settings, acl_user)
    started = time.monotonic()
    done = run_cli(["consume", "--drain", "--workers", "2", "--block-ms", "100", *flags])
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert time.monotonic() - started < 20  # stops at once; it used to retry forever
    err = done.stderr.decode()
    last = err.strip().splitlines()[-1]
    assert last.startswith("regionstream: stopped, not retrying") and forbidden in last, err
    assert "Traceback" not in err and acl_user[1] not in err
    assert err.count(f"'{forbidden}'") <= 4  # said a few times at most, not 25-40 lines a second
    assert await pending(client, settings) + await undelivered(client, settings) == 8


def test_unknown_fail_point_is_a_usage_error() -> None:
    from tests.proc import cli_env, run_cli

    done = run_cli(["pending"], env=cli_env() | {"REGIONSTREAM_FAILPOINT": "consumer.nowhere"})
    assert done.returncode == 2 and b"unknown fail point" in done.stderr


def test_count_past_retention_is_refused_before_connecting() -> None:
    from tests.proc import cli_env, run_cli

    env = cli_env() | {"REGIONSTREAM_DEDUP_WINDOW_S": "86400"}
    done = run_cli(["produce", "--count", "10000", "--redis-url", "redis://127.0.0.1:1/0"],
                   env=env)
    assert done.returncode == 2, done.stderr
    line, = done.stderr.decode().strip().splitlines()
    assert "--count 10000" in line and "retention" in line


async def test_source_file_with_a_deeply_nested_line_rejects_that_line_only(
        client: aioredis.Redis, settings: Settings, tmp_path: object) -> None:
    from pathlib import Path

    from tests.proc import common_flags, run_cli

    good = [encode(s) for s in SyntheticSource(seed=4).cycle(now_ms())]
    source = Path(str(tmp_path)) / "in.jsonl"
    source.write_bytes(b"\n".join([good[0], DEEP, *good[1:]]) + b"\n")
    done = run_cli(["produce", "--source", str(source), *common_flags(settings)])
    assert done.returncode == 4, done.stderr.decode()[-2000:]
    err = done.stderr.decode()
    assert "line 2" in err and "nested too deeply" in err and "Traceback" not in err
    assert await client.xlen(settings.stream) == 8
