"""Scenario 1: the seed's cycle at 100 ms RTT.

A contender is blocked on the stream through the delay proxy; one cycle of 8 regions is
published through the proxy. On Redis itself (MONITOR, the server's clock, the clock entry ids
come from) we read (a) the spread of the 8 entry-id timestamps and (b) the time from the first
entry id to the last write of the contender's store, and to its last XACK.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio as aioredis

from bench import observe
from bench.config import CONSUMER_WORKERS, Context
from bench.data import delete_prefix, now_ms
from bench.procs import Runner, Spec, kill_all, start_all
from bench.proxy import DelayProxy
from bench.stats import MS_PER_S, median, ratio
from producer.publisher import Publisher
from producer.synthetic import SyntheticSource
from shared.connection import connect
from shared.keys import Keys
from shared.servers import start_redis_server
from shared.shards import single_server

NAME = "seed_cycle"
# Readers stay blocked for the whole scenario (no re-issued read through the proxy while the
# cycle is on its way); this needs the runner's --long-reads (no client socket timeout).
READ_BLOCK_MS = 600_000
BLOCKED_TIMEOUT_S = 30.0
CYCLE_TIMEOUT_S = 60.0  # the baseline needs ~2.5 s per cycle at 100 ms RTT
WRITES = frozenset({"SET", "ZADD", "ZREMRANGEBYSCORE"})
TARGET_SPREAD_RTT = 0.5
TARGET_PERSIST_RTT = 1.5
UPSTREAM_RTTS = 24  # 8 regions x (SET NX + pipeline + XACK)
READERS = {"consumer": CONSUMER_WORKERS, "baseline": 1}


def _keys(role: str, run_id: str) -> Keys:
    return Keys(prefix=f"bench:{run_id}:seed:{role}", stream=f"bench:{run_id}:seed:{role}",
                group="bench")


async def _one_cycle(ctx: Context, runner: Runner, direct: aioredis.Redis,
                     publisher: Publisher, source: SyntheticSource) -> dict[str, Any]:
    keys = runner.spec.keys
    await observe.wait_blocked(direct, READERS[runner.spec.role], BLOCKED_TIMEOUT_S)
    snaps = source.cycle(now_ms())  # built before the clock starts
    monitor = await observe.MonitorLog(direct).start()
    started = time.perf_counter()
    ids = await publisher.publish(snaps)
    publish_s = time.perf_counter() - started
    if not await observe.wait_drained(direct, keys, CYCLE_TIMEOUT_S):
        raise TimeoutError(f"{runner.spec.role} did not settle one cycle in {CYCLE_TIMEOUT_S}s")
    commands = await monitor.stop()
    await delete_prefix(direct, keys.prefix)  # next cycle: no dedup marker in the way
    return cycle_figures(ids, publish_s, commands, keys.prefix, {keys.stream})


def cycle_figures(ids: list[bytes], publish_s: float, commands: list[observe.Command],
                  prefix: str, streams: set[str]) -> dict[str, Any]:
    """One cycle's figures (ms after its first entry id, on the server's clock) from the
    entry ids and what MONITOR saw: the store's writes under ``prefix``, XACKs on
    ``streams``."""
    id_ms = [int(i.split(b"-", 1)[0]) for i in ids]
    first = min(id_ms)
    writes = [c.time_s for c in commands
              if c.name in WRITES and c.key.startswith(prefix + ":")]
    acks = [c.time_s for c in commands if c.name == "XACK" and c.key in streams]
    return {
        "publish_call_ms": publish_s * MS_PER_S,
        "entry_id_spread_ms": float(max(id_ms) - first),
        "first_id_to_last_persisted_ms": max(writes) * MS_PER_S - first,
        "first_id_to_last_ack_ms": max(acks) * MS_PER_S - first,
        "acks_ms": sorted(t * MS_PER_S - first for t in acks),
    }


def summarise(cycles: list[dict[str, Any]], rtt_ms: float) -> dict[str, Any]:
    """Median of each figure over the cycles, in ms and in round trips; the XACK times of
    the first cycle show the shape (one settle, or several in series)."""
    out: dict[str, Any] = {"cycles": len(cycles)}
    for metric, first in cycles[0].items():
        if metric == "acks_ms":
            out["xack_times_rtt"] = [round(t / rtt_ms, 2) for t in first]
            continue
        value = median([c[metric] for c in cycles])
        out[metric] = round(value, 2)
        out[metric.replace("_ms", "_rtt")] = round(value / rtt_ms, 2)
    return out


async def _contender(ctx: Context, runner: Runner, direct: aioredis.Redis, proxy: DelayProxy
                     ) -> dict[str, Any]:
    settings = ctx.settings(proxy.url)
    through_proxy = connect(proxy.url)
    try:
        await through_proxy.ping()  # connect first: the cycle's round trip is the XADDs alone
        publisher = Publisher(single_server(proxy.url, through_proxy, runner.spec.keys,
                                            settings.regions), settings)
        source = SyntheticSource(settings.regions, seed=len(runner.spec.role))
        await runner.go()
        cycles = [await _one_cycle(ctx, runner, direct, publisher, source)
                  for _ in range(ctx.sizes.seed_repeats)]
    finally:
        await through_proxy.aclose()
    return summarise(cycles, 2 * proxy.delay_s * MS_PER_S)


async def run(ctx: Context) -> dict[str, Any]:
    rtt_ms = 2 * ctx.sizes.delay_s * MS_PER_S
    with start_redis_server() as server:
        direct = connect(server.url)
        async with DelayProxy(server.port, ctx.sizes.delay_s) as proxy:
            specs = [Spec(role, proxy.url, _keys(role, ctx.run_id), name=role,
                          options={"workers": READERS[role], "block_ms": READ_BLOCK_MS,
                                   "long_reads": True})
                     for role in ("consumer", "baseline")]
            runners = await start_all(specs, ctx.logs)
            try:
                results = {}
                for runner in runners:
                    ctx.display.line(f"  {runner.spec.role}: {ctx.sizes.seed_repeats} cycle(s)")
                    results[runner.spec.role] = await _contender(ctx, runner, direct, proxy)
            finally:
                # Killed, not stopped: a graceful stop would wait out the long blocking read,
                # and only what Redis saw matters here.
                await kill_all(runners)
        await direct.aclose()
    return _result(ctx, rtt_ms, results["consumer"], results["baseline"])


def _result(ctx: Context, rtt_ms: float, consumer: dict[str, Any], baseline: dict[str, Any]
            ) -> dict[str, Any]:
    persist_rtt = consumer["first_id_to_last_persisted_rtt"]
    return {
        "title": "The seed's cycle (8 regions) at 100 ms RTT",
        "command": ctx.command(NAME),
        "rtt_ms": rtt_ms,
        "consumer": consumer,
        "baseline": baseline,
        "ratio_vs_baseline": ratio(baseline["first_id_to_last_persisted_ms"],
                                   consumer["first_id_to_last_persisted_ms"]),
        "ratio_means": "baseline time / consumer time, first entry id -> last region persisted",
        "observed_with": "MONITOR on a direct connection (server clock); MONITOR formats every "
                         "~9 KB argument, which adds a few ms per cycle: figures are upper bounds",
        "targets": {
            "entry_id_spread_rtt": {"target": f"< {TARGET_SPREAD_RTT}",
                                    "value": consumer["entry_id_spread_rtt"],
                                    "met": consumer["entry_id_spread_rtt"] < TARGET_SPREAD_RTT},
            "first_id_to_last_persisted_rtt": {"target": f"<= {TARGET_PERSIST_RTT}",
                                               "value": persist_rtt,
                                               "met": persist_rtt <= TARGET_PERSIST_RTT},
            "baseline_first_id_to_last_persisted_rtt": {
                "target": f"~ {UPSTREAM_RTTS} (upstream's shape)",
                "value": baseline["first_id_to_last_persisted_rtt"], "met": None},
        },
    }
