"""``regionstream demo``: producer + a group of workers + a live view, self-contained.

Redis: REGIONSTREAM_REDIS_URL/--redis-url if given, else a private redis-server on a free port
in a temporary directory, else an in-process fakeredis server; it says which."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from consumer.service import Consumer
from producer.service import Producer
from regionstream.runtime import EXIT_FAILURE, EXIT_OK, session
from regionstream.top import frames
from regionstream.view import Frame, collect, logs_through, render, summary_line
from shared.aio import pause
from shared.connection import describe_url
from shared.keys import Keys
from shared.servers import Server, redis_server_binary, start_fake_server, start_redis_server
from shared.settings import Settings
from shared.shards import Deployment

REFRESH_S = 0.5
FIRST_FRAME_POLL_S = 0.02
RATE_KEYS = ("persisted", "duplicate", "dead_lettered")
# The view refreshes faster than cycles come, so a rate between two refreshes is 0 except in
# the one a cycle landed in. Rates span at least two cycles instead: a window of one cycle
# holds one burst or two (the rate swings twofold), a window of two holds two or three.
RATE_WINDOW_CYCLES = 2
MIN_RATE_WINDOW_S = 2.0

Sample = tuple[float, dict[str, int]]  # (monotonic time, the consumer's outcome totals)


def rate_window_s(interval_s: float) -> float:
    return max(RATE_WINDOW_CYCLES * interval_s, MIN_RATE_WINDOW_S)


def windowed_rates(samples: Sequence[Sample], window_s: float) -> dict[str, float]:
    """Per-second rates from the newest sample at least ``window_s`` older than the last one
    (the oldest while none is that old yet) to the last one."""
    if len(samples) < 2:
        return {}
    now_t, now = samples[-1]
    base_t, base = samples[0]
    for t, totals in samples:
        if t > now_t - window_s:
            break
        base_t, base = t, totals
    dt = max(now_t - base_t, 1e-9)
    return {k: (v - base.get(k, 0)) / dt for k, v in now.items() if k in RATE_KEYS}


@contextlib.contextmanager
def _server(settings: Settings, explicit: bool, err: Console) -> Iterator[Server | None]:
    """The Redis to run on: the one given (None), else a private one, stopped on leaving."""
    if explicit:
        err.print(f"[bold]demo[/]: using Redis at {escape(describe_url(settings.redis_url))}")
        yield None
        return
    server: Server
    if redis_server_binary():
        server = start_redis_server()
        err.print(f"[bold]demo[/]: started a private redis-server at {server.url}")
    else:
        server = start_fake_server()
        err.print(f"[bold]demo[/]: redis-server not found; using in-process fakeredis at "
                  f"{server.url} (install redis-server for the real thing)")
    with server:
        yield server


async def _frames(client: Deployment, keys: Keys, settings: Settings,
                  totals: Callable[[], dict[str, int]], stop: asyncio.Event, every: float
                  ) -> AsyncIterator[Frame]:
    """``top``'s frames, with the rates of this process's own outcomes in place of the
    stream-wide ones (the demo knows what it persisted, deduplicated and dead-lettered),
    over a sliding window (see RATE_WINDOW_CYCLES)."""
    window_s = rate_window_s(settings.interval_s)
    # Samples are at least ``every`` apart: this many always cover the window.
    samples: deque[Sample] = deque(maxlen=math.ceil(window_s / every) + 2)
    samples.append((time.monotonic(), totals()))
    await _first_cycle(totals, stop, every)
    async for frame in frames(client, keys, settings.regions, stop, every):
        now_totals = totals()
        samples.append((time.monotonic(), now_totals))
        done = ", ".join(f"{k} {v}" for k, v in now_totals.items() if v)
        # No rate before one interval has passed: the first cycle over the few milliseconds
        # since start would read as hundreds per second.
        span = samples[-1][0] - samples[0][0]
        rates = windowed_rates(samples, window_s) if span >= settings.interval_s else {}
        yield dataclasses.replace(frame, rates=rates,
                                  note=f"totals: {done}")


async def _first_cycle(totals: Callable[[], dict[str, int]], stop: asyncio.Event,
                       every: float) -> None:
    """Until the consumer has settled its first entries, at most ``every``: the first frame
    shows the first cycle, not an empty store, and as soon as it is stored (a fixed wait of
    one interval made the first snapshot appear 2 s after start)."""
    deadline = time.monotonic() + every
    while not any(totals().values()) and time.monotonic() < deadline:
        if await pause(stop, FIRST_FRAME_POLL_S):
            return


async def run_demo(settings: Settings, *, duration: float | None, interval_s: float,
                   workers: int, plain: bool, explicit_url: bool) -> int:
    err = Console(stderr=True)
    # The screen shows every cycle; a log line per cycle would only tear the live view.
    logging.getLogger("regionstream.producer").setLevel(logging.WARNING)
    with _server(settings, explicit_url, err) as server:
        url = settings.redis_url if server is None else server.url
        # The cadence is accelerated from hours to seconds; the dedup window shrinks with it, or
        # every cycle after the first would land in a taken 15-minute bucket.
        # Every shard, whatever REGIONSTREAM_SHARDS says: the demo is the whole pipeline.
        s = dataclasses.replace(settings, redis_url=url, interval_s=interval_s, workers=workers,
                                dedup_window_s=max(1, int(interval_s)), shards=())
        stop = asyncio.Event()
        # Cluster or not, found out as every command does: the producer publishes, and the
        # view reads, through the deployment's routing; the consumer makes its workers' own.
        # Its own server never evicts (noeviction, no maxmemory): checked on a given one only.
        # A second signal exits at once: the private server is stopped first, not orphaned.
        async with session(s, subset=False, writes=explicit_url, stop=stop,
                           before_exit=None if server is None else server.stop) as deployment:
            if duration is not None:
                asyncio.get_running_loop().call_later(duration, stop.set)
            registry = CollectorRegistry()
            producer = Producer(s, registry=registry, stop=stop)
            consumer = Consumer(s, registry=registry, stop=stop)
            err.print(f"[bold]demo[/]: {len(s.regions)} regions every {interval_s:g}s -> stream "
                      f"{escape(repr(s.stream))} -> group {escape(repr(s.group))} ({workers} "
                      "workers); Ctrl-C stops")
            tasks = [asyncio.create_task(producer.run(deployment)),
                     asyncio.create_task(consumer.run(deployment))]
            try:
                await _show(deployment, consumer.keys, s, consumer.totals, stop, plain)
                await asyncio.gather(*tasks)
            finally:
                stop.set()
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                final = await collect(deployment, consumer.keys, s.regions)
        print("final: " + summary_line(final), flush=True)
        with_latest = sum(1 for r in final.regions if r.snapshot_id)
        return EXIT_OK if with_latest == len(s.regions) else EXIT_FAILURE


async def _show(client: Deployment, keys: Keys, s: Settings,
                totals: Callable[[], dict[str, int]], stop: asyncio.Event, plain: bool) -> None:
    if plain:
        async for frame in _frames(client, keys, s, totals, stop, max(s.interval_s, 1.0)):
            print(summary_line(frame), flush=True)
        return
    console = Console(file=sys.stdout)
    with Live(console=console, refresh_per_second=4) as live, logs_through(console):
        async for frame in _frames(client, keys, s, totals, stop, REFRESH_S):
            live.update(render(frame))
