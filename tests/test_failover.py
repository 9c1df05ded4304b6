"""Failover on a real primary + replica + three sentinels (Debian's redis-server and
redis-sentinel): the primary is SIGKILLed under a running producer and consumer group, which
follow the promotion through their redis+sentinel:// URL without a restart.

Replication is asynchronous. With --min-replicas the producer counts nothing published until a
replica confirmed it (WAIT), so nothing it counted can be lost; the consumer's data and its ack
replicate as one unit, so a persist the promoted replica never saw comes back as a redelivery.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from harness.ha import SentinelGroup, start_sentinel_group
from shared.connection import connect
from shared.group import read_group_stats
from shared.schema import decode
from shared.servers import free_port
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import assert_exactly_once, load_payloads, stored
from tests.proc import Proc, cli_env, common_flags

N = int(os.environ.get("FAILOVER_SNAPSHOTS", "600"))
FEED_CHUNK = 10
FEED_PAUSE_S = 0.02  # pacing of the feeder (a load shape, not a wait on a condition)
CONSUME = ["consume", "--workers", "2", "--batch", "50", "--block-ms", "200",
           "--min-idle-ms", "1000", "--claim-interval-ms", "300", "--retry-backoff-ms", "100"]

pytestmark = pytest.mark.chaos


def names() -> dict[str, str]:
    tag = uuid.uuid4().hex[:12]
    return {"stream": f"fo:{tag}", "group": f"g-{tag}", "prefix": f"fo:{tag}",
            "name": f"w-{tag}"}


def sentinel_settings(group: SentinelGroup) -> Settings:
    return Settings.load({"redis_url": group.url, **names()}, env={})


def direct(s: Settings, port: int) -> Settings:
    """The same names, on one server directly (to read what that server holds)."""
    return replace(s, redis_url=f"redis://127.0.0.1:{port}/0")


def payloads(s: Settings, n: int = N) -> list[bytes]:
    return load_payloads(s, n, seed=29)


def counter(port: int, name: str, **labels: str) -> float:
    """Sum of a counter's samples matching ``labels``, scraped from a process's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    """A primary and two replicas: after the failover one replica is left to confirm
    --min-replicas 1 (with a single replica the producer would rightly wait for ever)."""
    with start_sentinel_group(replicas=2) as g:
        yield g


