"""Property-based fuzzing of the whole settle path on real Redis.

Generated batches of hostile entries (tests/strategies.py) go onto a stream and through a real
worker. Invariants, for every batch: no exception escapes and the worker goes on; every entry
is stored exactly once (or is a duplicate of one that is) or is in the dead-letter stream, once,
with the reason the entry check gives and its original fields intact; nothing is left pending;
`latest` is the newest stored snapshot per region; every key in the database is one of the
documented layout (shared/keys.py).

`make test` runs at least FUZZ_ENTRIES (10,000) entries; `make fuzz` runs the long version
(FUZZ_ENTRIES=300000, a fixed seed: FUZZ_SEED)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.dead_letters import original_fields
from consumer.message import Poison, Reason, Valid, check_entry
from consumer.worker import Worker
from shared.connection import connect
from shared.keys import Keys, dedup_bucket
from shared.settings import Settings
from tests.helpers import prepare, worker
from tests.strategies import Fields, entries

FUZZ_ENTRIES = int(os.environ.get("FUZZ_ENTRIES", "10000"))
BATCH_MIN, BATCH_MAX = 10, 60
EXAMPLES_PER_RUN = 100
MAX_RUNS = 1000  # bound: each run of EXAMPLES_PER_RUN batches adds at least 1,000 entries
FUZZ_DB = 9  # a database of its own: every key in it must belong to the layout
MAX_STEPS = 50
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def fuzz_settings(url: str) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings.load({"redis_url": url, "stream": f"fz:{tag}", "group": f"g-{tag}",
                          "prefix": f"fz:{tag}", "name": f"w-{tag}", "block_ms": 10,
                          "max_bytes": MAX_BYTES, "retry_backoff_ms": 0}, env={})


async def settle_all(client: aioredis.Redis, s: Settings, batch: list[Fields]
                     ) -> tuple[list[bytes], Worker]:
    await prepare(client, s)
    pipe = client.pipeline(transaction=False)
    for fields in batch:
        pipe.xadd(s.stream, fields)  # type: ignore[arg-type]
    ids: list[bytes] = await pipe.execute()
    w = worker(client, s, s.name)
    assert (await w.next_batch()).own  # its own (empty) pending list first
    # One read takes the whole batch (--batch 200 > BATCH_MAX); a failed entry sends the
    # worker back to its own pending entries (as its retry loop does), which needs no
    # blocking read. Bounded.
    for _ in range(MAX_STEPS):
        result = await w.next_batch()  # an exception here fails the property
        if result.failed:
            w.own.again()
        elif w.own.done:
            break
    return ids, w


async def check(client: aioredis.Redis, s: Settings, ids: list[bytes], batch: list[Fields],
                w: Worker) -> None:
    keys = s.keys
    now_ms = int(time.time() * 1000)
    verdicts = [check_entry(i, f, max_bytes=MAX_BYTES, now_ms=now_ms, regions=s.regions,
                            retention_ms=s.retention_ms) for i, f in zip(ids, batch, strict=True)]
    info = await client.xpending(s.stream, s.group)
    assert info["pending"] == 0
    dead = {d[b"dlq_original_id"]: d for _, d in await client.xrange(keys.dlq)}
    poison = [v for v in verdicts if isinstance(v, Poison)]
    valid = [v for v in verdicts if isinstance(v, Valid)]
    for v in [v for v in valid if v.entry_id in dead]:  # too deep for the worker's stack only
        assert both_judged_nesting(dead[v.entry_id], {b"payload": v.payload})
        valid.remove(v)
        poison.append(Poison(v.entry_id, dict(batch[ids.index(v.entry_id)]), Reason.UNDECODABLE,
                             ""))
    assert len(dead) == len(poison) == await client.xlen(keys.dlq)
    for p in poison:
        d = dead[p.entry_id]
        if d[b"dlq_reason"] != p.reason.encode():
            assert both_judged_nesting(d, p.fields), (d[b"dlq_reason"], p.reason)
        restored = original_fields(d)
        assert dict(zip(restored[::2], restored[1::2], strict=True)) == p.fields
    first_payload: dict[str, bytes] = {}
    for v in valid:
        await assert_stored_or_duplicate(client, keys, s, v)
        first_payload.setdefault(v.snapshot_id, v.payload)
    for v in valid:  # write-once: a snapshot id keeps the payload of the entry that stored it
        stored = await client.get(keys.by_id(v.region, v.snapshot_id))
        assert stored is None or stored == first_payload[v.snapshot_id]
    t = w.metrics.totals
    assert t["persisted"] + t["duplicate"] + t["redelivered"] == len(valid)
    assert t["dead_lettered"] == len(poison)
    await assert_latest_is_newest(client, keys, s)


NESTING_BOUND = 500  # far below Python's recursion limit (1000), far above a snapshot's ~5


def nesting(payload: bytes) -> int:
    """How deeply ``payload``'s JSON arrays and objects nest (strings skipped)."""
    depth = deepest = 0
    in_string = escaped = False
    for c in payload:
        if in_string:
            escaped, in_string = (False, True) if escaped else (c == 0x5C, c != 0x22)
        elif c == 0x22:
            in_string = True
        elif c in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif c in (0x5D, 0x7D):
            depth -= 1
    return deepest


