"""Scenario 4: scaling and memory.

Scaling: one prefilled stream; 1, 2 and 4 consumer processes (shipped defaults each) share one
group per process count; rate = messages / (last ack of any process - go). The baseline drains
the same stream for a bounded time for the ratio. Memory: one consumer process fed by a
producer (backlog bounded, stream trimmed, snapshots kept briefly) for ``memory_messages``;
RSS sampled along the way, at ``memory_checkpoint`` and at the end.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis.asyncio as aioredis

from bench import observe
from bench.config import CONSUMER_BATCH, CONSUMER_WORKERS, Context
from bench.data import CHUNK, Load, delete_prefix, prefilled_server
from bench.drain import US_PER_S, drain_one, figures
from bench.procs import Spec, kill_all, start_all
from bench.runner import rss_kib
from bench.stats import ratio
from producer.publisher import Publisher
from shared.connection import connect
from shared.keys import Keys
from shared.servers import start_redis_server
from shared.shards import single_server

NAME = "scaling"
DRAIN_TIMEOUT_S = 300.0
KIB_PER_MIB = 1024
# Memory run: stored snapshots expire after this (the default 90 days would keep ~9 GB for
# 1M snapshots in Redis); the consumer's work per message is the same.
MEMORY_RETENTION_S = 10
BACKLOG_CAP = 20_000  # the producer waits when this many entries are outstanding
TRIM_EVERY_CHUNKS = 20
TARGET_RSS_GROWTH = 0.10


def _keys(ctx: Context, stream: str, tag: str) -> Keys:
    return Keys(prefix=f"bench:{ctx.run_id}:{NAME}:{tag}", stream=stream, group=f"bench-{tag}")


def _consumers(ctx: Context, url: str, stream: str, procs: int) -> list[Spec]:
    keys = _keys(ctx, stream, f"p{procs}")
    opts = {"workers": CONSUMER_WORKERS, "batch": CONSUMER_BATCH}
    return [Spec("consumer", url, keys, name=f"p{procs}-{j}", options=opts)
            for j in range(procs)]


async def _scale(ctx: Context, url: str, stream: str, direct: aioredis.Redis, procs: int,
                 total: int) -> dict[str, Any]:
    runners = await start_all(_consumers(ctx, url, stream, procs), ctx.logs)
    try:
        server_cpu0 = await observe.server_cpu_s(direct)
        with ctx.display.task(f"{procs} process(es) draining", total) as update:
            await asyncio.gather(*(r.go() for r in runners))
            drained = await observe.wait_drained(direct, runners[0].spec.keys,
                                                 DRAIN_TIMEOUT_S, update)
        server_cpu = await observe.server_cpu_s(direct) - server_cpu0
        await delete_prefix(direct, runners[0].spec.keys.prefix)
        done = await asyncio.gather(*(r.stop() for r in runners))
    finally:
        await kill_all(runners)
    acked = sum(int(d["acked"]) for d in done)
    wall = max(d["t_last"] or 0.0 for d in done) - min(d["t_go"] for d in done)
    return {
        "processes": procs, "messages": acked, "drained": drained, "seconds": round(wall, 3),
        "msgs_per_s": round(acked / wall, 1) if wall > 0 else 0.0,
        "cpu_us_per_msg": (round(sum(d["cpu_s"] for d in done) / acked * US_PER_S, 1)
                           if acked else None),
        "redis_cpu_us_per_msg": round(server_cpu / acked * US_PER_S, 1) if acked else None,
        "rss_mib_per_process": [round(d["rss_kib"] / KIB_PER_MIB, 1) for d in done],
    }


async def _baseline(ctx: Context, url: str, stream: str, direct: aioredis.Redis, total: int
                    ) -> dict[str, Any]:
    spec = Spec("baseline", url, _keys(ctx, stream, "baseline"), name="baseline",
                options={"workers": 1, "batch": CONSUMER_BATCH})
    (runner,) = await start_all([spec], ctx.logs)
    try:
        seen = await drain_one(ctx, runner, direct, total, ctx.sizes.scaling_baseline_cap_s)
        return figures(runner, seen, await runner.stop())
    finally:
        await kill_all([runner])


async def scaling(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.scaling_messages
    async with prefilled_server(ctx, NAME, n) as (url, direct, pre):
        runs = [await _scale(ctx, url, pre.stream, direct, p, n)
                for p in ctx.sizes.scaling_processes]
        baseline = await _baseline(ctx, url, pre.stream, direct, n)
    for r in runs:
        r["ratio_vs_baseline"] = ratio(r["msgs_per_s"], baseline["msgs_per_s"])
        r["ratio_vs_one_process"] = ratio(r["msgs_per_s"], runs[0]["msgs_per_s"])
    return {"runs": runs, "baseline": baseline}


class _Feeder:
    """Publishes up to ``target`` snapshots, never more than BACKLOG_CAP ahead of the group,
    and trims what the group acknowledged (so Redis holds a bounded window, not 1M entries)."""

    def __init__(self, direct: aioredis.Redis, keys: Keys, ctx: Context, url: str) -> None:
        settings = ctx.settings(url, stream_retention_s=0)  # trim = everything acked
        self.publisher = Publisher(single_server(url, direct, keys, settings.regions), settings)
        self.load = Load(settings)
        self.direct, self.keys = direct, keys
        self.chunks = 0

    async def step(self, target: int) -> observe.Progress:
        """Publish one chunk if there is room; returns the group's progress."""
        p = await observe.progress(self.direct, self.keys)
        room = min(BACKLOG_CAP - p.outstanding, target - self.load.next_i, CHUNK)
        if room <= 0:
            await asyncio.sleep(observe.POLL_S)
            return p
        snaps, payloads = self.load.take(room)
        await self.publisher.publish(snaps, payloads)
        self.chunks += 1
        if self.chunks % TRIM_EVERY_CHUNKS == 0:
            await self.publisher.trim()
        return p


