"""The persist script against a model of its rule, over generated batches on a real Redis.

``consumer/persist.lua`` decides a whole call at once (one MGET of the markers, one ZMSCORE of
the snapshot ids, one ZADD, ``latest`` once), yet its verdicts must be those of settling the
messages one at a time, in order, the state updated after each: the first snapshot of a
bucket wins, the same snapshot again is a redelivery, and a by-id key is written once. The
generated batches crowd a few snapshot ids into a few buckets, repeat ids and buckets inside
one call and across calls, and start from stored snapshots, foreign markers and markers of
another type. Checked after every call: each verdict, every by-id key (its payload and its
expiry), the index, the markers, ``latest`` (never moving back), no staging key left."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from consumer.message import Valid
from consumer.settle import DUPLICATE, PERSISTED, REDELIVERED, Fate
from shared.connection import connect
from shared.settings import Settings
from tests.helpers import now_ms, settler

REGION, TRIGGER = "mena", "scheduled_6h"
SIDS = 4  # snapshot ids in play
BUCKETS = 3  # dedup buckets in play
FOREIGN = "ffffffffffff-ffffffffffff"  # a marker's snapshot id that no message carries


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


@dataclass(frozen=True)
class Message:
    sid: int  # which of the SIDS snapshot ids
    bucket: int
    offset_ms: int  # where in its bucket: generated_at differs within one snapshot id too


@dataclass(frozen=True)
class Start:
    stored: frozenset[int]  # snapshot ids stored before (index, by-id and marker)
    foreign: frozenset[int]  # buckets whose marker holds a snapshot id no message carries
    wrong_type: frozenset[int]  # buckets whose marker key holds a list


@dataclass
class Model:
    """The rule, one message at a time."""

    markers: dict[int, str] = field(default_factory=dict)  # bucket -> snapshot id
    index: dict[str, int] = field(default_factory=dict)  # snapshot id -> generated_at
    by_id: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # -> payload, expiry
    latest: str | None = None

    def settle(self, sid: str, bucket: int, gen: int, payload: bytes, retention_ms: int
               ) -> Fate:
        owner = self.markers.get(bucket)
        if owner == sid:
            return REDELIVERED
        if owner is not None:
            return DUPLICATE
        if sid in self.index:  # stored, its marker gone: it takes its bucket back
            if self.index[sid] == gen:
                self.markers[bucket] = sid
            self.candidate(sid, self.index[sid])
            return REDELIVERED
        self.by_id[sid] = (payload, gen + retention_ms)
        self.index[sid] = gen
        self.markers[bucket] = sid
        self.candidate(sid, gen)
        return PERSISTED

    def candidate(self, sid: str, gen: int) -> None:
        if self.latest is None or (gen, sid) > (self.index[self.latest], self.latest):
            self.latest = sid


def sid_of(i: int, base: int) -> str:
    return f"{base:012x}-{i:012x}"


def gen_of(m: Message, base: int, window_ms: int) -> int:
    return (base // window_ms + m.bucket) * window_ms + m.offset_ms


messages = st.builds(Message, st.integers(0, SIDS - 1), st.integers(0, BUCKETS - 1),
                     st.integers(0, 2))
starts = st.builds(Start, st.frozensets(st.integers(0, SIDS - 1), max_size=2),
                   st.frozensets(st.integers(0, BUCKETS - 1), max_size=1),
                   st.frozensets(st.integers(0, BUCKETS - 1), max_size=1))
# Calls of one to six messages: repeats inside one call and across calls.
batches = st.lists(st.lists(messages, min_size=1, max_size=6), min_size=1, max_size=4)


async def seed(client: aioredis.Redis, s: Settings, start: Start, model: Model, base: int
               ) -> None:
    k = s.keys
    for i in sorted(start.stored):  # stored before: in the bucket i % BUCKETS
        sid, gen = sid_of(i, base), gen_of(Message(i, i % BUCKETS, 0), base, s.dedup_window_ms)
        payload = f"stored-before {sid}".encode()
        await client.set(k.by_id(REGION, sid), payload, pxat=gen + s.retention_ms)
        await client.zadd(k.index(REGION), {sid: gen})
        if i % BUCKETS not in start.foreign | start.wrong_type:
            await client.set(k.dedup(REGION, TRIGGER, base // s.dedup_window_ms + i % BUCKETS),
                             sid, ex=s.dedup_window_s)
            model.markers[i % BUCKETS] = sid
        model.by_id[sid], model.index[sid] = (payload, gen + s.retention_ms), gen
    for b in start.foreign:
        await client.set(k.dedup(REGION, TRIGGER, base // s.dedup_window_ms + b), FOREIGN)
        model.markers[b] = FOREIGN
    for b in start.wrong_type - start.foreign:  # read as no marker, then replaced by one
        await client.rpush(k.dedup(REGION, TRIGGER, base // s.dedup_window_ms + b), "x")


async def state(client: aioredis.Redis, s: Settings, base: int) -> Model:
    k = s.keys
    seen = Model()
    for b in range(BUCKETS):
        key = k.dedup(REGION, TRIGGER, base // s.dedup_window_ms + b)
        if await client.type(key) == b"string":
            seen.markers[b] = (await client.get(key)).decode()
    seen.index = {m.decode(): int(g) for m, g in
                  await client.zrange(k.index(REGION), 0, -1, withscores=True)}
    for i in [*range(SIDS), None]:
        sid = FOREIGN if i is None else sid_of(i, base)
        payload = await client.get(k.by_id(REGION, sid))
        if payload is not None:
            seen.by_id[sid] = (payload, await client.pexpiretime(k.by_id(REGION, sid)))
    latest = await client.get(k.latest(REGION))
    seen.latest = latest.decode() if latest is not None else None
    return seen


@pytest.mark.timeout(300)
def test_a_call_decides_as_one_message_at_a_time_would(redis_url: str,
                                                       runner: asyncio.Runner) -> None:
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(starts, batches)
    def prop(start: Start, calls: list[list[Message]]) -> None:
        runner.run(check(start, calls))

    async def check(start: Start, calls: list[list[Message]]) -> None:
        tag = uuid.uuid4().hex[:10]
        s = Settings.load({"redis_url": redis_url, "stream": f"pm:{tag}", "group": f"g-{tag}",
                           "prefix": f"pm:{tag}", "name": "w"}, env={})
        client = connect(redis_url)
        base = now_ms() - s.dedup_window_ms * BUCKETS
        model = Model()
        try:
            await seed(client, s, start, model, base)
            entry = 0
            for call in calls:
                valid = []
                for m in call:
                    entry += 1
                    sid, gen = sid_of(m.sid, base), gen_of(m, base, s.dedup_window_ms)
                    valid.append(Valid(b"%d-%d" % (base, entry), REGION, sid, TRIGGER, gen,
                                       f"{sid} from entry {entry}".encode()))
                expected = [model.settle(v.snapshot_id, m.bucket, v.generated_at, v.payload,
                                         s.retention_ms) for v, m in zip(valid, call, strict=True)]
                before = model.latest
                settled = await settler(client, s).send(valid, (), ack=False)
                assert [o.fate for o in settled.outcomes] == expected
                seen = await state(client, s, base)
                assert seen.by_id == model.by_id
                assert seen.index == model.index
                assert seen.markers == model.markers
                assert seen.latest == model.latest
                if before is not None:  # never back
                    assert (model.index[seen.latest], seen.latest) >= (model.index[before], before)
                assert [k async for k in client.scan_iter(match=f"{s.prefix}:incoming:*")] == []
        finally:
            found = [k async for k in client.scan_iter(match=f"{s.prefix}:*", count=1000)]
            if found:
                await client.delete(*found)
            await client.aclose()

    prop()
