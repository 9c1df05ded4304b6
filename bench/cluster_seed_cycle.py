"""Scenario: the seed's cycle at 100 ms RTT on a Redis Cluster.

A 3-master cluster (no replicas), each master behind its own delay proxy (50 ms each way) and
announcing that proxy's port (``CONFIG SET cluster-announce-port``; the bus stays on its real
port), so the producer's and the consumer's NodeRouter, which connect where CLUSTER SLOTS
points, pay the round trip on every node. One consumer process (the real ``Consumer``, shipped
workers per shard, ``--shard-by region``) blocks on the 8 region shards through the proxies;
one cycle of 8 regions is published through them (``Publisher``: a pipeline per node, nodes in
parallel). Read on the masters themselves (MONITOR on a direct connection to each; one machine,
one clock, the clock entry ids come from): the spread of the 8 entry-id timestamps, and the
time from the first entry id to the last write of the store and to the last XACK.

Baseline, same run: the same consumer and layout (8 region shards) on one ``redis-server``
behind one delay proxy.
"""

from __future__ import annotations

import time
from typing import Any

from bench import cluster_common as cc
from bench import observe
from bench.config import CONSUMER_WORKERS, Context
from bench.data import now_ms
from bench.procs import kill_all, start_all
from bench.proxy import DelayProxy
from bench.seed_cycle import (
    BLOCKED_TIMEOUT_S,
    CYCLE_TIMEOUT_S,
    READ_BLOCK_MS,
    TARGET_PERSIST_RTT,
    TARGET_SPREAD_RTT,
    cycle_figures,
    summarise,
)
from bench.stats import MS_PER_S, ratio
from producer.publisher import Publisher
from producer.synthetic import SyntheticSource
from shared.connection import connect
from shared.keys import Keys
from shared.servers import start_redis_server
from shared.shards import Deployment, open_deployment

NAME = "cluster_seed_cycle"
MASTERS = 3
# The cluster must not need more round trips than the single server: a per-node pipeline,
# nodes in parallel, is still one round trip.
TARGET_VS_SINGLE = 0.8  # single-server time / cluster time, at least


async def _one_cycle(nodes: cc.Nodes, deployment: Deployment, keys: Keys,
                     publisher: Publisher, source: SyntheticSource, blocked: int
                     ) -> dict[str, Any]:
    await cc.wait_blocked(nodes, blocked, BLOCKED_TIMEOUT_S)
    snaps = source.cycle(now_ms())  # built before the clock starts
    monitors = [await observe.MonitorLog(n.direct).start() for n in nodes.all]
    started = time.perf_counter()
    ids = await publisher.publish(snaps)
    publish_s = time.perf_counter() - started
    if not await cc.wait_shards_drained(deployment, nodes, CYCLE_TIMEOUT_S):
        raise TimeoutError(f"one cycle not settled in {CYCLE_TIMEOUT_S}s")
    commands = [c for m in monitors for c in await m.stop()]
    await cc.delete_prefix(nodes, keys.prefix)  # next cycle: no dedup marker in the way
    streams = {shard.keys.stream for shard in deployment.shards}
    return cycle_figures(ids, publish_s, commands, keys.prefix, streams)


async def _measure(ctx: Context, tag: str, url: str, nodes: cc.Nodes, rtt_ms: float
                   ) -> dict[str, Any]:
    """One consumer process and the publisher, both through ``url`` (a proxy), for
    ``seed_repeats`` cycles."""
    keys = cc.bench_keys(ctx, NAME, tag)
    settings = ctx.settings(url, shard_by=cc.LAYOUT)
    spec = cc.consumer_spec(url, keys, tag, workers=CONSUMER_WORKERS, block_ms=READ_BLOCK_MS)
    runners = await start_all([spec], ctx.logs)
    ctx.display.line(f"  {tag}: consumer process ready")
    deployment = await open_deployment(url, keys, settings.regions, cc.LAYOUT)
    try:
        for client in deployment.node_clients():
            await client.ping()  # connected first: the cycle's round trip is the publish alone
        publisher = Publisher(deployment, settings)
        source = SyntheticSource(settings.regions, seed=len(tag))
        blocked = len(deployment.shards) * CONSUMER_WORKERS
        await runners[0].go()
        await cc.wait_blocked(nodes, blocked, BLOCKED_TIMEOUT_S)
        ctx.display.line(f"  {tag}: {blocked} readers blocked on {len(deployment.shards)} "
                         f"shards")
        cycles = [await _one_cycle(nodes, deployment, keys, publisher, source, blocked)
                  for _ in range(ctx.sizes.seed_repeats)]
        placement = nodes.placement(deployment)
    finally:
        # Killed, not stopped: only what Redis saw matters, and a stop would cost round trips.
        await kill_all(runners)
        await deployment.aclose()
    return {**summarise(cycles, rtt_ms), "nodes": [n.label for n in nodes.all],
            "shards_per_node": placement}