def both_judged_nesting(dead: dict[bytes, bytes], fields: dict[bytes, bytes]) -> bool:
    """msgspec's nesting limit is Python's recursion limit, which counts the caller's stack
    too: near ~900 levels a payload is "nested too deeply" in a worker (deeper stack) but not
    here, or the other way round. Both verdicts are dead letters; only the reason differs, and
    only for a payload nested hundreds deep."""
    return nesting(fields.get(b"payload", b"")) >= NESTING_BOUND and (
        b"nested too deeply" in dead[b"dlq_error"] or dead[b"dlq_reason"] != b"undecodable")


async def assert_stored_or_duplicate(client: aioredis.Redis, keys: Keys, s: Settings,
                                     v: Valid) -> None:
    owner = await client.get(keys.dedup(v.region, v.trigger_reason,
                                        dedup_bucket(v.generated_at, s.dedup_window_ms)))
    assert owner is not None
    sid = owner.decode()  # this snapshot, or the one that took its dedup bucket first
    assert await client.zscore(keys.index(v.region), sid) is not None
    by_id = keys.by_id(v.region, sid)
    assert await client.pttl(by_id) > 0
    if sid != v.snapshot_id:  # a duplicate's payload is not kept
        assert await client.exists(keys.by_id(v.region, v.snapshot_id)) == 0 or \
            await client.zscore(keys.index(v.region), v.snapshot_id) is not None


async def assert_latest_is_newest(client: aioredis.Redis, keys: Keys, s: Settings) -> None:
    for region in s.regions:
        members = await client.zrange(keys.index(region), 0, -1, withscores=True)
        latest = await client.get(keys.latest(region))
        if not members:
            assert latest is None
            continue
        newest = max(members, key=lambda m: (m[1], m[0]))
        assert latest == newest[0]


async def assert_layout_and_clean(client: aioredis.Redis, s: Settings) -> None:
    found = [k async for k in client.scan_iter(count=1000)]
    strays = [k for k in found if s.keys.kind_of(k) in (None, "incoming")]
    assert not strays, f"keys outside the documented layout (or left staged): {strays[:5]}"
    if found:
        await client.delete(*found)


@pytest.mark.slow  # 10,000 generated entries, ~20 s
@pytest.mark.timeout(1800)
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")  # big reprs
def test_every_entry_ends_stored_or_dead_lettered(redis_url: str,
                                                  runner: asyncio.Runner) -> None:
    url = redis_url.rsplit("/", 1)[0] + f"/{FUZZ_DB}"
    seen = {"entries": 0, "batches": 0}

    async def one(batch: list[Fields]) -> None:
        s = fuzz_settings(url)
        client = connect(url)
        try:
            ids, w = await settle_all(client, s, batch)
            await check(client, s, ids, batch, w)
        finally:
            await assert_layout_and_clean(client, s)
            await client.aclose()

    @settings(max_examples=EXAMPLES_PER_RUN, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(entries(), min_size=BATCH_MIN, max_size=BATCH_MAX))
    def prop(batch: list[Fields]) -> None:
        seen["entries"] += len(batch)
        seen["batches"] += 1
        runner.run(one(batch))

    for _ in range(MAX_RUNS):  # until the target count is reached
        prop()
        if seen["entries"] >= FUZZ_ENTRIES:
            break
    print(f"\nfuzz: {seen['entries']} entries in {seen['batches']} batches")
    assert seen["entries"] >= FUZZ_ENTRIES
