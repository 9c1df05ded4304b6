"""The producer against a Redis that goes away and comes back."""

from __future__ import annotations

import asyncio
import dataclasses

from prometheus_client import CollectorRegistry

from producer.service import Producer
from shared.connection import connect
from shared.servers import start_redis_server
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import deployed


async def test_producer_rides_out_a_redis_outage(settings: Settings) -> None:
    first = start_redis_server()
    s = dataclasses.replace(settings, redis_url=first.url, interval_s=0.05)
    producer = Producer(s, registry=CollectorRegistry(), seed=1)
    client = connect(s.redis_url)
    task = asyncio.create_task(producer.run(deployed(client, s)))
    second = None
    try:
        await wait_until(lambda: _at_least(producer, cycles=2), what="two cycles published")
        first.stop()  # Redis goes away

        async def failing() -> bool:
            return bool(producer.registry.get_sample_value(
                "regionstream_publish_failures_total"))

        await wait_until(failing, what="a failed publish")
        assert not task.done(), "the producer gave up"
        cycles = producer.report.cycles
        second = start_redis_server(port=first.port)  # ...and comes back, empty
        await wait_until(lambda: _at_least(producer, cycles=cycles + 1),
                         what="publishing resumed")
        fresh = connect(second.url)
        assert await fresh.xlen(s.stream) >= 8
        await fresh.aclose()
    finally:
        producer.stop.set()
        await asyncio.gather(task, return_exceptions=True)
        await client.aclose()
        first.stop()
        if second is not None:
            second.stop()


async def _at_least(producer: Producer, cycles: int) -> bool:
    return producer.report.cycles >= cycles