async def run(ctx: Context) -> dict[str, Any]:
    delay = ctx.sizes.delay_s
    rtt_ms = 2 * delay * MS_PER_S
    ctx.display.line(f"  cluster: {MASTERS} masters, a delay proxy each, "
                     f"{ctx.sizes.seed_repeats} cycle(s)")
    async with cc.proxied_cluster(MASTERS, delay) as (nodes, proxies):
        on_cluster = await _measure(ctx, "cluster", proxies[0].url, nodes, rtt_ms)
    ctx.display.line(f"  single server, one delay proxy: {ctx.sizes.seed_repeats} cycle(s)")
    with start_redis_server() as server:
        async with DelayProxy(server.port, delay,
                              max_connections=cc.PROXY_MAX_CONNECTIONS) as proxy:
            single = cc.Nodes([cc.Node(server.port, proxy.port, connect(server.url))])
            try:
                on_single = await _measure(ctx, "single", proxy.url, single, rtt_ms)
            finally:
                await single.aclose()
    return _result(ctx, rtt_ms, on_cluster, on_single)


def _result(ctx: Context, rtt_ms: float, cluster: dict[str, Any], single: dict[str, Any]
            ) -> dict[str, Any]:
    spread = cluster["entry_id_spread_rtt"]
    persist = cluster["first_id_to_last_persisted_rtt"]
    vs_single = ratio(single["first_id_to_last_persisted_ms"],
                      cluster["first_id_to_last_persisted_ms"])
    return {
        "title": f"The seed's cycle (8 regions, --shard-by {cc.LAYOUT}) at {rtt_ms:.0f} ms RTT "
                 f"on a {MASTERS}-master Redis Cluster",
        "command": ctx.command(NAME),
        "rtt_ms": rtt_ms,
        "masters": MASTERS,
        "how": "each master announces its own delay proxy (CONFIG SET cluster-announce-port "
               "<proxy port>, cluster-announce-bus-port = the real bus port; checked in "
               "CLUSTER SLOTS, cluster_state:ok); producer and consumer process follow "
               "CLUSTER SLOTS (shared.shards.NodeRouter), so every node costs the RTT",
        "cluster": cluster,
        "single_server": single,
        "ratio_vs_baseline": vs_single,
        "ratio_means": "single-server time / cluster time, first entry id -> last region "
                       "persisted; same consumer, same 8 region shards, one proxy per server "
                       "(1.0: the cluster costs no extra round trip)",
        "observed_with": "MONITOR on a direct connection to every master (one machine, one "
                         "clock); MONITOR formats every ~9 KB argument, which adds a few ms "
                         "per cycle: figures are upper bounds",
        "targets": {
            "entry_id_spread_rtt": {"target": f"< {TARGET_SPREAD_RTT}", "value": spread,
                                    "met": spread < TARGET_SPREAD_RTT},
            "first_id_to_last_persisted_rtt": {"target": f"<= {TARGET_PERSIST_RTT}",
                                               "value": persist,
                                               "met": persist <= TARGET_PERSIST_RTT},
            "vs_single_server": {"target": f">= {TARGET_VS_SINGLE} (no extra round trip)",
                                 "value": vs_single,
                                 "met": vs_single is not None and vs_single >= TARGET_VS_SINGLE},
        },
    }