async def _feed(ctx: Context, feeder: _Feeder, pid: int, target: int) -> dict[str, Any]:
    """Run the feeder until ``target`` acked or the time budget; sample RSS as acks pass
    evenly spaced marks (the checkpoint is one of them)."""
    s = ctx.sizes
    marks = sorted({s.memory_checkpoint, target,
                    *(target * (i + 1) // s.memory_samples for i in range(s.memory_samples))})
    samples: list[list[int]] = []
    deadline = time.monotonic() + s.memory_budget_s
    acked = 0
    with ctx.display.task("memory run (acked)", target) as update:
        while acked < target and time.monotonic() < deadline:
            acked = (await feeder.step(target)).acked
            update(acked)
            while marks and acked >= marks[0]:
                samples.append([marks.pop(0), rss_kib(pid)])
    if not samples or samples[-1][0] != acked:
        samples.append([acked, rss_kib(pid)])
    return {"acked": acked, "samples": samples}


async def memory(ctx: Context) -> dict[str, Any]:
    s = ctx.sizes
    with start_redis_server() as server:
        direct = connect(server.url)
        stream = f"bench:{ctx.run_id}:memory"
        keys = _keys(ctx, stream, "memory")
        spec = Spec("consumer", server.url, keys, name="memory",
                    options={"workers": CONSUMER_WORKERS, "batch": CONSUMER_BATCH,
                             "retention_s": MEMORY_RETENTION_S})
        (runner,) = await start_all([spec], ctx.logs)
        try:
            await runner.go()
            fed = await _feed(ctx, _Feeder(direct, keys, ctx, server.url), runner.pid,
                              s.memory_messages)
            await runner.stop()
        finally:
            await kill_all([runner])
        await direct.aclose()
    return _memory_result(ctx, fed)


def _memory_result(ctx: Context, fed: dict[str, Any]) -> dict[str, Any]:
    s = ctx.sizes
    samples = fed["samples"]
    at_checkpoint = next((kib for n, kib in samples if n >= s.memory_checkpoint), None)
    final_n, final_kib = samples[-1]
    growth = (final_kib / at_checkpoint - 1) if at_checkpoint else None
    out: dict[str, Any] = {
        "messages_target": s.memory_messages,
        "messages_reached": final_n,
        "rss_mib_at_checkpoint": round(at_checkpoint / KIB_PER_MIB, 1) if at_checkpoint else None,
        "checkpoint_messages": s.memory_checkpoint,
        "rss_mib_at_end": round(final_kib / KIB_PER_MIB, 1),
        "rss_growth": round(growth, 4) if growth is not None else None,
        "rss_samples_mib": [[n, round(kib / KIB_PER_MIB, 1)] for n, kib in samples],
        "retention_s": MEMORY_RETENTION_S,
    }
    if final_n < s.memory_messages:
        out["trimmed"] = (f"cut at {final_n} of {s.memory_messages} messages by the "
                          f"{s.memory_budget_s:.0f}s time budget")
    return out


async def run(ctx: Context) -> dict[str, Any]:
    scaled = await scaling(ctx)
    mem = await memory(ctx)
    growth = mem["rss_growth"]
    return {
        "title": "Scaling over consumer processes, and consumer memory over a long run",
        "command": ctx.command(NAME),
        "cpus_available": len(os.sched_getaffinity(0)),
        "messages": ctx.sizes.scaling_messages,
        **scaled,
        "ratio_vs_baseline": scaled["runs"][0]["ratio_vs_baseline"],
        "ratio_means": "consumer msg/s (1 process) / baseline msg/s, same stream",
        "memory": mem,
        "targets": {
            "rss_growth": {"target": f"<= {TARGET_RSS_GROWTH:.0%} from "
                                     f"{ctx.sizes.memory_checkpoint} to the end",
                           "value": growth,
                           "met": growth is not None and growth <= TARGET_RSS_GROWTH},
        },
    }
