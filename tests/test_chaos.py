"""Crash safety with real processes: SIGTERM mid-drain, SIGKILL holding pending entries."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import time

import pytest

from harness.cluster import Cluster
from producer.synthetic import SyntheticSource
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import (
    ENGINES,
    deployed_publisher,
    engine_settings,
    pending_total,
    stored,
    stored_total,
)
from tests.proc import common_flags, spawn_cli

N = 3000
CHUNK = 500
EXIT_TIMEOUT_S = 30
MAX_KILL_ATTEMPTS = 5


async def prefill(settings: Settings, n: int = N) -> None:
    """``n`` snapshots, each shard's on the node holding it."""
    async with deployed_publisher(settings) as (_, pub):
        src, base = SyntheticSource(settings.regions, seed=21), int(time.time() * 1000)
        for start in range(0, n, CHUNK):
            await pub.publish([src.snapshot_for_count(i, base)
                               for i in range(start, start + CHUNK)])


def settled(stderr: bytes) -> dict[str, int]:
    m = re.search(rb"settled: ((?:\w+=\d+ ?)+)", stderr)
    assert m, stderr.decode()[-2000:]
    return {k.decode(): int(v) for k, v in re.findall(rb"(\w+)=(\d+)", m.group(1))}


def consume(settings: Settings, name: str) -> subprocess.Popen[bytes]:
    return spawn_cli(["consume", "--drain", "--workers", "2", "--batch", "50", "--block-ms",
                      "200", "--name", name, *common_flags(settings)])


async def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    _, err = await asyncio.to_thread(proc.communicate, timeout=EXIT_TIMEOUT_S)
    return proc.returncode, err


@pytest.mark.chaos
@pytest.mark.parametrize("engine", ENGINES)
async def test_sigterm_mid_drain_loses_nothing(request: pytest.FixtureRequest,
                                               settings: Settings, engine: str) -> None:
    settings, cluster = engine_settings(request, settings, engine)
    where = cluster or settings.redis_url
    await prefill(settings)
    proc = consume(settings, "term")

    async def some_persisted() -> bool:
        return await asyncio.to_thread(stored_total, where, settings) > 0

    await wait_until(some_persisted, what="the first persisted snapshots")
    proc.send_signal(signal.SIGTERM)
    code, err = await finish(proc)
    assert code == 0, err.decode()[-2000:]
    first = settled(err)
    assert 0 < first["persisted"] < N, "SIGTERM should land mid-drain"
    # Graceful: what was read was settled and acked, nothing left pending under its name.
    assert pending_total(where, settings) == 0
    code, err = await finish(consume(settings, "term"))
    assert code == 0
    second = settled(err)
    assert first["persisted"] + second["persisted"] == N
    assert second["redelivered"] == 0 and second["duplicate"] == 0
    assert stored_total(where, settings) == N


async def kill_while_holding(where: Cluster | str, settings: Settings, name: str) -> int:
    """SIGKILL a draining consumer while it holds pending entries (bounded attempts); returns
    how many entries the group has pending after the kill."""
    for _ in range(MAX_KILL_ATTEMPTS):
        proc = consume(settings, name)

        async def holding(proc: subprocess.Popen[bytes] = proc) -> bool:
            held = await asyncio.to_thread(pending_total, where, settings)
            return bool(held) or proc.poll() is not None

        await wait_until(holding, what="the consumer holding pending entries")
        proc.kill()
        await finish(proc)
        held = pending_total(where, settings)
        if held:
            return held
    raise AssertionError("never caught the consumer holding entries")


@pytest.mark.chaos
@pytest.mark.parametrize("engine", ENGINES)
async def test_sigkill_holding_pending_replays_them_on_restart(
        request: pytest.FixtureRequest, settings: Settings, engine: str) -> None:
    settings, cluster = engine_settings(request, settings, engine)
    where = cluster or settings.redis_url
    await prefill(settings)
    held = await kill_while_holding(where, settings, "kill")
    code, err = await finish(consume(settings, "kill"))  # same name: replays its own first
    assert code == 0, err.decode()[-2000:]
    again = settled(err)
    assert again["redelivered"] <= held  # only what the killed one had persisted but not acked
    assert pending_total(where, settings) == 0
    assert stored_total(where, settings) == N


@pytest.mark.chaos
async def test_sigterm_while_redis_hangs_exits_within_grace() -> None:
    """--grace is a deadline: with Redis frozen (SIGSTOP) a SIGTERM still ends the process
    within the grace period (plus start-up slack); what it held stays pending for replay."""
    import uuid

    from shared.connection import connect
    from shared.servers import start_redis_server

    grace_s = 1.0
    with start_redis_server() as server:
        tag = uuid.uuid4().hex[:8]
        s = Settings.load({"redis_url": server.url, "stream": f"g-{tag}", "group": f"g-{tag}",
                           "prefix": f"g-{tag}"}, env={})
        client = connect(server.url)
        try:
            await prefill(s, 1000)
            proc = spawn_cli(["consume", "--workers", "2", "--batch", "20", "--block-ms", "200",
                              "--grace", str(grace_s), "--name", "frozen", *common_flags(s)])

            async def holding() -> bool:
                return bool((await client.xpending(s.stream, s.group))["pending"])

            await wait_until(holding, what="the consumer holding entries")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGSTOP)
            try:
                proc.send_signal(signal.SIGTERM)
                started = time.monotonic()
                code, err = await finish(proc)
                took = time.monotonic() - started
            finally:
                server.proc.send_signal(signal.SIGCONT)
            assert code == 0, err.decode()[-2000:]
            assert took < grace_s + 3.0, f"exit took {took:.1f}s with --grace {grace_s}"
            assert b"grace period" in err
            # What it held stays pending, unless the settle it had already sent when Redis
            # froze runs after SIGCONT (then it is acknowledged: also not lost). Either way
            # the next consumer stores every snapshot, none twice.
            code, err = await finish(spawn_cli(["consume", "--drain", "--name", "frozen",
                                                *common_flags(s)]))
            assert code == 0, err.decode()[-2000:]
            assert await stored(s.redis_url, s) == 1000
            assert int((await client.xpending(s.stream, s.group))["pending"]) == 0
        finally:
            await client.aclose()
