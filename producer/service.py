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

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from producer.publisher import Publisher
from producer.sources import Chunk, Limits, bounded_lines, read_lines, read_stream
from producer.synthetic import SyntheticSource
from shared.aio import abandon, pause
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
    rejected: int = 0  # source lines rejected (each said on stderr as it is found)


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
        """Publish each chunk while the next one is read and checked: the producer holds the
        chunk being published and the one being filled (from stdin, also up to a chunk of lines
        read ahead), whatever the size of the input and however slow Redis is. Stdin ends by
        itself once stopped, after yielding every line it had read; a file is left at the next
        chunk."""
        source = _aiter(chunks, self.stop)
        ahead = asyncio.ensure_future(anext(source, None))
        try:
            while (chunk := await ahead) is not None:
                ahead = asyncio.ensure_future(anext(source, None))
                self._note_rejected(chunk)
                if chunk.snapshots:
                    await pub.publish_until_done(chunk.snapshots, chunk.payloads, self.stop)
                    self.report.published += len(chunk.snapshots)
        finally:
            abandon(ahead)  # a publish failed for good: nothing more is read
        await self.trim(pub)

    def _note_rejected(self, chunk: Chunk) -> None:
        for r in chunk.rejected:
            self.report.rejected += 1
            self.metrics.rejected.inc()
            print(f"regionstream produce: rejected line {r.line}: {r.reason}", file=sys.stderr)

    async def run(self, deployment: Deployment, *, once: bool = False,
                  count: int | None = None, source: str = "synthetic", progress: bool = False
                  ) -> Report:
        """Publish until done or stopped; ``deployment`` routes each snapshot to its shard and
        node."""
        if source != "synthetic" and (count is not None or once):
            raise ValueError(f"source {source!r}: --count and --once are synthetic modes")
        pub = Publisher(deployment, self.settings, self.metrics)
        await pub.prepare(self.stop)
        if count is not None:
            await self.run_count(pub, count, progress)
        elif source == "synthetic":
            await self.run_cycles(pub, once=once)
        else:
            await self.run_file(pub, source)
        return self.report

    async def run_file(self, pub: Publisher, source: str) -> None:
        """JSON lines from ``source`` (``-``: stdin), read as they are published (see
        run_source: a few chunks held at most)."""
        s = self.settings
        limits = Limits(max_bytes=s.max_bytes, regions=s.regions)
        if source == "-":
            # Read from the descriptor, never through sys.stdin: its buffer would take bytes
            # past the lines published, gone from the pipe when the process stops.
            await self.run_source(pub, read_stream(sys.stdin.fileno(), size=s.chunk,
                                                   now=now_ms, limits=limits, stop=self.stop))
            return
        with open(source, "rb") as fh:  # noqa: ASYNC230 - a local file, read in chunks
            await self.run_source(pub, read_lines(bounded_lines(fh, s.max_bytes), size=s.chunk,
                                                  now_ms=now_ms(), limits=limits))


async def _aiter(chunks: AsyncIterator[Chunk] | Iterable[Chunk], stop: asyncio.Event
                 ) -> AsyncIterator[Chunk]:
    if isinstance(chunks, AsyncIterator):
        async for c in chunks:
            yield c
    else:
        for c in chunks:
            yield c
            if stop.is_set():
                return


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
