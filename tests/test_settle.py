"""The persist transaction on a real Redis: ``MULTI; MSET <by-id keys>; EVALSHA persist; EXEC``.

The payloads reach Redis as MSET arguments, which leave the by-id keys without an expiry; the
script must give each its expiry (generated_at + retention) or delete it, whatever the outcome,
and a transaction Redis refuses must write nothing at all."""

from __future__ import annotations

import msgspec
import pytest
import redis.asyncio as aioredis

from consumer import scripts
from consumer.message import Poison, Valid, check_entry
from consumer.settle import Fate
from producer.synthetic import SyntheticSource
from shared import wire
from shared.connection import connect
from shared.keys import Keys
from shared.schema import Snapshot, encode
from shared.servers import start_redis_server
from shared.settings import Settings
from tests.helpers import drain, now_ms, outcomes, prepare, publish, publish_cycle, settler


def valid(snap: Snapshot, entry_id: bytes = b"1-1") -> Valid:
    return Valid(entry_id, snap.region_id, snap.meta.snapshot_id, snap.meta.trigger_reason,
                 snap.generated_at, encode(snap))


async def by_id_expiries(client: aioredis.Redis, settings: Settings) -> dict[bytes, int]:
    """Every by-id key of this test with its absolute expiry in ms (-1: none)."""
    return {k: await client.pexpiretime(k)
            async for k in client.scan_iter(match=f"{settings.prefix}:snapshot-by-id:*")}