@pytest.mark.parametrize("min_replicas", [1, 0])
async def test_sigkill_primary_under_load_producer_and_consumers_follow(
        group: SentinelGroup, min_replicas: int, tmp_path: Path) -> None:
    """Both processes keep running through the failover. With --min-replicas 1 every
    snapshot the producer published is stored exactly once at the end; without it the test
    reports what was lost (a promoted replica can miss the last acknowledged writes)."""
    s = sentinel_settings(group)
    lines = payloads(s)
    old = group.master_port()
    assert old is not None
    consumer = Proc([*CONSUME, *common_flags(s), "--name", s.name], tmp_path / "consumer.log")
    producer = Proc(["produce", "--source", "-", "--chunk", "20", "--min-replicas",
                     str(min_replicas), *common_flags(s)], tmp_path / "producer.log", stdin=True)
    stdin = producer.proc.stdin
    assert stdin is not None
    feeder_error: list[BaseException] = []

    def feed() -> None:
        try:
            for i in range(0, N, FEED_CHUNK):
                stdin.write(b"\n".join(lines[i:i + FEED_CHUNK]) + b"\n")
                stdin.flush()
                time.sleep(FEED_PAUSE_S)  # wait-ok: pacing the load, not waiting on a state
            stdin.close()
        except BaseException as exc:
            feeder_error.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    primary = connect(direct(s, old).redis_url, retries=0)
    promoted: aioredis.Redis | None = None
    try:
        try:
            await wait_until(lambda: _at_least(direct(s, old).redis_url, s, N // 3), 60,
                             "a third persisted")
        finally:
            await primary.aclose()
        killed_at = group.kill(old)
        new = await asyncio.to_thread(group.wait_promoted, old)
        promoted_s = time.monotonic() - killed_at
        promoted = connect(direct(s, new).redis_url)
        published_at = await _first_entry_after(promoted, s, killed_at)
        await asyncio.to_thread(feeder.join, 60)
        assert not feeder_error, feeder_error
        code = await asyncio.to_thread(producer.proc.wait, 120)
        assert code == 0, producer.output()[-3000:]
        assert f"published {N} snapshot(s)" in producer.output(), producer.output()[-2000:]
        retries = producer.output().count("publishing")
        await wait_until(lambda: _drained(promoted, s), 60, "the group drained on the new primary")
        drained_s = time.monotonic() - killed_at
        kept = await stored(direct(s, new).redis_url, s)
        lost = N - kept
        print(f"\nFAILOVER (--min-replicas {min_replicas}): primary SIGKILLed; promoted after "
              f"{promoted_s:.2f} s; producer publishing on the new primary after "
              f"{published_at - killed_at:.2f} s ({retries} failed publish attempt(s) retried); "
              f"group drained {drained_s:.2f} s after the kill; {N} published, {kept} stored, "
              f"{lost} lost")
        if min_replicas:
            await assert_exactly_once(direct(s, new).redis_url, s, lines, [])
        else:
            # Whatever survived is stored once; what was lost is reported, not hidden.
            survivors = [p for p in lines if await promoted.exists(
                s.keys.by_id(decode(p).region_id, decode(p).meta.snapshot_id))]
            assert len(survivors) == kept
            await assert_exactly_once(direct(s, new).redis_url, s, survivors, [])
        assert consumer.proc.poll() is None, "the consumer died in the failover"
        assert consumer.stop() == 0, consumer.output()[-3000:]
    finally:
        producer.kill()
        consumer.kill()
        if promoted is not None:
            await promoted.aclose()


async def _at_least(url: str, s: Settings, n: int) -> bool:
    return await stored(url, s) >= n


async def _drained(c: aioredis.Redis, s: Settings) -> bool:
    """What `consume --drain` waits for (lag unknown to Redis counts as not drained unless the
    group's cursor is at the stream's end)."""
    try:
        return (await read_group_stats(c, s.keys)).drained
    except RedisError:  # the promoted server may still be loading
        return False


async def _first_entry_after(c: aioredis.Redis, s: Settings, killed_at: float) -> float:
    """When the promoted primary got its first entry published after the kill (the producer
    is publishing again)."""
    kill_ms = int((time.time() - (time.monotonic() - killed_at)) * 1000)
    seen: list[float] = []

    async def published() -> bool:
        if await c.xrange(s.stream, min=f"{kill_ms}-0", count=1):
            seen.append(time.monotonic())
            return True
        return False

    await wait_until(published, 60, "a publish on the new primary")
    return seen[0]


async def test_persist_lost_in_failover_comes_back_as_redelivery(tmp_path: Path) -> None:
    """The replica's link is cut after the snapshots reached it, then the consumer persists
    them all on the primary, which is SIGKILLed. The promoted replica holds the entries and
    neither their data nor their acks: not one is stored, every one is still to be read (data
    and ack were lost together, never the data alone with the ack kept). The same consumer
    process, never restarted, reads them again and stores each exactly once."""
    with start_sentinel_group(cuttable=True, failover_timeout_ms=60_000) as group:
        s = sentinel_settings(group)
        lines = payloads(s, 200)
        old = group.master_port()
        assert old is not None
        source = b"\n".join(lines) + b"\n"
        produced = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "regionstream", "produce", "--source", "-",
                             "--min-replicas", "1", *common_flags(s)],
            input=source, capture_output=True, env=cli_env(), timeout=120)
        assert produced.returncode == 0, produced.stderr.decode()[-2000:]
        group.links[0].cut()
        metrics = free_port()
        consumer = Proc([*CONSUME, "--metrics-port", str(metrics), *common_flags(s),
                         "--name", s.name], tmp_path / "consumer.log")
        primary = connect(direct(s, old).redis_url, retries=0)
        try:
            try:
                await wait_until(lambda: _drained(primary, s), 60, "drained on the old primary")
                assert await stored(direct(s, old).redis_url, s) == len(lines)
            finally:
                await primary.aclose()
            consumer.proc.send_signal(signal.SIGSTOP)  # inspect the promoted replica undisturbed
            group.kill(old)
            new = await asyncio.to_thread(group.wait_promoted, old)
            promoted = connect(direct(s, new).redis_url)
            try:
                assert await stored(direct(s, new).redis_url, s) == 0
                assert await promoted.xlen(s.stream) == len(lines)
                (info,) = [g for g in await promoted.xinfo_groups(s.stream)
                           if g["name"] == s.group.encode()]
                assert info["pending"] + (info["lag"] or 0) == len(lines)
                consumer.proc.send_signal(signal.SIGCONT)
                await wait_until(lambda: _drained(promoted, s), 60, "drained on the new primary")
                await assert_exactly_once(direct(s, new).redis_url, s, lines, [])
                persisted = counter(metrics, "regionstream_messages_total", outcome="persisted")
                assert persisted == 2 * len(lines)  # once on each primary: a redelivery
            finally:
                await promoted.aclose()
            assert consumer.proc.poll() is None, "the consumer died in the failover"
            assert consumer.stop() == 0, consumer.output()[-3000:]
        finally:
            consumer.kill()


