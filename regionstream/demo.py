"""``regionstream demo``: producer + a group of workers + a live view, self-contained.

Redis: REGIONSTREAM_REDIS_URL/--redis-url if given, else a private redis-server on a free port
in a temporary directory, else an in-process fakeredis server; it says which.

Early on (once the first cycle is stored and shown) it stages the failure handling the README stresses,
each said in an ``event:`` line (on stdout with --plain, under the table in the live view):
a poison entry is dead-lettered, and a killed worker's entries are reclaimed (``_Failures``).
The reclaimer runs with a short --min-idle-ms and --claim-interval-ms here (``DEMO_MIN_IDLE_MS``,
``DEMO_CLAIM_INTERVAL_MS``) so that this takes seconds, not the default minute."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import sys
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.text import Text

from consumer import scripts
from consumer.message import Poison, Reason
from consumer.service import Consumer
from consumer.settle import DEAD_LETTERED, FAILED, Outcome, Settled
from producer.service import Producer, now_ms
from regionstream.runtime import EXIT_FAILURE, EXIT_OK, session
from regionstream.top import frames
from regionstream.view import Frame, collect, logs_through, render, summary_line
from shared import wire
from shared.aio import pause
from shared.connection import describe_url
from shared.keys import Keys
from shared.schema import encode
from shared.servers import Server, redis_server_binary, start_fake_server, start_redis_server
from shared.settings import Settings
from shared.shards import Deployment, Shard

log = logging.getLogger("regionstream.demo")

REFRESH_S = 0.5
FIRST_FRAME_POLL_S = 0.02
RATE_KEYS = ("persisted", "duplicate", "dead_lettered")
# The view refreshes faster than cycles come, so a rate between two refreshes is 0 except in
# the one a cycle landed in. Rates span at least two cycles instead: a window of one cycle
# holds one burst or two (the rate swings twofold), a window of two holds two or three.
RATE_WINDOW_CYCLES = 2
MIN_RATE_WINDOW_S = 2.0

Sample = tuple[float, dict[str, int]]  # (monotonic time, the consumer's outcome totals)

# The demo's reclaimer takes a killed worker's entries over once idle 2 s, sweeping every
# second (the defaults, 60 s and 10 s, would keep the staged crash on screen for a minute). Only
# here: in a deployment a live worker's batch must never look idle (shared.settings).
DEMO_MIN_IDLE_MS = 2_000
DEMO_CLAIM_INTERVAL_MS = 1_000
POISON_PAYLOAD = b"{not json"  # the staged poison entry's payload (schema 1): undecodable
CRASHED = "crashed"  # the killed worker's consumer is <name>-crashed
EVENT_LINES = 4  # the live view shows the last this many events under the table
# The command's log format (regionstream.cli's basicConfig), for a run without a handler.


class Events:
    """The demo's ``event:`` lines (what it staged, and what became of it): printed at once
    with --plain, a line each; the last ``EVENT_LINES`` are shown under the live view's
    table, in the same words."""

    def __init__(self, plain: bool) -> None:
        self.plain = plain
        self.lines: deque[str] = deque(maxlen=EVENT_LINES)
        # The first frame is on screen: the staging waits for it, so that the demo opens on
        # the happy path (and --plain's first line is a summary line, as before).
        self.shown = asyncio.Event()
        self.said = 0  # changes begun and events said so far (see _fresh)
        self.busy = False  # a change has begun and is not said yet

    def begin(self) -> None:
        """A change the next event will tell of starts on Redis: frames collected from now
        until it is said are not shown (see _fresh)."""
        self.said += 1
        self.busy = True

    def say(self, line: str) -> None:
        self.said += 1
        self.busy = False
        self.lines.append(line)
        if self.plain:
            print(f"event: {line}", flush=True)

    def renderable(self) -> Group:
        """A line each (never read as markup; cut to the width, not wrapped: as many lines
        as events), ``event:`` in front."""
        return Group(*(Text.assemble(("event: ", "bold yellow"), line, no_wrap=True,
                                     overflow="ellipsis") for line in self.lines))


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


EntryKey = tuple[str, bytes]  # (region, entry id): an entry of any shard


def _region_of(fields: dict[bytes, bytes]) -> str:
    """The region an outcome names for an entry with these fields (``Poison.region``'s rule
    for one that is not valid)."""
    return Poison(b"", fields, Reason.CHECK_FAILED, "").region


class Failures:
    """The failure handling the README stresses, staged once the first cycle is stored and
    shown, each step said as an event:

    - a poison entry (schema 1, payload ``{not json``) on the first shard's stream: a worker
      dead-letters it, reason undecodable;
    - a killed worker: the consumer ``<name>-crashed`` reads a cycle's entries and never
      acknowledges them, as a worker killed mid-batch leaves them (the cycle's XADDs and its
      XREADGROUP go in one MULTI per shard, so that no live worker reads them first); the
      reclaimer claims them once idle ``DEMO_MIN_IDLE_MS`` and settles them. The name is then
      forgotten (a reclaimer forgets a dead consumer only after --consumer-timeout, an hour),
      so that the view counts the banner's consumers again.

    What became of each entry is learnt through the consumer's ``on_settled`` seam. A Redis
    error ends the staging with a warning; the demo goes on."""

    def __init__(self, s: Settings, producer: Producer, events: Events, stop: asyncio.Event
                 ) -> None:
        self.s, self.producer, self.events, self.stop = s, producer, events, stop
        # The killed worker's cycle is generated one dedup window before the demo began: the
        # producer's cycles take a bucket each from then on, and one of them in its bucket
        # would make the reclaimed snapshots duplicates (stored none, rightly).
        self.crash_cycle_ms = now_ms() - s.dedup_window_ms
        self.crashed = s.keys.consumer_name(s.name, CRASHED)
        self.reclaimer = s.keys.reclaimer_name(s.name)
        self.started = False  # the consumer settled something: the first cycle is stored
        # Entries by (region, id): with --shard-by region every region has a stream of its
        # own, and entries of two streams may have one id.
        self.watched: set[EntryKey] = set()  # the killed worker's entries
        self.outcomes: dict[EntryKey, Outcome] = {}  # dead letters, and the watched entries'
        self.changed = asyncio.Event()
        self.held: list[Shard] = []  # the shards the killed worker read from

    async def tidy(self, deployment: Deployment) -> None:
        """At the end, whenever it comes (Ctrl-C before the reclaim): what the killed worker
        still holds goes to the demo's first worker, which settles it first at the next start
        (dropping it from the group would lose it: the group has read past it), and the
        killed worker is forgotten: no consumer that never existed is left on a Redis the
        user pointed the demo at."""
        worker = self.s.keys.consumer_name(self.s.name, 0)
        try:
            for shard in self.held:
                client, k = deployment.client_for(shard), shard.keys
                rows: Any = await client.xpending_range(k.stream, k.group, "-", "+", 10_000,
                                                        self.crashed)
                if rows:
                    await client.xclaim(k.stream, k.group, worker, 0,
                                        [r["message_id"] for r in rows])
                await scripts.call(client, scripts.forget_consumer(), [k.stream],
                                   [k.group, self.crashed, 0])
        except (RedisError, OSError) as exc:
            log.warning("could not hand the killed worker's entries to %s (%s): they stay "
                        "pending under %s, reclaimed after --min-idle-ms", worker, exc,
                        self.crashed)

    def on_settled(self, settled: Settled) -> None:
        """The consumer's seam: called with every batch settled, by workers and reclaimers."""
        for o in settled.outcomes:
            self.started = True
            key = (o.region, o.entry_id)
            if o.fate is DEAD_LETTERED or (key in self.watched and o.fate is not FAILED):
                self.outcomes[key] = o
        self.changed.set()

    async def _until(self, ready: Callable[[], bool]) -> bool:
        """Until ``ready()``, asked after every settled batch; False: stopped first."""
        while not self.stop.is_set():
            self.changed.clear()
            if ready():
                return True
            await _either(self.changed, self.stop)
        return False

    async def run(self, deployment: Deployment) -> None:
        try:
            await self._run(deployment)
        except (RedisError, OSError) as exc:
            log.warning("staging the demo's failures failed (%s); the demo goes on", exc)
        except Exception:  # a bug: said with its traceback (the task's end is awaited by no one)
            log.exception("staging the demo's failures failed; the demo goes on")
        finally:
            self.events.busy = False  # a change begun and never said: the view goes on

    async def _run(self, deployment: Deployment) -> None:
        await _either(self.events.shown, self.stop)
        if not await self._until(lambda: self.started):
            return
        if not await self._poison(deployment, deployment.shards[0]):
            return
        self.events.begin()
        held = self.held = await self._kill_a_worker(deployment)
        killed_at = time.monotonic()
        n = len(self.watched)
        self.events.say(f"worker {self.crashed} killed holding {n} entries it never "
                        "acknowledged")
        if not n or not await self._until(lambda: self.watched <= self.outcomes.keys()):
            return
        idle_s = time.monotonic() - killed_at
        self.events.begin()
        for shard in held:  # none of them pending any more: forgotten (forget_consumer.lua)
            await scripts.call(deployment.client_for(shard), scripts.forget_consumer(),
                               [shard.keys.stream], [shard.keys.group, self.crashed, 0])
        fates = Counter(str(self.outcomes[key].fate) for key in self.watched)
        self.events.say(f"{self.crashed}'s {n} entries reclaimed after {idle_s:.1f} s idle: "
                        + ", ".join(f"{fate} {k}" for fate, k in sorted(fates.items())))

    async def _poison(self, deployment: Deployment, shard: Shard) -> bool:
        """Publish the poison entry; say what became of it. False: stopped first."""
        region = shard.region or self.s.regions[0]
        fields: dict[Any, Any] = {wire.F_REGION: region.encode(), wire.F_SCHEMA: wire.SCHEMA,
                                  wire.F_PAYLOAD: POISON_PAYLOAD}
        added = await deployment.client_for(shard).xadd(shard.keys.stream, fields)
        entry_id = added if isinstance(added, bytes) else str(added).encode()
        if not await self._until(lambda: (region, entry_id) in self.outcomes):
            return False
        o = self.outcomes[region, entry_id]
        self.events.say(f"poison entry {entry_id.decode()} ({POISON_PAYLOAD.decode()!r}) "
                        f"dead-lettered: {o.reason}")
        return True

    async def _kill_a_worker(self, deployment: Deployment) -> list[Shard]:
        """A cycle published and read by ``<name>-crashed``, in one MULTI per shard; what it
        read (all of the cycle, and any entry not yet delivered before it) is watched. The
        shards where it holds entries."""
        snaps = self.producer.source.cycle(self.crash_cycle_ms)

        async def publish_and_read(shard: Shard) -> list[EntryKey]:
            mine = [x for x in snaps if shard.region in (None, x.region_id)]
            pipe = deployment.client_for(shard).pipeline(transaction=True)
            for snap in mine:
                fields: dict[Any, Any] = wire.entry_fields(snap, encode(snap))
                pipe.xadd(shard.keys.stream, fields)
            pipe.xreadgroup(shard.keys.group, self.crashed, {shard.keys.stream: ">"},
                            count=len(mine))
            read = (await pipe.execute())[-1]
            return [(_region_of(got), entry_id) for entry_id, got in read[0][1]
                    if got is not None] if read else []

        read = await asyncio.gather(*(publish_and_read(shard) for shard in deployment.shards))
        self.watched = {key for keys in read for key in keys}
        return [shard for shard, keys in zip(deployment.shards, read, strict=True) if keys]


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
        # The reclaimer is quick too: the staged killed worker's entries are taken over in
        # seconds (DEMO_MIN_IDLE_MS).
        s = dataclasses.replace(settings, redis_url=url, interval_s=interval_s, workers=workers,
                                dedup_window_s=max(1, int(interval_s)), shards=(),
                                min_idle_ms=DEMO_MIN_IDLE_MS,
                                claim_interval_ms=DEMO_CLAIM_INTERVAL_MS)
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
            events = Events(plain)
            producer = Producer(s, registry=registry, stop=stop)
            failures = Failures(s, producer, events, stop)
            consumer = Consumer(s, registry=registry, stop=stop, on_settled=failures.on_settled)
            # The view counts consumers by name over every shard: the workers and the
            # reclaimer, each serving every shard under one name (and the killed worker's
            # name, while it holds entries).
            err.print(f"[bold]demo[/]: {len(s.regions)} regions every {interval_s:g}s -> stream "
                      f"{escape(repr(s.stream))} -> group {escape(repr(s.group))} "
                      f"({workers + 1} consumers: {workers} worker{'s' if workers > 1 else ''} "
                      "+ 1 reclaimer); Ctrl-C stops")
            err.print(f"[bold]demo[/]: early on, a poison entry is dead-lettered and a killed "
                      f"worker's entries are reclaimed (after {s.min_idle_ms / 1000:g} s idle: "
                      f"the demo runs --min-idle-ms {s.min_idle_ms} --claim-interval-ms "
                      f"{s.claim_interval_ms})")
            tasks = [asyncio.create_task(producer.run(deployment)),
                     asyncio.create_task(consumer.run(deployment))]
            staged = asyncio.create_task(failures.run(deployment))
            try:
                await _show(deployment, consumer.keys, s, consumer.totals, stop, events)
                await asyncio.gather(*tasks)
            finally:
                stop.set()
                for t in (*tasks, staged):
                    t.cancel()
                await asyncio.gather(*tasks, staged, return_exceptions=True)
                await failures.tidy(deployment)
                final = await collect(deployment, consumer.keys, s.regions)
        print("final: " + summary_line(final), flush=True)
        with_latest = sum(1 for r in final.regions if r.snapshot_id)
        return EXIT_OK if with_latest == len(s.regions) else EXIT_FAILURE


async def _fresh(frames: AsyncIterator[Frame], events: Events) -> AsyncIterator[Frame]:
    """``frames`` but those collected while a change was under way on Redis or an event was
    said: such a frame may show Redis half-way (the killed worker counted before its event
    is said, or still counted after its entries were reclaimed), on the wrong side of the
    event's line. The next frame comes one interval later."""
    said = events.said
    async for frame in frames:
        if events.said == said and not events.busy:
            yield frame
        said = events.said


async def _show(client: Deployment, keys: Keys, s: Settings,
                totals: Callable[[], dict[str, int]], stop: asyncio.Event, events: Events
                ) -> None:
    if events.plain:
        async for frame in _fresh(_frames(client, keys, s, totals, stop,
                                          max(s.interval_s, 1.0)), events):
            print(summary_line(frame), flush=True)
            events.shown.set()
        return
    console = Console(file=sys.stdout)
    with Live(console=console, refresh_per_second=4) as live, logs_through(console):
        async for frame in _fresh(_frames(client, keys, s, totals, stop, REFRESH_S), events):
            live.update(screen(frame, events, console.height))
            events.shown.set()


def screen(frame: Frame, events: Events, height: int) -> RenderableType:
    """The view, then the events under it (a line each): the view gets the terminal's height
    less theirs, and leaves out what does not fit (``render``), so the events stay in view.
    At 80x24 all of it fits: 20 lines of view (21 while the killed worker is counted), 3 of
    events."""
    return Group(render(frame, height=height - len(events.lines)), events.renderable())


