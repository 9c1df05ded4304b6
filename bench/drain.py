"""Scenario 2: drain rate. One prefilled stream of N snapshots; each contender drains it with
its own group and store prefix, in its own process, one after the other: the real consumer
(shipped defaults), the baseline, and the read+ack ceiling. Messages/s, and CPU-µs per message
of the contender's process and of redis-server."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import observe
from bench.config import CONSUMER_BATCH, CONSUMER_WORKERS, Context
from bench.data import Prefilled, delete_prefix, prefilled_server
from bench.procs import Runner, Spec, kill_all, start_all
from bench.stats import ratio
from shared.keys import Keys

NAME = "drain"
# "unchecked" is a diagnostic, not a contender: the real consumer with the payload decode +
# validation skipped, to split the consumer's CPU per message into that check and the rest.
ROLES = ("ceiling", "consumer", "unchecked", "baseline")
DRAIN_TIMEOUT_S = 300.0  # the real consumer and the ceiling; the baseline has its own cap
US_PER_S = 1e6
KIB = 1024
TARGET_VS_BASELINE = 15.0
TARGET_OF_CEILING = 0.25


def contender_keys(ctx: Context, stream: str, role: str) -> Keys:
    return Keys(prefix=f"bench:{ctx.run_id}:{NAME}:{role}", stream=stream,
                group=f"bench-{role}")


async def drain_one(ctx: Context, runner: Runner, direct: aioredis.Redis, total: int,
                    timeout_s: float) -> dict[str, Any]:
    """Start ``runner`` and wait until its group is drained (or ``timeout_s``). The runner is
    stopped later (:func:`figures`), with the others at once: a graceful consumer stop waits
    out its blocking read, and an idle runner costs nothing meanwhile."""
    keys = runner.spec.keys
    server_cpu0 = await observe.server_cpu_s(direct)
    with ctx.display.task(f"{runner.spec.role} draining", total) as update:
        await runner.go()
        drained = await observe.wait_drained(direct, keys, timeout_s, update)
    server_cpu = await observe.server_cpu_s(direct) - server_cpu0
    await delete_prefix(direct, keys.prefix)
    return {"drained": drained, "server_cpu_s": server_cpu}


def figures(runner: Runner, drained: dict[str, Any], done: dict[str, Any]) -> dict[str, Any]:
    """One contender's figures from what the parent saw and what the runner reported."""
    acked = int(done["acked"])
    wall = (done["t_last"] - done["t_go"]) if done["t_last"] else 0.0
    return {
        "messages": acked,
        "drained": drained["drained"],
        "seconds": round(wall, 3),
        "msgs_per_s": round(acked / wall, 1) if wall else 0.0,
        "cpu_us_per_msg": round(done["cpu_s"] / acked * US_PER_S, 1) if acked else None,
        "redis_cpu_us_per_msg": (round(drained["server_cpu_s"] / acked * US_PER_S, 1)
                                 if acked else None),
        "rss_mib": round(done["rss_kib"] / KIB, 1),
        "workers": runner.spec.options.get("workers"),
        "batch": runner.spec.options.get("batch"),
    }


async def drain_all(ctx: Context, runners: list[Runner], direct: aioredis.Redis, total: int
                    ) -> dict[str, dict[str, Any]]:
    """Each runner drains in turn; then all are stopped together."""
    seen = []
    for runner in runners:
        cap = ctx.sizes.baseline_cap_s if runner.spec.role == "baseline" else DRAIN_TIMEOUT_S
        seen.append(await drain_one(ctx, runner, direct, total, cap))
    done = await asyncio.gather(*(r.stop() for r in runners))
    return {r.spec.name: figures(r, s, d) for r, s, d in zip(runners, seen, done, strict=True)}


def _spec(ctx: Context, url: str, stream: str, role: str, profile: Path | None = None
          ) -> Spec:
    # The baseline is upstream's shape: one reader, one message at a time.
    workers = 1 if role == "baseline" else CONSUMER_WORKERS
    opts: dict[str, Any] = {"workers": workers, "batch": CONSUMER_BATCH}
    if profile is not None:
        opts["profile"] = str(profile)
    name = role if profile is None else f"{role}-profiled"
    keys = contender_keys(ctx, stream, name)
    return Spec(role, url, keys, name=name, options=opts)


async def run(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.drain_messages
    async with prefilled_server(ctx, NAME, n) as (url, direct, pre):
        runners = await start_all([_spec(ctx, url, pre.stream, r) for r in ROLES], ctx.logs)
        try:
            results: dict[str, Any] = await drain_all(ctx, runners, direct, n)
            if ctx.profile:
                results["profile"] = await _profiled(ctx, url, pre.stream, direct, n)
        finally:
            await kill_all(runners)
    return _result(ctx, pre, results)


async def _profiled(ctx: Context, url: str, stream: str, direct: aioredis.Redis, n: int
                    ) -> dict[str, Any]:
    """The consumer once more under pyinstrument (slower: its figures are not the result)."""
    path = (ctx.out / "profile-consumer-drain").resolve()
    runners = await start_all([_spec(ctx, url, stream, "consumer", profile=path)], ctx.logs)
    try:
        (profiled,) = (await drain_all(ctx, runners, direct, n)).values()
    finally:
        await kill_all(runners)
    return {**profiled, "profile_text": str(path.with_suffix(".txt")),
            "profile_html": str(path.with_suffix(".html"))}


def _result(ctx: Context, pre: Prefilled, r: dict[str, Any]) -> dict[str, Any]:
    consumer, baseline, ceiling = r["consumer"], r["baseline"], r["ceiling"]
    unchecked = r["unchecked"]
    vs_baseline = ratio(consumer["msgs_per_s"], baseline["msgs_per_s"])
    of_ceiling = ratio(consumer["msgs_per_s"], ceiling["msgs_per_s"])
    out = {
        "title": f"Drain rate: {pre.count} prefilled snapshots, one consumer process, loopback",
        "command": ctx.command(NAME),
        "messages": pre.count,
        "mean_payload_bytes": round(pre.mean_payload_bytes),
        "consumer": consumer, "baseline": baseline, "ceiling": ceiling,
        "unchecked": unchecked,
        # what decoding + validating a payload costs the consumer, per message
        "check_cpu_us_per_msg": (round(consumer["cpu_us_per_msg"] - unchecked["cpu_us_per_msg"],
                                       1) if consumer["cpu_us_per_msg"]
                                 and unchecked["cpu_us_per_msg"] else None),
        "ratio_vs_baseline": vs_baseline,
        "fraction_of_ceiling": of_ceiling,
        "cpu_ratio_baseline_vs_consumer": ratio(baseline["cpu_us_per_msg"],
                                                consumer["cpu_us_per_msg"]),
        "targets": {
            "vs_baseline": {"target": f">= {TARGET_VS_BASELINE}x", "value": vs_baseline,
                            "met": vs_baseline is not None and vs_baseline >= TARGET_VS_BASELINE},
            "of_ceiling": {"target": f">= {TARGET_OF_CEILING}", "value": of_ceiling,
                           "met": of_ceiling is not None and of_ceiling >= TARGET_OF_CEILING},
        },
    }
    if "profile" in r:
        out["profile"] = r["profile"]
    if not baseline["drained"]:
        out["note"] = (f"the baseline was stopped after {ctx.sizes.baseline_cap_s:.0f}s; its "
                       "rate is over the messages it settled in that time")
    return out
