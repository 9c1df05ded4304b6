"""``python -m bench.inproc_drain [N]``: the consumer's CPU per message, in this process, on
the production connection path (``Consumer.run(drain=True)``), over N prefilled snapshots on
a private redis-server. A quick A/B of two checkouts: run it in each (``PYTHONPATH`` the
checkout), alternating, several times; the figures are noisy on a shared machine, compare
medians. ``make bench`` is the full measurement."""

from __future__ import annotations

import asyncio
import resource
import sys
import time
import uuid

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bench.data import CHUNK, Load
from consumer.service import Consumer, tune_gc
from shared import wire
from shared.connection import connect
from shared.servers import start_redis_server
from shared.settings import Settings

DEFAULT_N = 40_000
US_PER_S = 1e6


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def server_cpu_s(client: aioredis.Redis) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def measure(n: int) -> str:
    with start_redis_server() as server:
        tag = uuid.uuid4().hex[:8]
        s = Settings.load({"redis_url": server.url, "stream": f"ab:{tag}", "group": f"g{tag}",
                           "prefix": f"ab:{tag}", "name": "ab"}, env={})
        client = connect(server.url)
        try:
            load = Load(s)
            while load.next_i < n:
                snaps, payloads = load.take(min(CHUNK, n - load.next_i))
                pipe = client.pipeline(transaction=False)
                for snap, payload in zip(snaps, payloads, strict=True):
                    pipe.xadd(s.stream, wire.entry_fields(snap, payload))  # type: ignore[arg-type]
                await pipe.execute()
            consumer = Consumer(s, registry=CollectorRegistry())
            tune_gc()  # as `regionstream consume` does
            redis0, cpu0, t0 = await server_cpu_s(client), cpu_s(), time.monotonic()
            await consumer.run(drain=True)
            cpu1, t1, redis1 = cpu_s(), time.monotonic(), await server_cpu_s(client)
        finally:
            await client.aclose()
    persisted = consumer.totals()["persisted"]
    return (f"persisted={persisted} wall={t1 - t0:.2f}s "
            f"consumer_cpu_us_per_msg={(cpu1 - cpu0) / n * US_PER_S:.1f} "
            f"redis_cpu_us_per_msg={(redis1 - redis0) / n * US_PER_S:.1f}")


def main(argv: list[str]) -> int:
    n = int(argv[0]) if argv else DEFAULT_N
    print(asyncio.run(measure(n)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
