"""The producer process: synthetic cycles (--once / --interval), a load generator (--count),
or JSON lines from a file or stdin."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from producer.publisher import Publisher
from producer.sources import Chunk, read_lines, read_stream, stdin_bytes
from producer.synthetic import SyntheticSource
from shared.aio import pause
from shared.metrics import ProducerMetrics
from shared.schema import encode
from shared.settings import Settings
from shared.shards import Deployment

log = logging.getLogger("regionstream.producer")

# Trim the stream every this many published chunks in --count mode (trimming costs two round
# trips; once per chunk would double the load generator's round trips).
TRIM_EVERY_CHUNKS = 20


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Report:
    published: int = 0
    cycles: int = 0
    rejected: list[str] = field(default_factory=list)


@dataclass
class Producer:
    settings: Settings
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    seed: int | None = None
    on_cycle: Callable[[list[bytes]], None] | None = None

    def __post_init__(self) -> None:
        s = self.settings
        self.keys = s.keys
        self.metrics = ProducerMetrics(self.registry, s.regions)
        self.source = SyntheticSource(s.regions, seed=self.seed,
                                      dedup_window_ms=s.dedup_window_ms)
        self.report = Report()

    async def cycle(self, pub: Publisher) -> list[bytes]:
        """One cycle: a snapshot per region, published in one round trip (again while Redis
        is unavailable: Publisher.publish_until_done), then a trim."""
        snaps = self.source.cycle(now_ms())
        started = time.perf_counter()
        ids = await pub.publish_until_done(snaps, None, self.stop)
        await self.trim(pub)
        self.metrics.cycle_seconds.observe(time.perf_counter() - started)
        self.metrics.last_success.set_to_current_time()
        self.report.published += len(ids)
        self.report.cycles += 1
        log.info("cycle %d: published %d snapshots to %s (%s .. %s) in %.1f ms",
                 self.report.cycles, len(ids), pub.describe(), ids[0].decode(),
                 ids[-1].decode(), (time.perf_counter() - started) * 1000)
        if self.on_cycle is not None:
            self.on_cycle(ids)
        return ids

    async def trim(self, pub: Publisher) -> None:
        try:
            await pub.trim()
        except (RedisError, OSError) as exc:  # what is published stays; trimming can wait
            log.warning("trimming the stream failed: %s", exc)

    async def run_cycles(self, pub: Publisher, *, once: bool) -> None:
        while not self.stop.is_set():
            await self.cycle(pub)
            if once:
                return
            await pause(self.stop, self.settings.interval_s)

    async def run_count(self, pub: Publisher, count: int, progress: bool) -> None:
        """The load generator: ``count`` snapshots, all distinct after dedup, in chunks."""
        base = now_ms()
        size = self.settings.chunk
        with _progress(progress, count) as advance:
            for n, start in enumerate(range(0, count, size)):
                if self.stop.is_set():
                    break
                snaps = [self.source.snapshot_for_count(i, base)
                         for i in range(start, min(count, start + size))]
                await pub.publish_until_done(snaps, [encode(s) for s in snaps], self.stop)
                self.report.published += len(snaps)
                if n % TRIM_EVERY_CHUNKS == TRIM_EVERY_CHUNKS - 1:
                    await self.trim(pub)
                advance(len(snaps))
        await self.trim(pub)
        self.metrics.last_success.set_to_current_time()

    async def run_source(self, pub: Publisher, chunks: AsyncIterator[Chunk] | Iterable[Chunk]
                         ) -> None:
        async for chunk in _aiter(chunks):
            for r in chunk.rejected:
                msg = f"line {r.line}: {r.reason}"
                self.report.rejected.append(msg)
                self.metrics.rejected.inc()
                print(f"regionstream produce: rejected {msg}", file=sys.stderr)
            if chunk.snapshots:
                await pub.publish_until_done(chunk.snapshots, chunk.payloads, self.stop)
                self.report.published += len(chunk.snapshots)
            if self.stop.is_set():
                break
        await self.trim(pub)

    async def run(self, redis: aioredis.Redis, *, once: bool = False, count: int | None = None,
                  source: str = "synthetic", progress: bool = False,
                  deployment: Deployment | None = None) -> Report:
        """Publish until done or stopped; ``deployment`` routes each snapshot to its shard and
        node (default: one server through ``redis``, in the --shard-by layout)."""
        pub = Publisher(redis, self.keys, self.settings, self.metrics, deployment)
        await pub.prepare()
        s = self.settings
        if count is not None:
            await self.run_count(pub, count, progress)
        elif source == "synthetic":
            await self.run_cycles(pub, once=once)
        elif source == "-":
            await self.run_source(pub, read_stream(stdin_bytes(), size=s.chunk, now=now_ms,
                                                   regions=s.regions))
        else:
            with open(source, "rb") as fh:  # noqa: ASYNC230 - a local file, read in chunks
                await self.run_source(pub, read_lines(fh, size=s.chunk, now_ms=now_ms(),
                                                      regions=s.regions))
        return self.report


async def _aiter(chunks: AsyncIterator[Chunk] | Iterable[Chunk]) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterator):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c


def _progress(enabled: bool, total: int) -> AbstractContextManager[Callable[[int], None]]:
    if not enabled:
        return nullcontext(lambda n: None)
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    @contextmanager
    def bar():  # type: ignore[no-untyped-def]
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeRemainingColumn(), transient=False) as p:
            task = p.add_task("publishing", total=total)
            yield lambda n: p.advance(task, n)

    return bar()
