"""Load for the benchmarks: prefilled streams, a producer at a fixed rate, and tidying up.

Snapshots come from ``producer.synthetic.SyntheticSource.snapshot_for_count``: every one is a
distinct (region, trigger_reason, bucket), so the consumer persists each (no dedup shortcut)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from bench.config import Context
from producer.publisher import Publisher
from producer.synthetic import SyntheticSource
from shared.connection import connect
from shared.keys import Keys
from shared.schema import Snapshot, encode
from shared.servers import start_redis_server
from shared.settings import Settings
from shared.shards import single_server

SEED = 5  # the number: every run publishes the same snapshots
CHUNK = 500  # entries per pipelined XADD round trip (the producer's own --count chunk)
TICK_S = 0.005  # the paced producer publishes what is due every 5 ms
UNLINK_BATCH = 1000
SCAN_COUNT = 1000
MS_PER_S = 1000


def now_ms() -> int:
    return int(time.time() * MS_PER_S)


class Load:
    """Snapshot ``i`` of a run, encoded; one instance numbers snapshots across calls so two
    batches never repeat an id."""

    def __init__(self, settings: Settings, seed: int = SEED) -> None:
        self.source = SyntheticSource(settings.regions, seed=seed)
        self.base_ms = now_ms()
        self.next_i = 0
        self.bytes_total = 0

    def take(self, n: int) -> tuple[list[Snapshot], list[bytes]]:
        snaps = [self.source.snapshot_for_count(i, self.base_ms)
                 for i in range(self.next_i, self.next_i + n)]
        self.next_i += n
        payloads = [encode(s) for s in snaps]
        self.bytes_total += sum(map(len, payloads))
        return snaps, payloads

    @property
    def mean_bytes(self) -> float:
        return self.bytes_total / self.next_i if self.next_i else 0.0


@dataclass
class Prefilled:
    stream: str
    count: int
    mean_payload_bytes: float


async def prefill(redis: aioredis.Redis, settings: Settings, stream: str, count: int,
                  on_progress: Callable[[int], None] | None = None) -> Prefilled:
    """``count`` snapshots on ``stream``, published in chunks (no group: each contender makes
    its own, from id 0, so they all see the same entries)."""
    keys = Keys("bench-prefill", stream, "bench-prefill")
    pub = Publisher(single_server(settings.redis_url, redis, keys, settings.regions), settings)
    load = Load(settings)
    done = 0
    while done < count:
        snaps, payloads = load.take(min(CHUNK, count - done))
        await pub.publish(snaps, payloads)
        done += len(snaps)
        if on_progress is not None:
            on_progress(done)
    return Prefilled(stream, count, load.mean_bytes)


@contextlib.asynccontextmanager
async def prefilled_server(ctx: Context, name: str, count: int
                           ) -> AsyncIterator[tuple[str, aioredis.Redis, Prefilled]]:
    """A private redis-server whose stream ``bench:<run>:<name>`` holds ``count`` snapshots;
    yields its URL, a direct client and what was prefilled."""
    with start_redis_server() as server:
        direct = connect(server.url)
        try:
            stream = f"bench:{ctx.run_id}:{name}"
            with ctx.display.task("prefilling", count) as update:
                pre = await prefill(direct, ctx.settings(server.url), stream, count, update)
            yield server.url, direct, pre
        finally:
            await direct.aclose()


async def produce_at_rate(redis: aioredis.Redis, settings: Settings, keys: Keys, rate: float,
                          duration_s: float) -> int:
    """Publish ``rate`` messages a second for ``duration_s``: every tick, what is due since
    the start (so a late tick catches up rather than drifting). Returns how many were sent."""
    pub = Publisher(single_server(settings.redis_url, redis, keys, settings.regions), settings)
    load = Load(settings)
    total = int(rate * duration_s)
    sent = 0
    t0 = time.monotonic()
    while sent < total:
        elapsed = time.monotonic() - t0
        due = min(total, int(rate * elapsed)) - sent
        if due > 0:
            snaps, payloads = load.take(min(CHUNK, due))
            await pub.publish(snaps, payloads)
            sent += len(snaps)
        await asyncio.sleep(TICK_S)
    return sent


async def delete_prefix(redis: aioredis.Redis, prefix: str) -> int:
    """UNLINK every key under ``prefix:`` (a contender's store) to keep the server small."""
    n = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=SCAN_COUNT):
        batch.append(key)
        if len(batch) >= UNLINK_BATCH:
            n += await redis.unlink(*batch)
            batch.clear()
    if batch:
        n += await redis.unlink(*batch)
    return n
