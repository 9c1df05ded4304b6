"""``regionstream top``: the live view of a running deployment, read from Redis alone.

It needs no metrics port and no access to the processes: stream length, lag, pending per
consumer, oldest pending age, dead letters, each region's latest snapshot, and rates computed
from Redis's own counters over a sliding window of the last ``RATES_WINDOW_S`` seconds
(``view.rates_over``): a producer publishing every 3 s read 8.0/s, 0.0, 0.0, 0.0, 8.0 between
consecutive frames. Duplicates per second (acked but not stored: the dedup rule) are derived
from the same counters and the regions' stored counts: acked minus persisted minus
dead-lettered."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
from collections import deque
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from rich.console import Console
from rich.live import Live
from rich.text import Text

from regionstream.parser import RATES_WINDOW_S
from regionstream.runtime import EXIT_OK
from regionstream.view import (
    Frame,
    collect,
    logs_through,
    rates_between,
    render,
    summary_line,
    window_base,
)
from shared.aio import pause
from shared.connection import ErrorKind, classify
from shared.keys import Keys
from shared.settings import Settings
from shared.shards import Deployment

# Redraw cadence: each frame is a round trip per shard (concurrent) and two per node, cheap
# enough for once a second, and rates over a second are still readable.
REFRESH_S = 1.0
LIVE_REDRAWS_PER_S = 4


log = logging.getLogger("regionstream.top")

# Piped (not a terminal), rich would squeeze the tables into 80 columns and cut region names.
PIPED_WIDTH = 140


def _console() -> Console:
    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


async def frames(redis: Deployment, keys: Keys, regions: tuple[str, ...],
                 stop: asyncio.Event, every: float = REFRESH_S,
                 window_s: float = RATES_WINDOW_S) -> AsyncIterator[Frame]:
    """Frames until ``stop``; every frame after the first carries rates over the last
    ``window_s`` seconds (at least since the previous frame: ``view.rates_over``)."""
    # Frames are at least ``every`` apart: this many always reach a frame ``window_s`` old.
    history: deque[Frame] = deque(maxlen=math.ceil(window_s / max(every, 0.01)) + 2)
    while not stop.is_set():
        try:
            frame = await collect(redis, keys, regions)
        except (RedisError, OSError) as exc:
            # A failover or a moved slot outlasting collect's own retries: the view waits it
            # out (it is when an operator needs it most) instead of exiting.
            if classify(exc) is not ErrorKind.TRANSIENT:
                raise
            log.warning("reading the deployment failed (%s); trying again", exc)
            await pause(stop, every)
            continue
        history.append(frame)
        if len(history) > 1:
            base = window_base(history, window_s)
            frame = dataclasses.replace(frame, rates=rates_between(base, frame),
                                        rates_window_s=frame.at - base.at)
        yield frame
        await pause(stop, every)


def plain_line(frame: Frame) -> Text:
    """The summary line as rich prints it: plain text, never read as markup (on a layout
    mismatch it names streams and a group, which may hold "[/]")."""
    return Text(summary_line(frame))


async def run_top(redis: Deployment, settings: Settings, *, once: bool = False,
                  plain: bool = False, every: float = REFRESH_S, console: Console | None = None,
                  stop: asyncio.Event | None = None) -> int:
    """``once``: one frame and exit. ``plain`` (or no terminal): a summary line per frame.
    Otherwise a live redrawn table until ``stop`` (Ctrl-C in the CLI)."""
    out = console or _console()
    keys = settings.keys
    if once:
        frame = await collect(redis, keys, settings.regions)
        out.print(plain_line(frame) if plain else render(frame), soft_wrap=plain)
        return EXIT_OK
    stop = stop or asyncio.Event()
    if plain or not out.is_terminal:
        async for frame in frames(redis, keys, settings.regions, stop, every):
            out.print(plain_line(frame), soft_wrap=True)
        return EXIT_OK
    with Live(console=out, refresh_per_second=LIVE_REDRAWS_PER_S) as live, logs_through(out):
        async for frame in frames(redis, keys, settings.regions, stop, every):
            live.update(render(frame, height=out.height))
    return EXIT_OK
