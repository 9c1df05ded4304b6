"""Test helpers shared by the integration tests."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from consumer.service import Consumer
from producer.publisher import Publisher
from producer.synthetic import SyntheticSource
from shared.schema import Snapshot
from shared.settings import Settings

DRAIN_TIMEOUT_S = 60.0


async def publish(client: aioredis.Redis, settings: Settings, snaps: list[Snapshot]
                  ) -> list[bytes]:
    pub = Publisher(client, settings.keys, settings)
    await pub.prepare()
    return await pub.publish(snaps)


async def publish_cycle(client: aioredis.Redis, settings: Settings, now_ms: int,
                        seed: int = 7) -> list[Snapshot]:
    snaps = SyntheticSource(settings.regions, seed=seed).cycle(now_ms)
    await publish(client, settings, snaps)
    return snaps


async def drain(client: aioredis.Redis, settings: Settings) -> Consumer:
    """Run a consumer in this process until the group is drained."""
    consumer = Consumer(settings, registry=CollectorRegistry())
    await asyncio.wait_for(consumer.run(drain=True, redis=client), DRAIN_TIMEOUT_S)
    return consumer


def outcomes(consumer: Consumer) -> dict[str, int]:
    """Totals per outcome over all regions, read from the consumer's metrics."""
    return consumer.totals()


async def dump(client: aioredis.Redis, prefix: str) -> dict[bytes, Any]:
    """Every key under ``prefix`` with its value (strings) or members (zsets)."""
    out: dict[bytes, Any] = {}
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = await client.type(key)
        if kind == b"string":
            out[key] = await client.get(key)
        elif kind == b"zset":
            out[key] = await client.zrange(key, 0, -1, withscores=True)
        else:
            out[key] = kind
    return out
