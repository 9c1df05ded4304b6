"""Soak/chaos: a live producer, several consumer processes killed (SIGKILL) and stopped
(SIGTERM) at random, connections dropped, poison injected - then everything must be persisted
exactly once, the poison (only) dead-lettered, nothing pending.

The suite runs a short version; `make soak` runs it for minutes (SOAK_SECONDS). Every loop is
bounded in count and time, and all traffic stays on loopback."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time

import pytest
import redis.asyncio as aioredis

from producer.synthetic import SyntheticSource
from shared.keys import Keys
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import publisher, stored
from tests.proc import common_flags, spawn_cli
from tests.test_chaos import finish

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "6"))
SEED = int(os.environ.get("SOAK_SEED", "20261125"))
CONSUMERS = 3
CHUNK = 40  # snapshots per publish
TICK_S = 0.05  # pace of the chaos loop
MIN_IDLE_MS = 1_500
MAX_TICKS = 100_000  # hard bound on the loop, whatever SOAK_SECONDS says
POISON = ({b"schema": b"1", b"payload": b"{oops"}, {b"schema": b"1"},
          {b"schema": b"7", b"payload": b"{}"})


def start(settings: Settings, name: str, *extra: str) -> subprocess.Popen[bytes]:
    return spawn_cli(["consume", "--name", name, "--workers", "2", "--batch", "30",
                      "--block-ms", "200", "--min-idle-ms", str(MIN_IDLE_MS),
                      "--claim-interval-ms", "300", "--retry-backoff-ms", "50",
                      "--log-level", "WARNING", *extra, *common_flags(settings)])


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


@pytest.mark.chaos
async def test_soak_with_kills_restarts_and_poison(client: aioredis.Redis, settings: Settings,
                                                   keys: Keys) -> None:
    rng = random.Random(SEED)
    pub = publisher(client, settings)
    await pub.prepare()
    src, base = SyntheticSource(settings.regions, seed=SEED), int(time.time() * 1000)
    procs = {f"soak{i}": start(settings, f"soak{i}") for i in range(CONSUMERS)}
    published = poison = kills = terms = drops = 0
    deadline = time.monotonic() + SOAK_SECONDS
    try:
        for _ in range(MAX_TICKS):
            if time.monotonic() > deadline:
                break
            await pub.publish([src.snapshot_for_count(published + i, base) for i in range(CHUNK)])
            published += CHUNK
            roll = rng.random()
            name = rng.choice(sorted(procs))
            if roll < 0.10:  # crash: its entries stay pending, reclaimed by the others
                stop(procs[name], signal.SIGKILL)
                kills += 1
                procs[name] = start(settings, name)
            elif roll < 0.15:  # graceful stop and restart under the same name
                stop(procs[name], signal.SIGTERM)
                terms += 1
                procs[name] = start(settings, name)
            elif roll < 0.20:
                await client.xadd(settings.stream, rng.choice(POISON))
                poison += 1
            elif roll < 0.23:
                drops += int(await client.execute_command(
                    "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"))
            await asyncio.sleep(TICK_S)  # wait-ok: paces a bounded chaos loop, not a wait
    finally:
        for proc in procs.values():
            stop(proc, signal.SIGKILL)
    # One consumer drains the rest, reclaiming what the killed ones held.
    code, err = await finish(start(settings, "finisher", "--drain"))
    assert code == 0, err.decode()[-3000:]

    async def settled() -> bool:
        info = await client.xpending(settings.stream, settings.group)
        return info["pending"] == 0 and await stored(settings.redis_url, settings) == published

    await wait_until(settled, what="everything persisted, nothing pending")
    assert await client.xlen(keys.dlq) == poison
    reasons = {f[b"dlq_reason"] for _, f in await client.xrange(keys.dlq)}
    assert reasons <= {b"undecodable", b"missing-payload", b"unsupported-schema"}
    byid = [k async for k in client.scan_iter(match=f"{settings.prefix}:snapshot-by-id:*",
                                              count=1000)]
    assert len(byid) == published  # each stored once: no strays, none missing
    # The by-id MSET and the script that gives each key its expiry are one transaction: no
    # kill or dropped connection may leave a stored snapshot that never expires.
    pipe = client.pipeline(transaction=False)
    for k in byid:
        pipe.pexpiretime(k)
    assert min(await pipe.execute()) > 0
    print(f"soak: {SOAK_SECONDS}s seed={SEED} published={published} kills={kills} "
          f"terms={terms} poison={poison} connection_drops={drops}")
