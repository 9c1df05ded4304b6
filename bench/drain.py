"""Scenario 2: drain rate, cold and warm. Every role drains its own copy of the same N snapshots
(one seed: the same payloads) on its own fresh redis-server, one role after the other: the real
consumer (shipped defaults), the hand-written batched consumer, the read+ack ceiling (the floor:
reading and acking alone), the "unchecked" diagnostic and the baseline (upstream's shape).

Per role: prefill, a COLD drain (the first persist on a fresh server: when a backlog is
persisted for the first time, which is when speed matters most), then the role's stored keys
deleted and every entry made new again for its group, and a WARM drain of the same entries on
the same server, which has been through one drain (its keyspace grown once, its allocator's
pages taken, its scripts compiled). Then that server is stopped: each holds the stream and the
stored snapshots, ~N x 9.3 KB twice. Messages/s, and CPU-µs per message of the contender's
process (getrusage) and of redis-server (``INFO cpu``), cold and warm.

Each drain has a contender process of its own (started before ``go``, stopped once drained):
warm is about the server. A contender process has no JIT and does its imports and script loads
before ``go``; it is in its steady state after its first batches, which N messages dwarf. A
second drain in the same process would start with its readers blocked on the emptied group
(XGROUP SETID wakes no blocked XREADGROUP): up to ``block_ms`` of idle in its measured time.
A process per drain keeps the runner protocol as it is (one ``go``, one ``stop``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import observe
from bench.config import CONSUMER_BATCH, CONSUMER_WORKERS, Context
from bench.data import Prefilled, delete_prefix, prefilled_server
from bench.procs import Runner, Spec, kill_all, start_all
from bench.runner import CONTENDERS
from bench.stats import ratio
from shared.keys import Keys

NAME = "drain"
# "unchecked" is a diagnostic, not a contender: the real consumer with the payload decode +
# validation skipped, to split the consumer's CPU per message into that check and the rest.
# The consumer and the batched contender run back to back: their ratio is the one that matters.
ROLES = ("consumer", "batched", "ceiling", "unchecked", "baseline")
PHASES = ("cold", "warm")
DRAIN_TIMEOUT_S = 300.0  # every role but the baseline, which has its own cap
# bench.contenders stop between reads, so a blocked read delays their stop by up to block_ms
# (the default 2 s, six times a run). A read blocks only once the backlog is gone, after the
# last ack measured: the figures do not depend on it. (The consumer abandons a blocked read.)
CONTENDER_BLOCK_MS = 100
US_PER_S = 1e6
KIB = 1024
TARGET_VS_BASELINE = 15.0
TARGET_OF_CEILING = 0.25
TARGET_CPU_US_PER_MSG = 25.0  # consumer and Redis each, cold and warm (issue #20)
RATE, CPU, REDIS_CPU = "msgs_per_s", "cpu_us_per_msg", "redis_cpu_us_per_msg"  # figures' keys


def contender_keys(ctx: Context, stream: str, role: str) -> Keys:
    return Keys(prefix=f"bench:{ctx.run_id}:{NAME}:{role}", stream=stream,
                group=f"bench-{role}")


async def drain_one(ctx: Context, runner: Runner, direct: aioredis.Redis, total: int,
                    timeout_s: float) -> dict[str, Any]:
    """Start ``runner`` and wait until its group is drained (or ``timeout_s``), then delete
    what it stored (the server stays small; a warm drain finds nothing stored). The caller
    stops the runner, idle meanwhile, and hands what it reports to :func:`figures`."""
    keys = runner.spec.keys
    server_cpu0 = await observe.server_cpu_s(direct)
    with ctx.display.task(f"{runner.spec.name} draining", total) as update:
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


async def _drain_in_a_process(ctx: Context, spec: Spec, direct: aioredis.Redis, total: int
                              ) -> dict[str, Any]:
    """One drain by a runner process of its own, stopped once drained: its figures."""
    cap = ctx.sizes.baseline_cap_s if spec.role == "baseline" else DRAIN_TIMEOUT_S
    (runner,) = await start_all([spec], ctx.logs)
    try:
        seen = await drain_one(ctx, runner, direct, total, cap)
        return figures(runner, seen, await runner.stop())
    finally:
        await kill_all([runner])


async def _renew(direct: aioredis.Redis, keys: Keys) -> None:
    """Every entry new again for the group, once the cold drain left its PEL empty (a pending
    entry would be delivered twice: from the PEL and as new). The same group, not a second
    one: the server keeps one group's state, as after the cold drain, and the contender needs
    no other name. ENTRIESREAD 0, or XINFO's lag would be unknown and the wait would see
    nothing outstanding."""
    await direct.xgroup_setid(keys.stream, keys.group, "0", entries_read=0)


def _spec(ctx: Context, url: str, stream: str, role: str, phase: str,
          profile: Path | None = None) -> Spec:
    # The baseline is upstream's shape: one reader, one message at a time.
    workers = 1 if role == "baseline" else CONSUMER_WORKERS
    opts: dict[str, Any] = {"workers": workers, "batch": CONSUMER_BATCH}
    if role in CONTENDERS:
        opts["block_ms"] = CONTENDER_BLOCK_MS
    if profile is not None:
        opts["profile"] = str(profile)
    name = role if profile is None else f"{role}-profiled"
    # One name per drain: the runner's log (and the group's consumer names) are per process.
    return Spec(role, url, contender_keys(ctx, stream, name), name=f"{name}-{phase}",
                options=opts)


async def _drain_role(ctx: Context, role: str, n: int, profile: Path | None = None
                      ) -> tuple[Prefilled, dict[str, Any]]:
    """``role`` on a fresh server of its own: prefilled, drained cold, then warm (see the
    module docstring). A profiled run drains cold only, and a cold drain that did not finish
    (the baseline's cap) is not followed by a warm one: its group is not empty, and a second
    capped drain would only add time."""
    async with prefilled_server(ctx, NAME, n) as (url, direct, pre):
        cold = await _drain_in_a_process(ctx, _spec(ctx, url, pre.stream, role, "cold",
                                                     profile), direct, n)
        warm = None
        if profile is None and cold["drained"]:
            spec = _spec(ctx, url, pre.stream, role, "warm")
            await _renew(direct, spec.keys)
            warm = await _drain_in_a_process(ctx, spec, direct, n)
    return pre, {"cold": cold, "warm": warm}


async def run(ctx: Context) -> dict[str, Any]:
    n = ctx.sizes.drain_messages
    results: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        # every role's prefill is the same (one seed): the last one stands for them all
        pre, results[role] = await _drain_role(ctx, role, n)
    profile = await _profiled(ctx, n) if ctx.profile else None
    return _result(ctx, pre, results, profile)


async def _profiled(ctx: Context, n: int) -> dict[str, Any]:
    """The consumer once more under pyinstrument, cold on a fresh server (slower: its figures
    are not the result)."""
    path = (ctx.out / "profile-consumer-drain").resolve()
    _, profiled = await _drain_role(ctx, "consumer", n, profile=path)
    return {**profiled["cold"], "profile_text": str(path.with_suffix(".txt")),
            "profile_html": str(path.with_suffix(".html"))}


def phase_figure(results: dict[str, Any], role: str, phase: str, name: str) -> Any:
    """A figure of ``role``'s ``phase`` drain in ``results`` (by role, as in the scenario's
    result), None when that drain did not run."""
    drain = results[role][phase]
    return None if drain is None else drain[name]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 1)


def _at_most(value: float | None, limit: float) -> dict[str, Any]:
    return {"target": f"<= {limit:g} CPU-µs/msg", "value": value,
            "met": value is not None and value <= limit}


def _compared(r: dict[str, dict[str, Any]], phase: str) -> dict[str, Any]:
    """What one phase's drains say side by side."""

    def of(role: str, name: str) -> Any:
        return phase_figure(r, role, phase, name)

    return {
        # the ceiling: reading and acking alone (consumer), XREADGROUP + XACK alone (Redis)
        "floor": {CPU: of("ceiling", CPU), REDIS_CPU: of("ceiling", REDIS_CPU)},
        # msg/s: consumer / batched; CPU: batched / consumer (above 1: the consumer spends less)
        "vs_batched": {"msgs_per_s": ratio(of("consumer", RATE), of("batched", RATE)),
                       "consumer_cpu": ratio(of("batched", CPU), of("consumer", CPU)),
                       "redis_cpu": ratio(of("batched", REDIS_CPU), of("consumer", REDIS_CPU))},
        # what decoding + validating a payload costs the consumer, per message
        "check_cpu_us_per_msg": _minus(of("consumer", CPU), of("unchecked", CPU)),
        "targets": {"consumer_cpu": _at_most(of("consumer", CPU), TARGET_CPU_US_PER_MSG),
                    "redis_cpu": _at_most(of("consumer", REDIS_CPU), TARGET_CPU_US_PER_MSG)},
    }