@pytest.mark.parametrize("min_replicas", [1, 0])
async def test_min_replicas_decides_what_a_partition_then_failover_loses(
        min_replicas: int, tmp_path: Path) -> None:
    """Both replicas' links are cut, the producer publishes the second half, the primary is
    SIGKILLed. Without --min-replicas the producer counted that half published and the promoted
    replica never got it: exactly that half is lost, and the test says so. With --min-replicas 1
    the producer counted none of it (WAIT saw no replica) and published it again to the new
    primary: every snapshot is stored exactly once."""
    with start_sentinel_group(replicas=2, cuttable=True, failover_timeout_ms=60_000) as group:
        s = sentinel_settings(group)
        lines = payloads(s, 200)
        half = len(lines) // 2
        old = group.master_port()
        assert old is not None
        consumer = Proc([*CONSUME, *common_flags(s), "--name", s.name], tmp_path / "c.log")
        producer = Proc(["produce", "--source", "-", "--chunk", "20", "--min-replicas",
                         str(min_replicas), "--min-replicas-timeout-ms", "200",
                         *common_flags(s)], tmp_path / "p.log", stdin=True)
        stdin = producer.proc.stdin
        assert stdin is not None
        primary = connect(direct(s, old).redis_url, retries=0)
        promoted: aioredis.Redis | None = None
        try:
            stdin.write(b"\n".join(lines[:half]) + b"\n")
            stdin.flush()
            await wait_until(lambda: _at_least(direct(s, old).redis_url, s, half), 60,
                             "the first half stored")
            for link in group.links:
                link.cut()
            stdin.write(b"\n".join(lines[half:]) + b"\n")
            stdin.flush()
            # Without --min-replicas the whole second half lands on the primary; with it the
            # producer is stuck re-publishing its first unconfirmed chunk.
            want = len(lines) if min_replicas == 0 else half + 20
            await wait_until(lambda: _length_at_least(primary, s, want), 60,
                             "the second half sent to the cut-off primary")
            await primary.aclose()
            group.kill(old)
            stdin.close()
            new = await asyncio.to_thread(group.wait_promoted, old)
            promoted = connect(direct(s, new).redis_url)
            code = await asyncio.to_thread(producer.proc.wait, 120)
            assert code == 0, producer.output()[-3000:]
            assert f"published {len(lines)} snapshot(s)" in producer.output()
            await wait_until(lambda: _drained(promoted, s), 60, "drained on the new primary")
            kept = await stored(direct(s, new).redis_url, s)
            print(f"\nPARTITION + FAILOVER (--min-replicas {min_replicas}): {len(lines)} "
                  f"counted published, {kept} stored, {len(lines) - kept} lost")
            if min_replicas:
                await assert_exactly_once(direct(s, new).redis_url, s, lines, [])
                assert "; retry 1" in producer.output()  # the unconfirmed chunk went out again
            else:
                assert kept == half  # exactly the half the promoted replica never received
                await assert_exactly_once(direct(s, new).redis_url, s, lines[:half], [])
            assert consumer.proc.poll() is None, "the consumer died in the failover"
            assert consumer.stop() == 0, consumer.output()[-3000:]
        finally:
            producer.kill()
            consumer.kill()
            await primary.aclose()
            if promoted is not None:
                await promoted.aclose()


async def _length_at_least(c: aioredis.Redis, s: Settings, n: int) -> bool:
    return int(await c.xlen(s.stream)) >= n
