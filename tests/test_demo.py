"""The demo shows the failure handling, not only the happy path (issue #19): a poison entry
dead-lettered and a killed worker's entries reclaimed, each said in an ``event:`` line (stdout
with --plain, under the table in the live view); its banner counts the consumers the view
counts; the live view logs in the command's one format."""

from __future__ import annotations

import io
import logging
import re
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from rich.console import Console

from regionstream.demo import DEMO_MIN_IDLE_MS, Events, _fresh, screen
from regionstream.runtime import LOG_FORMAT
from regionstream.view import Frame, logs_through
from shared.settings import Settings
from shared.shards import shards
from tests.proc import cli_env, common_flags, run_cli

# Long enough for the staged crash to be reclaimed (DEMO_MIN_IDLE_MS, plus a sweep of the
# demo's reclaimer: about 3 s after start) with room to spare on a busy machine.
DURATION_S = "8"


def _consumers(line: str) -> tuple[int, int]:
    found = re.search(r" consumers=(\d+)/(\d+) ", line)
    assert found, line
    return int(found.group(1)), int(found.group(2))


@pytest.mark.parametrize("layout", ["none", "region"])
async def test_the_demo_dead_letters_a_poison_entry_and_reclaims_a_killed_workers_entries(
        client: aioredis.Redis, settings: Settings, layout: str) -> None:
    """With --shard-by region (a stream per region, as on a cluster) the killed worker holds
    an entry of each region's stream, and entries of two streams may share an id."""
    done = run_cli(["demo", "--plain", "--duration", DURATION_S, "--interval", "1",
                    *common_flags(settings)], env=cli_env() | {"REGIONSTREAM_SHARD_BY": layout})
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    lines = out.strip().splitlines()

    # The final line, as before: every region has a latest snapshot, nothing left pending.
    final = lines[-1]
    assert final.startswith("final: shards=8 stream=" if layout == "region" else
                            "final: stream="), final
    assert "regions_with_latest=8/8" in final and " pending=0 " in final, final
    assert " dlq=1 " in final, final  # the poison entry, and only it

    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert len(events) == 3, out
    poison = re.fullmatch(r"poison entry (\d+-\d+) \('\{not json'\) dead-lettered: undecodable",
                          events[0])
    assert poison, events[0]
    name = re.escape(socket.gethostname())  # the demo's consumers: <host>-0.., <host>-reclaimer
    killed = re.fullmatch(rf"worker ({name}-crashed) killed holding (\d+) entries it never "
                          "acknowledged", events[1])
    assert killed, events[1]
    crashed, held = killed.group(1), int(killed.group(2))
    assert held == 8  # the cycle it read: a snapshot per region
    reclaimed = re.fullmatch(rf"{re.escape(crashed)}'s {held} entries reclaimed after "
                             rf"([\d.]+) s idle: persisted {held}", events[2])
    assert reclaimed, events[2]
    # Not before --min-idle-ms (measured from this side of the read: a hair less at most).
    assert float(reclaimed.group(1)) >= DEMO_MIN_IDLE_MS / 1000 - 0.2, events[2]

    # Redis agrees: the poison entry is on the test's dead-letter stream (the first shard's),
    # with its reason...
    streams = [shard.keys for shard in shards(settings.keys, settings.regions, layout)]
    dead: Any = await client.xrange(streams[0].dlq)
    assert [(f[b"dlq_original_id"], f[b"dlq_reason"], f[b"payload"]) for _, f in dead] == [
        (poison.group(1).encode(), b"undecodable", b"{not json")]
    # ...and the killed worker holds nothing: its entries were settled, its name forgotten.
    for keys in streams:
        assert await client.xpending_range(keys.stream, keys.group, "-", "+", 10,
                                           consumername=crashed) == []
        assert (await client.xpending(keys.stream, keys.group))["pending"] == 0
        names = sorted(c["name"].decode() for c in
                       await client.xinfo_consumers(keys.stream, keys.group))
        assert crashed not in names and len(names) == 5, (keys.stream, names)
        if layout == "region":
            assert await client.xlen(keys.dlq) == (keys == streams[0])

    # The banner counts what the view counts: 4 workers and the reclaimer. The view counts the
    # killed worker too, while it holds entries: only between its two events.
    assert "(5 consumers: 4 workers + 1 reclaimer)" in " ".join(err.split()), err
    assert "--min-idle-ms 2000 --claim-interval-ms 1000" in " ".join(err.split()), err
    crash_at, reclaim_at = (lines.index(f"event: {e}") for e in events[1:])
    for i, line in enumerate(lines):
        if line.startswith("event: "):
            continue
        _, known = _consumers(line)
        assert known == (6 if crash_at < i < reclaim_at else 5), (i, line)
    assert _consumers(final) == (5, 5)