def _result(ctx: Context, pre: Prefilled, r: dict[str, dict[str, Any]],
            profile: dict[str, Any] | None) -> dict[str, Any]:
    cold_rate, baseline = r["consumer"]["cold"][RATE], r["baseline"]
    vs_baseline = ratio(cold_rate, baseline["cold"][RATE])
    of_ceiling = ratio(cold_rate, r["ceiling"]["cold"][RATE])
    compared = {phase: _compared(r, phase) for phase in PHASES}
    targets = {
        "vs_baseline": {"target": f">= {TARGET_VS_BASELINE}x", "value": vs_baseline,
                        "met": vs_baseline is not None and vs_baseline >= TARGET_VS_BASELINE},
        "of_ceiling": {"target": f">= {TARGET_OF_CEILING}", "value": of_ceiling,
                       "met": of_ceiling is not None and of_ceiling >= TARGET_OF_CEILING},
        **{f"{side}_{phase}": c["targets"][side]
           for phase, c in compared.items() for side in ("consumer_cpu", "redis_cpu")},
    }
    out: dict[str, Any] = {
        "title": f"Drain rate: {pre.count} prefilled snapshots, one consumer process, loopback, "
                 "cold and warm, each role on a fresh redis-server",
        "command": ctx.command(NAME),
        "messages": pre.count,
        "mean_payload_bytes": round(pre.mean_payload_bytes),
        **r,
        **{key: {phase: c[key] for phase, c in compared.items()}
           for key in ("floor", "vs_batched", "check_cpu_us_per_msg")},
        "ratio_vs_baseline": vs_baseline,
        "fraction_of_ceiling": of_ceiling,
        "ratio_means": "cold drains: consumer msg/s / baseline msg/s (fraction_of_ceiling: "
                       "/ ceiling msg/s)",
        "targets": targets,
    }
    if profile is not None:
        out["profile"] = profile
    if not baseline["cold"]["drained"]:
        out["note"] = (f"the baseline was stopped after {ctx.sizes.baseline_cap_s:.0f}s; its "
                       "rate is over the messages it settled in that time, and it was not "
                       "drained warm")
    return out
