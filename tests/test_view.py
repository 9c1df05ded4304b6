"""The live view (the demo's screen and ``regionstream top``), rendered from a known Redis state."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import logging
import time

import pytest
import redis
import redis.asyncio as aioredis
from rich.console import Console
from rich.live import Live

from consumer.ops import ShardRow
from regionstream.cli import main
from regionstream.demo import Sample, rate_window_s, windowed_rates
from regionstream.parser import RATES_WINDOW_S
from regionstream.top import frames, run_top
from regionstream.view import (
    Frame,
    RegionRow,
    ShardStat,
    collect,
    logs_through,
    rates_between,
    rates_over,
    render,
    summary_line,
)
from shared.group import ConsumerStat, GroupStats
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
    before = Frame(100.0, "s", "g", pending=2, entries_added=10, entries_read=8, dlq_added=0,
                   regions=[RegionRow("mena", stored=3), RegionRow("europe", stored=1)])
    after = dataclasses.replace(before, at=102.0, pending=4, entries_added=30, entries_read=20,
                                dlq_added=2,
                                regions=[RegionRow("mena", stored=5), RegionRow("europe",
                                                                               stored=2)])
    # acked 5/s: 1.5/s persisted, 1/s dead-lettered, the other 2.5/s duplicates
    assert rates_between(before, after) == {"published": 10.0, "delivered": 6.0, "acked": 5.0,
                                            "persisted": 1.5, "duplicates": 2.5,
                                            "dead_lettered": 1.0}
    no_dlq_counter = rates_between(dataclasses.replace(before, dlq_added=None), after)
    assert "dead_lettered" not in no_dlq_counter and "duplicates" not in no_dlq_counter
    # more stored than acked between two frames (a consumer's ack lands in the next): never < 0
    stored_more = dataclasses.replace(after, regions=[RegionRow("mena", stored=30)])
    assert rates_between(before, stored_more)["duplicates"] == 0.0


def test_duplicates_count_only_the_shards_read() -> None:
    """With --shards, acked counts only the selected shards: so does stored (the other
    regions' snapshots are not counted as this deployment's)."""
    def shard(region: str) -> ShardStat:
        return ShardStat(ShardRow(region, f"s:{{{region}}}", "d", True, 0, 0, 0, 0, None),
                         GroupStats(0.0, True))

    frame = Frame(0.0, "s", "g", regions=[RegionRow("mena", stored=4),
                                          RegionRow("europe", stored=7)],
                  shards=(shard("mena"),))
    assert frame.stored == 4
    assert dataclasses.replace(frame, shards=()).stored == 11


def burst_frames(interval_s: float, every: float, until: float) -> list[Frame]:
    """Frames every ``every`` s while a producer publishes 8 entries every ``interval_s`` s,
    each stored at once (the counters jump just after each cycle starts)."""
    out = []
    for i in range(int(until / every) + 1):
        t = i * every
        n = 8 * int((t + interval_s - 0.1) // interval_s)
        out.append(Frame(t, "s", "g", entries_added=n, entries_read=n, dlq_added=0,
                         regions=[RegionRow("mena", stored=n)]))
    return out


@pytest.mark.parametrize(("interval_s", "every"), [(3.0, 1.0), (2.0, 0.5), (5.0, 1.0),
                                                   (3.0, 3.0)])
def test_top_rates_are_steady_over_the_window(interval_s: float, every: float) -> None:
    """A producer every 3 s read 8.0/s, 0.0, 0.0, 0.0, 8.0 between frames: over the window
    a steady pipeline shows a steady rate near the true one, never 0."""
    history = burst_frames(interval_s, every, until=60.0)
    between = [rates_between(a, b)["published"] for a, b in itertools.pairwise(history)]
    if every < interval_s:
        assert 0.0 in between  # what consecutive frames gave
    true_rate = 8 / interval_s
    for n in range(2, len(history) + 1):
        rates = rates_over(history[:n], RATES_WINDOW_S)
        if history[n - 1].at >= RATES_WINDOW_S:  # once a whole window has been seen
            for name in ("published", "delivered", "acked", "persisted"):
                assert 0.6 * true_rate <= rates[name] <= 1.6 * true_rate, (n, name, rates)
            assert rates["duplicates"] == 0.0 and rates["dead_lettered"] == 0.0


def test_top_rates_use_the_newest_frame_a_window_old() -> None:
    history = [Frame(t, "s", "g", entries_added=n) for t, n in
               ((0.0, 0), (1.0, 10), (2.5, 20), (3.0, 40))]
    assert rates_over(history, 2.0)["published"] == 30 / 2.0  # from t=1.0
    assert rates_over(history, 10.0)["published"] == 40 / 3.0  # from the oldest
    assert rates_over(history[:1], 2.0) == {}


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
    assert set(seen[1].rates) == {"published", "delivered", "acked", "persisted", "duplicates",
                                  "dead_lettered"}
    assert 0 < seen[1].rates_window_s <= RATES_WINDOW_S
    assert "per s, last " in text_of(seen[1]) and "duplicates " in text_of(seen[1])


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


def test_top_command_once_plain(settings: Settings, capsys: pytest.CaptureFixture[str]
                                ) -> None:
    admin = redis.Redis.from_url(settings.redis_url)
    try:
        admin.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
        code = main(["top", "--once", "--plain", "--redis-url", settings.redis_url,
                     "--stream", settings.stream, "--group", settings.group,
                     "--prefix", settings.prefix])
    finally:
        admin.delete(settings.stream)
        admin.close()
    assert code == 0
    out = capsys.readouterr().out
    assert "stream=0 lag=0 pending=0" in out


# -- 80x24 first -----------------------------------------------------------------------------

def lines_at(renderable: object, width: int = 80, height: int = 24) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, height=height, color_system=None).print(renderable)
    return out.getvalue().splitlines()


FULL_RATES = {"published": 1234.5, "delivered": 1234.5, "acked": 1234.5, "persisted": 0.0,
              "duplicates": 1234.5, "dead_lettered": 0.0}


async def test_the_view_fits_80x24(client: aioredis.Redis, settings: Settings,
                                   keys: Keys) -> None:
    """A real frame (8 regions, the 4 workers and the reclaimer that drained the first cycle,
    a consumer holding entries, dead letters) with every rate: no line wider than 80, at most
    24 lines, the header's figures each whole, and the consumer table whole, above the
    regions."""
    await known_state(client, settings, keys)
    frame = await collect(deployed(client, settings), keys, settings.regions)
    assert len(frame.consumer_rows) == 6
    frame = dataclasses.replace(frame, rates=FULL_RATES, rates_window_s=RATES_WINDOW_S)
    for height in (None, 24):
        lines = lines_at(render(frame, height))
        assert max(map(len, lines)) <= 80, lines
        assert len(lines) <= 24, lines
        text = "\n".join(lines)
        for whole in (f"stream {keys.stream}", f"group {keys.group}", "length 16", "lag 5",
                      "pending 3", "dead letters 1", "consumers ", "oldest pending ",
                      "per s, last 10s:", "published 1,234.5/s", "acked 1,234.5/s",
                      "persisted 0.0/s", "duplicates 1,234.5/s", "dead-lettered 0.0/s"):
            assert whole in text, whole
        for c in frame.consumer_rows:  # every consumer, with what it holds
            assert any(c.name in line and f" {c.pending} " in line for line in lines), c
        for row in frame.regions:
            assert any(line.startswith(row.region) and str(row.regime) in line
                       for line in lines), row.region
        assert text.index("consumer") < text.index("region")


def test_a_tall_view_leaves_out_the_regions_then_consumer_rows_in_a_short_terminal() -> None:
    """A sharded deployment with a dozen consumers (shard table, consumers, regions): at 80x24
    live (``height``) it fits, the consumers before the regions, the rest counted; printed
    once (no height) nothing is left out."""
    regions = [RegionRow(r, "01a249dbb5d8-133bbaaad651", "managed_deescalation",
                         "trigger_activation", 3700.0, 123) for r in REGIONS]
    consumers = tuple(ConsumerStat(f"worker-{i}", i, 1.0) for i in range(12))
    shards = tuple(ShardStat(ShardRow(r, f"s:{{{r}}}", "d", True, 10, 1, 1, 0, 5.0),
                             GroupStats(0.0, True, consumers=consumers)) for r in REGIONS)
    frame = Frame(0.0, "test-stream:abcdef123456", "g-abcdef123456", regions=regions,
                  rates=FULL_RATES, consumers=12, consumer_rows=consumers, shards=shards)
    lines = lines_at(render(frame, height=24))
    assert len(lines) <= 24 and max(map(len, lines)) <= 80, lines
    text = "\n".join(lines)
    assert "worker-11" in text and "more (regionstream pending)" in text  # most pending kept
    assert "8 regions left out" in text and "total" in text
    everything = "\n".join(lines_at(render(frame)))
    assert all(f"worker-{i}" in everything for i in range(12)) and "more" not in everything
    assert all(r in everything for r in REGIONS)


def test_the_header_breaks_between_figures_never_inside_one() -> None:
    frame = Frame(0.0, "s" * 100, "g" * 30, stream_length=10**9, rates=FULL_RATES)
    lines = lines_at(render(frame))
    assert max(map(len, lines)) <= 80
    assert lines[0].startswith("stream sss") and lines[0].endswith("…")  # cut, not wrapped
    assert "length 1000000000" in lines[1] and f"group {'g' * 30}" in "\n".join(lines)


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
