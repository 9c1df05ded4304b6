"""The live view (the demo's screen and ``regionstream top``), rendered from a known Redis state."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import time

import pytest
import redis.asyncio as aioredis
from rich.console import Console
from rich.live import Live

from regionstream.cli import main
from regionstream.demo import Sample, rate_window_s, windowed_rates
from regionstream.top import frames, run_top
from regionstream.view import Frame, collect, logs_through, rates_between, render, summary_line
from shared.keys import Keys
from shared.schema import REGIONS
from shared.settings import Settings
from tests.helpers import deployed, drain, publish_cycle

# Whole seconds, so region ages against a frame taken at NOW + 60 s are exact.
NOW_MS = int(time.time()) * 1000
GHOST_READ = 3
WIDE = 200  # columns: no cell of the table is truncated


async def known_state(client: aioredis.Redis, settings: Settings, keys: Keys) -> None:
    """One cycle persisted; a second cycle published, 3 of it held by a consumer that never
    acks (5 undelivered); one dead letter."""
    await publish_cycle(client, settings, NOW_MS, seed=1)
    await drain(settings)
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
    frame = await collect(deployed(client, settings), keys, settings.regions,
                          now=NOW_MS / 1000 + 60)
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
    frame = await collect(deployed(client, settings), keys, settings.regions)
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
    assert await run_top(deployed(client, settings), settings, once=True,
                         console=Console(file=out, width=WIDE, color_system=None)) == 0
    assert "pending 3" in out.getvalue() and "ghost" in out.getvalue()


async def test_top_frames_carry_rates(client: aioredis.Redis, settings: Settings,
                                      keys: Keys) -> None:
    await known_state(client, settings, keys)
    stop = asyncio.Event()
    seen: list[Frame] = []
    async for frame in frames(deployed(client, settings), keys, settings.regions, stop, every=0.0):
        seen.append(frame)
        if len(seen) == 2:
            stop.set()
    assert seen[0].rates == {}
    assert set(seen[1].rates) == {"published", "delivered", "acked", "dead_lettered"}


async def test_top_waits_out_a_failover(client: aioredis.Redis, settings: Settings, keys: Keys,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A read failing for longer than collect's own retries (a master being replaced): top
    goes on with the next frame instead of exiting; a non-transient error still ends it."""
    from redis.exceptions import ClusterDownError, ResponseError

    import regionstream.top as top

    real, calls = top.collect, {"n": 0}

    async def flaky(*args: object, **kwargs: object) -> Frame:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ClusterDownError("The cluster is down")
        if calls["n"] == 3:
            raise ResponseError("WRONGTYPE Operation against a key")
        return await real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(top, "collect", flaky)
    seen: list[Frame] = []
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        async for frame in frames(deployed(client, settings), keys, settings.regions,
                                  asyncio.Event(), every=0.0):
            seen.append(frame)
    assert len(seen) == 1 and calls["n"] == 3


def test_top_command_once_plain(settings: Settings, capsys: object) -> None:
    code = main(["top", "--once", "--plain", "--redis-url", settings.redis_url,
                 "--stream", settings.stream, "--group", settings.group,
                 "--prefix", settings.prefix])
    assert code == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "stream=0 lag=None pending=0" in out


def steady_samples(interval_s: float, every: float, until: float) -> list[Sample]:
    """The demo's totals sampled every ``every`` s while 8 entries are persisted every
    ``interval_s`` s (a burst just after each cycle starts)."""
    samples: list[Sample] = []
    for i in range(int(until / every) + 1):
        t = i * every
        bursts = int((t + interval_s - 0.1) // interval_s)  # at 0.1, 0.1 + interval, ...
        samples.append((t, {"persisted": 8 * bursts, "duplicate": 0, "dead_lettered": 0}))
    return samples


@pytest.mark.parametrize(("interval_s", "every"), [(2.0, 0.5), (1.0, 0.5), (5.0, 0.5),
                                                   (2.0, 2.0)])
def test_demo_rates_are_steady_over_a_window(interval_s: float, every: float) -> None:
    """Frames come faster than cycles: rates between two frames were 0.0/s in three frames of
    four. Over the window a steady pipeline shows a steady rate, near the true one."""
    window = rate_window_s(interval_s)
    assert window >= interval_s
    samples = steady_samples(interval_s, every, until=60.0)
    true_rate = 8 / interval_s
    for n in range(2, len(samples) + 1):
        rates = windowed_rates(samples[:n], window)
        assert set(rates) == {"persisted", "duplicate", "dead_lettered"}
        if samples[n - 1][0] >= window:  # once a whole window has been seen
            assert 0.6 * true_rate <= rates["persisted"] <= 1.6 * true_rate, (n, rates)
            assert rates["duplicate"] == 0.0


def test_demo_rates_use_the_newest_sample_a_window_old() -> None:
    samples: list[Sample] = [(0.0, {"persisted": 0}), (1.0, {"persisted": 10}),
                             (2.5, {"persisted": 20}), (3.0, {"persisted": 40})]
    assert windowed_rates(samples, 2.0) == {"persisted": 30 / 2.0}  # from t=1.0
    assert windowed_rates(samples, 10.0) == {"persisted": 40 / 3.0}  # from the oldest
    assert windowed_rates(samples[:1], 2.0) == {}
    assert windowed_rates(samples, 2.0) == windowed_rates(samples[1:], 2.0)  # no state


def test_log_records_go_through_the_live_console() -> None:
    """A record logged while the live view draws must not be written raw to the terminal
    (it tears the table): it goes through the Live's console, above the view."""
    terminal = io.StringIO()  # where the root logger's handler (basicConfig) writes
    raw = logging.StreamHandler(terminal)
    root = logging.getLogger()
    root.addHandler(raw)
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=WIDE, color_system=None)
    log = logging.getLogger("regionstream.consumer")
    try:
        with Live(console=console, auto_refresh=False), logs_through(console):
            log.warning("worker w-0 reclaimed 3 entries")
            assert raw not in root.handlers
        log.warning("after the view")
    finally:
        root.removeHandler(raw)
    assert "worker w-0 reclaimed 3 entries" not in terminal.getvalue()
    assert "worker w-0 reclaimed 3 entries" in screen.getvalue()
    assert terminal.getvalue() == "after the view\n"  # the handler is back afterwards
