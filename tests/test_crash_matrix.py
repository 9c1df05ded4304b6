"""The crash matrix: real processes SIGKILL themselves at each risky point (shared/failpoints.py),
then are restarted without the fail point, and the group is drained. For every row: every
published snapshot is stored exactly once (its payload, its expiry), `latest` is the newest per
region, nothing is pending or undelivered, no staging key is left, and the dead-letter stream
holds exactly the poison entries, each once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from shared.failpoints import ENV, POINTS
from shared.schema import decode
from shared.settings import Settings
from tests.helpers import (
    assert_exactly_once,
    deployed_publisher,
    engine_settings,
    load_payloads,
)
from tests.proc import cli_env, common_flags, run_cli

N = 240
POISON = [b"{oops-%d" % i for i in range(3)] + [b'{"x":' + b"[" * 2000 + b"]" * 2000 + b"}"]
KILLED = -signal.SIGKILL
CONSUME = ["consume", "--drain", "--workers", "2", "--batch", "20", "--block-ms", "100",
           "--min-idle-ms", "200", "--claim-interval-ms", "100", "--retry-backoff-ms", "50"]
REPLAY_PENDING = ["replay", "--pending", "--min-idle-ms", "0"]
PRODUCE = ["produce", "--chunk", "20"]  # + --source FILE

# row -> steps: (command, fail point or None, expected exit code)
Step = tuple[list[str], str | None, int]
ROWS: dict[str, list[Step]] = {
    "consumer.after-read": [
        ([*CONSUME, "--name", "a"], "consumer.after-read:3", KILLED),
        ([*CONSUME, "--name", "a"], None, 0)],
    "consumer.settle-in-flight": [
        ([*CONSUME, "--name", "a"], "consumer.settle-in-flight:3", KILLED),
        ([*CONSUME, "--name", "a"], None, 0)],
    "consumer.dead-letter-in-flight": [
        ([*CONSUME, "--name", "a"], "consumer.dead-letter-in-flight", KILLED),
        ([*CONSUME, "--name", "a"], None, 0)],
    "consumer.after-settle": [
        ([*CONSUME, "--name", "a"], "consumer.after-settle:3", KILLED),
        ([*CONSUME, "--name", "b"], None, 0)],  # another name: the reclaimer takes a's
    "reclaim.after-claim": [
        ([*CONSUME, "--name", "a"], "consumer.after-read:2", KILLED),
        ([*CONSUME, "--name", "b"], "reclaim.after-claim", KILLED),
        ([*CONSUME, "--name", "b"], None, 0)],
    "replay.pending-claimed": [
        ([*CONSUME, "--name", "a"], "consumer.after-read:2", KILLED),
        (REPLAY_PENDING, "replay.pending-claimed", KILLED),
        (REPLAY_PENDING, None, 0),
        ([*CONSUME, "--name", "a"], None, 0)],
    "replay.dlq-moved": [
        ([*CONSUME, "--name", "a"], None, 0),
        (["replay", "--dlq"], "replay.dlq-moved", KILLED),
        (["replay", "--dlq"], None, 0),
        ([*CONSUME, "--name", "a"], None, 0)],
    "producer.publish-in-flight": [
        (PRODUCE, "producer.publish-in-flight:4", KILLED),
        (PRODUCE, None, 0),
        ([*CONSUME, "--name", "a"], None, 0)],
    "producer.after-publish": [
        (PRODUCE, "producer.after-publish:4", KILLED),
        (PRODUCE, None, 0),
        ([*CONSUME, "--name", "a"], None, 0)],
}


def test_every_fail_point_has_a_row() -> None:
    assert set(ROWS) == set(POINTS)


def snapshots(settings: Settings) -> list[bytes]:
    return load_payloads(settings, N, seed=17)


async def prefill(settings: Settings, payloads: list[bytes]) -> dict[str, list[bytes]]:
    """The snapshots in chunks, one poison entry after each of the first chunks (on a region
    layout, each in the next region's shard). Returns the poison sent to each shard."""
    sent: dict[str, list[bytes]] = {}
    async with deployed_publisher(settings) as (deployment, pub):
        poison = iter(POISON)
        for n, start in enumerate(range(0, len(payloads), 40)):
            chunk = payloads[start:start + 40]
            await pub.publish([decode(p) for p in chunk], chunk)
            bad = next(poison, None)
            if bad is not None:
                shard = deployment.shards[n % len(deployment.shards)]
                await deployment.client_for(shard).xadd(
                    shard.keys.stream, {b"schema": b"1", b"payload": bad})
                sent.setdefault(shard.label, []).append(bad)
    return sent


@pytest.mark.chaos
@pytest.mark.parametrize("engine", ["server", "cluster"])
@pytest.mark.parametrize("row", list(ROWS))
async def test_crash_at_each_fail_point_loses_nothing_and_applies_nothing_twice(
        request: pytest.FixtureRequest, client: aioredis.Redis, settings: Settings,
        tmp_path: Path, row: str, engine: str) -> None:
    settings, cluster = engine_settings(request, settings, engine)
    payloads = snapshots(settings)
    producer_row = row.startswith("producer.")
    source = tmp_path / "snapshots.jsonl"
    poison: dict[str, list[bytes]] = {}
    if producer_row:
        source.write_bytes(b"\n".join(payloads) + b"\n")
    else:
        poison = await prefill(settings, payloads)
    for command, point, expected in ROWS[row]:
        args = [*command, *common_flags(settings)]
        if command is PRODUCE:
            args += ["--source", str(source)]
        env = cli_env() | ({ENV: point} if point else {})
        done = await asyncio.to_thread(run_cli, args, env=env)
        assert done.returncode == expected, (command, point, done.stderr.decode()[-3000:])
    # Per shard, on the node that owns it.
    await assert_exactly_once(cluster or settings.redis_url, settings, payloads,
                              poison if cluster else [] if producer_row else POISON)