def test_the_live_view_shows_the_events_under_the_table_a_line_each() -> None:
    """At 80x24 the view and its events fit: each event one line (cut, not wrapped), last."""
    events = Events(plain=False)
    for line in ["poison entry 1-0 ('{not json') dead-lettered: undecodable",
                 "worker w-crashed killed holding 8 entries it never acknowledged",
                 "w-crashed's 8 entries reclaimed after 2.9 s idle: persisted 8 " + "x" * 80]:
        events.say(line)
    console = Console(width=80, height=24, record=True, file=io.StringIO())
    console.print(screen(Frame(at=0.0, stream="s", group="g"), events, console.height))
    shown = console.export_text().rstrip("\n").splitlines()
    assert len(shown) <= 24
    assert shown[-3:-1] == [f"event: {line}" for line in list(events.lines)[:2]]
    assert shown[-1].startswith("event: w-crashed's 8 entries reclaimed") and len(shown[-1]) == 80


def test_the_live_view_logs_in_the_commands_format() -> None:
    """Records go through the live view's console, formatted as --plain logs them (the
    root handler's format), not in rich's log columns; the root's handlers are back after."""
    root = logging.getLogger()
    mine = logging.StreamHandler(io.StringIO())
    mine.setFormatter(logging.Formatter(LOG_FORMAT))
    saved = root.handlers[:]
    root.handlers = [mine, *saved]  # the command's (basicConfig's) first, before pytest's
    try:
        console = Console(width=200, record=True, file=io.StringIO())
        with logs_through(console):
            logging.getLogger("regionstream.consumer").warning("w-1: entry %s dead-lettered",
                                                              "1-0 [bold]")
        text = console.export_text()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING regionstream.consumer: "
                            r"w-1: entry 1-0 \[bold\] dead-lettered\n", text), text
        assert root.handlers == [mine, *saved]
    finally:
        root.handlers = saved


async def test_a_demo_stopped_before_the_reclaim_leaves_no_killed_worker_behind(
        client: aioredis.Redis, settings: Settings, tmp_path: Any) -> None:
    """Ctrl-C between the staged crash and its reclaim, on a Redis the user pointed the demo
    at: what the killed worker held goes to the demo's first worker (settled first at the next
    start: nothing lost), and no consumer that never existed is left in the group."""
    import signal

    from harness import wait
    from tests.proc import Proc

    proc = Proc(["demo", "--plain", *common_flags(settings)], tmp_path / "demo.log")
    try:
        wait.until(wait.holds(lambda: "killed holding" in proc.output()
                              or proc.proc.poll() is not None, "not yet"), 60,
                   "the staged crash")
        proc.proc.send_signal(signal.SIGINT)
        code = proc.proc.wait(60)
    finally:
        proc.kill()
    out = proc.output()
    assert code == 0, out[-3000:]
    assert "reclaimed after" not in out, "the reclaim came first: this test needs it later"
    names = {c["name"].decode(): int(c["pending"])
             for c in await client.xinfo_consumers(settings.stream, settings.group)}
    assert not [n for n in names if n.endswith("-crashed")], names
    # Handed to the demo's first worker (<name>-0), still pending: replayed at its start.
    assert any(n.endswith("-0") and held >= 8 for n, held in names.items()), names


async def test_a_frame_collected_across_a_change_is_not_shown() -> None:
    """The view drops a frame whose collection overlapped a change on Redis (begun, not said
    yet) or an event: shown, it could put the killed worker on the wrong side of its line."""
    events = Events(plain=True)
    # what happens on Redis and in the staging while each frame is made
    steps: list[str] = ["", "begin", "", "say", "", ""]

    async def frames() -> AsyncIterator[Frame]:
        for at, step in enumerate(steps):
            if step == "begin":
                events.begin()
            elif step == "say":
                events.say("x")
            yield Frame(at=float(at), stream="s", group="g")

    shown = [f.at async for f in _fresh(frames(), events)]
    assert shown == [0.0, 4.0, 5.0]