async def test_every_outcome_leaves_by_id_keys_with_their_expiry(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    t = now_ms()
    first = await publish_cycle(client, settings, t, seed=1)
    # the same cycle again (redelivered), then other snapshots in the same buckets (duplicates)
    await publish(client, settings, first)
    bucket = t // settings.dedup_window_ms
    same_bucket = [s for s in SyntheticSource(settings.regions, seed=2).cycle(t)
                   if s.generated_at // settings.dedup_window_ms == bucket
                   and s.meta.trigger_reason == first[settings.regions.index(s.region_id)]
                   .meta.trigger_reason]
    assert same_bucket, "the seeds were chosen to produce duplicates"
    await publish(client, settings, same_bucket)
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == 8
    assert outcomes(consumer)["redelivered"] == 8
    assert outcomes(consumer)["duplicate"] == len(same_bucket)
    retention_ms = settings.retention_ms
    # only the persisted snapshots have by-id keys, each expiring at generated_at + retention
    assert await by_id_expiries(client, settings) == {
        keys.by_id(s.region_id, s.meta.snapshot_id).encode(): s.generated_at + retention_ms
        for s in first}


async def test_duplicate_of_a_stored_snapshot_keeps_its_data(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """A stored snapshot whose marker expired and whose bucket another snapshot took since: a
    redelivery of it is a duplicate, and its stored data must survive the MSET + cleanup."""
    t = now_ms()
    (a,) = SyntheticSource(("mena",), seed=3).cycle(t)
    b = msgspec.structs.replace(a, generated_at=t + 1, meta=msgspec.structs.replace(
        a.meta, snapshot_id=f"{t + 1:012x}-{'b' * 12}"))
    stored = await settler(client, settings).send([valid(a)], (), ack=False)
    assert [o.fate for o in stored.outcomes] == [Fate.PERSISTED]
    await client.delete(keys.dedup("mena", a.meta.trigger_reason, t // settings.dedup_window_ms))
    taken = await settler(client, settings).send([valid(b, b"1-2")], (), ack=False)
    assert [o.fate for o in taken.outcomes] == [Fate.PERSISTED]
    again = await settler(client, settings).send([valid(a, b"1-3")], (), ack=False)
    assert [o.fate for o in again.outcomes] == [Fate.DUPLICATE]
    assert await client.get(keys.by_id("mena", a.meta.snapshot_id)) == encode(a)
    assert await client.pexpiretime(keys.by_id("mena", a.meta.snapshot_id)) == (
        a.generated_at + settings.retention_ms)


async def test_past_retention_is_poison_and_the_script_refuses_it_too(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    (old,) = SyntheticSource(("mena",), seed=4).cycle(now_ms() - settings.retention_ms
                                                      - 60_000)
    fields = {wire.F_SCHEMA: wire.SCHEMA, wire.F_REGION: b"mena",
              wire.F_SNAPSHOT_ID: old.meta.snapshot_id.encode(),
              wire.F_GENERATED_AT: str(old.generated_at).encode(),
              wire.F_TRIGGER: old.meta.trigger_reason.encode(), wire.F_PAYLOAD: encode(old)}
    checked = check_entry(b"1-1", fields, max_bytes=settings.max_bytes, now_ms=now_ms(),
                          retention_ms=settings.retention_ms)
    assert isinstance(checked, Poison) and checked.reason == "past-retention"
    # Past check_entry anyway (a race at the edge): the script fails it and keeps nothing.
    settled = await settler(client, settings).send([valid(old)], (), ack=False)
    (o,) = settled.outcomes
    assert o.fate is Fate.FAILED and "past retention" in o.error
    assert await by_id_expiries(client, settings) == {}
    assert not [k async for k in client.scan_iter(match=f"{settings.prefix}:*")]


async def test_lost_scripts_still_leave_every_by_id_key_expiring(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """EVALSHA inside MULTI fails at EXEC, after the MSET ran; the reload and resend must still
    give those keys their expiry."""
    snaps = await publish_cycle(client, settings, now_ms())
    await client.script_flush()
    consumer = await drain(settings)
    assert outcomes(consumer)["persisted"] == 8
    assert await client.script_exists(scripts.persist().sha) == [True]
    expiries = await by_id_expiries(client, settings)
    assert sorted(expiries.values()) == sorted(
        s.generated_at + settings.retention_ms for s in snaps)


async def test_out_of_memory_writes_nothing_and_heals() -> None:
    """Redis refusing the MSET (maxmemory reached) aborts the whole transaction: no by-id key,
    no marker, the entries stay pending; once memory is back they are persisted."""
    with start_redis_server() as server:
        s = Settings.load({"redis_url": server.url, "stream": "oom", "group": "g",
                           "prefix": "oom"}, env={})
        client = connect(server.url)
        try:
            await prepare(client, s)
            await publish_cycle(client, s, now_ms())
            read = await client.xreadgroup("g", "w", {"oom": ">"})
            entries = read[0][1]
            checked = [check_entry(i, f, max_bytes=s.max_bytes, now_ms=now_ms())
                       for i, f in entries]
            batch = [c for c in checked if isinstance(c, Valid)]
            assert len(batch) == 8
            await client.config_set("maxmemory", 1)  # anything more is over the limit
            refused = await settler(client, s).send(batch, ())
            assert {o.fate for o in refused.outcomes} == {Fate.FAILED}
            assert all("maxmemory" in o.error for o in refused.outcomes)
            assert not [k async for k in client.scan_iter(match="oom:*")]
            assert (await client.xpending("oom", "g"))["pending"] == 8
            await client.config_set("maxmemory", 0)
            healed = await settler(client, s).send(batch, ())
            assert [o.fate for o in healed.outcomes] == [Fate.PERSISTED] * 8
            assert (await client.xpending("oom", "g"))["pending"] == 0
            expiries = await by_id_expiries(client, s)
            assert len(expiries) == 8 and -1 not in expiries.values()
        finally:
            await client.aclose()


async def test_a_consumer_starts_while_redis_is_full() -> None:
    """XGROUP CREATE is refused at maxmemory even when the group exists; starting (or
    recovering from NOGROUP) must not die on that, while a missing group still fails loudly."""
    from redis.exceptions import OutOfMemoryError

    from shared.group import ensure_group

    with start_redis_server() as server:
        s = Settings.load({"redis_url": server.url, "stream": "full", "group": "g",
                           "prefix": "full"}, env={})
        client = connect(server.url)
        try:
            assert await ensure_group(client, s.keys) is True
            await client.config_set("maxmemory", 1)
            assert await ensure_group(client, s.keys) is False
            other = Settings.load({"redis_url": server.url, "stream": "full", "group": "h",
                                   "prefix": "full"}, env={})
            with pytest.raises(OutOfMemoryError):
                await ensure_group(client, other.keys)
        finally:
            await client.config_set("maxmemory", 0)
            await client.aclose()


async def test_a_retry_sets_the_latest_an_earlier_failure_left_behind(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """`latest` of another type (an outside actor) fails the call after its by-id and index
    writes: no marker, nothing acknowledged. Once the key is fixed, the retry finds the
    snapshots stored (redelivered) and still moves `latest` to the newest of them."""
    t = now_ms()
    a, b = (valid(s, b"1-%d" % i) for i, s in enumerate(
        [SyntheticSource(("mena",), seed=9).cycle(t)[0],
         SyntheticSource(("mena",), seed=10).cycle(t + settings.dedup_window_ms)[0]], 1))
    await client.rpush(keys.latest("mena"), "not a pointer")
    first = await settler(client, settings).send([a, b], (), ack=False)
    assert [o.fate for o in first.outcomes] == [Fate.FAILED, Fate.FAILED]
    assert await client.exists(keys.dedup("mena", a.trigger_reason,
                                          a.generated_at // settings.dedup_window_ms)) == 0
    await client.delete(keys.latest("mena"))
    again = await settler(client, settings).send([a, b], (), ack=False)
    assert [o.fate for o in again.outcomes] == [Fate.REDELIVERED, Fate.REDELIVERED]
    assert await client.get(keys.latest("mena")) == b.snapshot_id.encode()


def one_bucket(settings: Settings, t: int, seeds: tuple[int, ...]) -> list[Valid]:
    """Snapshots of "mena" with one trigger, generated in one dedup bucket (other ids)."""
    base = SyntheticSource(("mena",), seed=seeds[0]).cycle(t)[0]
    return [valid(msgspec.structs.replace(base, generated_at=t + i, meta=msgspec.structs.replace(
        base.meta, snapshot_id=f"{t + i:012x}-{seed:012x}")), b"1-%d" % i)
        for i, seed in enumerate(seeds)]


async def test_a_stored_snapshot_found_again_takes_its_bucket_back(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """A call fails after its data writes (no marker); its retry finds the first snapshot
    stored and must not store the second of the same bucket (two per bucket before)."""
    t = now_ms() // settings.dedup_window_ms * settings.dedup_window_ms  # a bucket's start
    first, second = one_bucket(settings, t, (11, 12))
    await client.rpush(keys.latest("mena"), "not a pointer")
    failed_call = await settler(client, settings).send([first], (), ack=False)
    assert [o.fate for o in failed_call.outcomes] == [Fate.FAILED]
    await client.delete(keys.latest("mena"))
    retry = await settler(client, settings).send([first, second], (), ack=False)
    assert [o.fate for o in retry.outcomes] == [Fate.REDELIVERED, Fate.DUPLICATE]
    assert await client.zrange(keys.index("mena"), 0, -1) == [first.snapshot_id.encode()]
    marker = keys.dedup("mena", first.trigger_reason, t // settings.dedup_window_ms)
    assert await client.get(marker) == first.snapshot_id.encode()
    later = await settler(client, settings).send([second], (), ack=False)  # its own retry
    assert [o.fate for o in later.outcomes] == [Fate.DUPLICATE]


async def test_an_index_of_another_type_fails_only_what_needs_the_index(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """An outside actor's key at the index: entries their bucket's marker decides are settled
    as before (a duplicate is no failure to dead-letter); the others stay pending."""
    t = now_ms() // settings.dedup_window_ms * settings.dedup_window_ms
    stored, dup = one_bucket(settings, t, (13, 14))
    (other,) = one_bucket(settings, t + settings.dedup_window_ms, (15,))
    assert [o.fate for o in (await settler(client, settings).send([stored], (), ack=False))
            .outcomes] == [Fate.PERSISTED]
    await client.delete(keys.index("mena"))
    await client.set(keys.index("mena"), "not an index")
    call = await settler(client, settings).send([stored, dup, other], (), ack=False)
    assert [o.fate for o in call.outcomes] == [Fate.REDELIVERED, Fate.DUPLICATE, Fate.FAILED]
    assert "WRONGTYPE" in call.outcomes[2].error


async def test_latest_is_repaired_however_many_retries_fail_first(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """A snapshot found stored stays pending as long as `latest` cannot be written (it was
    acknowledged on the second try, and `latest` stayed empty for good)."""
    (a,) = one_bucket(settings, now_ms(), (16,))
    await client.rpush(keys.latest("mena"), "not a pointer")
    for _ in range(3):
        tried = await settler(client, settings).send([a], (), ack=False)
        assert [o.fate for o in tried.outcomes] == [Fate.FAILED]
    await client.delete(keys.latest("mena"))
    healed = await settler(client, settings).send([a], (), ack=False)
    assert [o.fate for o in healed.outcomes] == [Fate.REDELIVERED]
    assert await client.get(keys.latest("mena")) == a.snapshot_id.encode()


async def test_an_index_entry_past_retention_is_no_stored_snapshot(
        client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """The index entry of a snapshot whose by-id key has expired (past retention, not pruned
    yet) made an entry of that id "redelivered" with nothing stored."""
    (a,) = one_bucket(settings, now_ms(), (17,))
    await client.zadd(keys.index("mena"), {a.snapshot_id: now_ms() - settings.retention_ms - 1})
    call = await settler(client, settings).send([a], (), ack=False)
    assert [o.fate for o in call.outcomes] == [Fate.PERSISTED]
    assert await client.get(keys.by_id("mena", a.snapshot_id)) == a.payload


async def test_a_script_lost_again_leaves_no_staging_key_and_spends_no_delivery(
        client: aioredis.Redis, settings: Settings, keys: Keys,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """NOSCRIPT on the resend too (the cache flushed again): the MSET ran twice, the script
    never; its staging keys are deleted, and the entries fail as Redis's fault, not theirs."""
    batch = one_bucket(settings, now_ms(), (18, 19))
    await client.script_flush()
    s = settler(client, settings)

    async def load_nothing(names: set[str]) -> None:
        return None

    monkeypatch.setattr(s.group, "load_scripts", load_nothing)
    call = await s.send(batch, (), ack=False)
    assert [(o.fate, o.transient) for o in call.outcomes] == [(Fate.FAILED, True)] * 2
    assert [k async for k in client.scan_iter(match=f"{settings.prefix}:incoming:*")] == []
