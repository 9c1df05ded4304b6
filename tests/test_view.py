"""The live view (the demo's screen and ``regionstream top``), rendered from a known Redis state."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time

import redis.asyncio as aioredis
from rich.console import Console

from regionstream.cli import main
from regionstream.top import frames, run_top
from regionstream.view import Frame, collect, rates_between, render, summary_line
from shared.keys import Keys
from shared.schema import REGIONS
from shared.settings import Settings
from tests.helpers import drain, publish_cycle

# Whole seconds, so region ages against a frame taken at NOW + 60 s are exact.
NOW_MS = int(time.time()) * 1000
GHOST_READ = 3
WIDE = 200  # columns: no cell of the table is truncated


async def known_state(client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """One cycle persisted; a second cycle published, 3 of it held by a consumer that never
    acks (5 undelivered); one dead letter."""
    await publish_cycle(client, settings, NOW_MS, seed=1)
    await drain(client, settings)
    await publish_cycle(client, settings, NOW_MS + 1000, seed=2)
    await client.xreadgroup(keys.group, "ghost", {keys.stream: ">"}, count=GHOST_READ)
    await client.xadd(keys.dlq, {b"reason": b"undecodable"})


def text_of(frame: Frame) -> str:
    out = io.StringIO()
    Console(file=out, width=WIDE, color_system=None).print(render(frame))
    return out.getvalue()


async def test_frame_from_a_known_state(client: aioredis.Redis, settings: Settings,
                                        keys: Keys) -> None:
    await known_state(client, settings, keys)
    frame = await collect(client, keys, settings.regions, now=NOW_MS / 1000 + 60)
    assert (frame.stream_length, frame.lag, frame.pending, frame.dlq_length) == (
        16, len(REGIONS) - GHOST_READ, GHOST_READ, 1)
    assert {c.name: c.pending for c in frame.consumer_rows}["ghost"] == GHOST_READ
    assert frame.oldest_pending_age_s is not None and frame.oldest_pending_age_s >= 0
    assert frame.entries_added == 16 and frame.dlq_added == 1
    assert all(r.snapshot_id and r.regime for r in frame.regions)
    # only the first cycle is persisted: the second is pending or undelivered
    assert [r.stored for r in frame.regions] == [1] * len(REGIONS)
    assert {r.age_s for r in frame.regions} == {60.0}  # generated_at against the frame's now

    text = text_of(frame)
    for expected in (f"stream {keys.stream}", "length 16", "dead letters 1", "lag 5",
                     "pending 3", "ghost", "60s", *REGIONS):
        assert expected in text, expected
    for row in frame.regions:
        assert row.regime and row.snapshot_id
        assert row.regime in text and row.snapshot_id in text
    line = summary_line(frame)
    assert "lag=5 pending=3" in line and "dlq=1" in line and "regions_with_latest=8/8" in line


async def test_empty_deployment_renders(client: aioredis.Redis, settings: Settings,
                                        keys: Keys) -> None:
    frame = await collect(client, keys, settings.regions)
    text = text_of(frame)
    assert "lag ?" in text and "oldest pending -" in text and "consumers 0/0" in text
    assert "regions_with_latest=0/8" in summary_line(frame)


def test_rates_from_redis_counters() -> None:
    before = Frame(100.0, "s", "g", pending=2, entries_added=10, entries_read=8, dlq_added=0)
    after = dataclasses.replace(before, at=102.0, pending=4, entries_added=30, entries_read=20,
                                dlq_added=2)
    assert rates_between(before, after) == {"published": 10.0, "delivered": 6.0, "acked": 5.0,
                                            "dead_lettered": 1.0}
    assert "dead_lettered" not in rates_between(dataclasses.replace(before, dlq_added=None),
                                                after)


def test_demo_hooks_still_work() -> None:
    """The demo replaces rates and note on a collected frame; both are rendered."""
    frame = dataclasses.replace(Frame(0.0, "s", "g"), rates={"persisted": 2.5},
                                note="totals: persisted 5")
    text = text_of(frame)
    assert "persisted 2.5/s" in text and "totals: persisted 5" in text


async def test_top_once(client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    await known_state(client, settings, keys)
    out = io.StringIO()
    assert await run_top(client, settings, once=True,
                         console=Console(file=out, width=WIDE, color_system=None)) == 0
    assert "pending 3" in out.getvalue() and "ghost" in out.getvalue()


async def test_top_frames_carry_rates(client: aioredis.Redis, settings: Settings,
                                      keys: Keys) -> None:
    await known_state(client, settings, keys)
    stop = asyncio.Event()
    seen: list[Frame] = []
    async for frame in frames(client, keys, settings.regions, stop, every=0.0):
        seen.append(frame)
        if len(seen) == 2:
            stop.set()
    assert seen[0].rates == {}
    assert set(seen[1].rates) == {"published", "delivered", "acked", "dead_lettered"}


def test_top_command_once_plain(settings: Settings, capsys: object) -> None:
    code = main(["top", "--once", "--plain", "--redis-url", settings.redis_url,
                 "--stream", settings.stream, "--group", settings.group,
                 "--prefix", settings.prefix])
    assert code == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "stream=0 lag=None pending=0" in out
