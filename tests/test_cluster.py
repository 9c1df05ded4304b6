"""regionstream on a real local Redis Cluster (3 masters + 3 replicas of Debian's redis-server,
harness/cluster.py): the cluster is found out from the server, each region gets its
own stream shard in the slot of its data, and every script call and MULTI/EXEC is judged by the
server itself (a key in another slot is CROSSSLOT: a regression cannot pass). A failover and a
moved slot in the middle of a drain lose nothing and apply nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from harness.cluster import Cluster, start_cluster
from shared import wire
from shared.schema import decode
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import check_exactly_once, load_payloads, owner
from tests.proc import Proc, common_flags, one_line, run_cli

N = 400
# Snapshots drained through each topology change (`make cluster-chaos` runs more).
TOPOLOGY_SNAPSHOTS = int(os.environ.get("CLUSTER_CHAOS_SNAPSHOTS", "1600"))
POISON = [b"{not json", b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}"]
CONSUME = ["consume", "--drain", "--workers", "1", "--batch", "20", "--block-ms", "100",
           "--min-idle-ms", "500", "--claim-interval-ms", "200", "--retry-backoff-ms", "50"]


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    """The session's cluster, for the tests that change nothing of its topology."""
    return shared_cluster


def cluster_settings(cluster: Cluster) -> Settings:
    tag = uuid.uuid4().hex[:10]
    return Settings.load({"redis_url": cluster.url, "stream": f"cs:{tag}", "group": f"g-{tag}",
                          "prefix": f"cp:{tag}", "name": f"w-{tag}"}, env={})


def payloads(s: Settings, n: int = N) -> list[bytes]:
    return load_payloads(s, n, seed=41)


def produce(s: Settings, lines: list[bytes], tmp: Path) -> None:
    source = tmp / f"{uuid.uuid4().hex}.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    done = run_cli(["produce", "--source", str(source), "--chunk", "50", *common_flags(s)])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert f"published {len(lines)} snapshot(s)".encode() in done.stderr


def add_poison(cluster: Cluster | str, s: Settings) -> dict[str, list[bytes]]:
    """Garbage in two shards, and in a third an entry claiming another region (its keys would
    live in another slot): each is dead-lettered in the shard it came from."""
    regions = list(s.regions)
    sent: dict[str, list[bytes]] = {}
    for region, payload in zip(regions[:2], POISON, strict=True):
        with owner(cluster, s.keys.shard(region).stream) as c:
            c.xadd(s.keys.shard(region).stream, {b"schema": b"1", b"payload": payload})
        sent.setdefault(region, []).append(payload)
    stray = payloads(s, 1)[0]  # a valid snapshot of regions[0] ...
    target = next(r for r in regions if r != decode(stray).region_id)
    with owner(cluster, s.keys.shard(target).stream) as c:  # ... in another region's shard
        c.xadd(s.keys.shard(target).stream, wire.entry_fields(decode(stray), stray))
    sent.setdefault(target, []).append(stray)
    return sent


def test_pipeline_on_a_cluster_finds_it_and_shards_by_region(cluster: Cluster,
                                                              tmp_path: Path) -> None:
    s = cluster_settings(cluster)
    lines = payloads(s)
    produce(s, lines, tmp_path)
    poison = add_poison(cluster, s)
    done = run_cli([*CONSUME, *common_flags(s)])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"region shards" in done.stderr and b"Redis Cluster" in done.stderr
    check_exactly_once(cluster, s, lines, poison)
    # The shards are spread over the masters, as the slots of the region tags fall.
    owners = {cluster.master_of_slot(key_slot(s.keys.shard(r).stream.encode())).port
              for r in s.regions}
    assert len(owners) >= 2
    shown = run_cli(["show", s.regions[0], "--json", *common_flags(s)])
    assert shown.returncode == 0, shown.stderr.decode()[-2000:]


def test_region_layout_on_a_single_server(redis_url: str, tmp_path: Path) -> None:
    """--shard-by region works on one server too: the same shards, the same checks."""
    tag = uuid.uuid4().hex[:10]
    s = Settings.load({"redis_url": redis_url, "stream": f"ss:{tag}", "group": f"g-{tag}",
                       "prefix": f"sp:{tag}", "shard_by": "region"}, env={})
    lines = payloads(s)
    flags = [*common_flags(s), "--shard-by", "region"]
    source = tmp_path / "s.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    done = run_cli(["produce", "--source", str(source), "--chunk", "50", *flags])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    poison = add_poison(redis_url, s)
    with owner(redis_url, s.stream) as c:
        assert not c.exists(s.stream)  # nothing on the unsharded stream
    done = run_cli([*CONSUME, *flags])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert b"region shards" in done.stderr and b"Cluster" not in done.stderr
    check_exactly_once(redis_url, s, lines, poison)


def test_one_stream_is_refused_on_a_cluster_with_one_line(cluster: Cluster) -> None:
    s = cluster_settings(cluster)
    done = run_cli(["produce", "--once", "--shard-by", "none", *common_flags(s)])
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.count("\n") == 1 and "--shard-by" in err and "Traceback" not in err


def test_hot_path_sends_no_command_getkeys(cluster: Cluster, tmp_path: Path) -> None:
    """Reads and settles go to the owning node as they are: no key lookups first."""
    for m in cluster.masters():
        m.command("CONFIG", "RESETSTAT")
    s = cluster_settings(cluster)
    lines = payloads(s, 100)
    produce(s, lines, tmp_path)
    done = run_cli([*CONSUME, *common_flags(s)])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    calls = {"getkeys": 0, "evalsha": 0, "xreadgroup": 0}
    for m in cluster.masters():
        stats = m.info("commandstats")
        calls["getkeys"] += int(stats.get("cmdstat_command|getkeys", {}).get("calls", 0))
        calls["evalsha"] += int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
        calls["xreadgroup"] += int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))
    assert calls["evalsha"] > 0 and calls["xreadgroup"] > 0  # the stats saw the drain
    assert calls["getkeys"] == 0
    check_exactly_once(cluster, s, lines, {})


@pytest.mark.chaos
@pytest.mark.parametrize("how", ["cluster-failover", "sigkill-master", "move-slot"])
async def test_topology_change_mid_drain_loses_nothing(how: str, tmp_path: Path) -> None:
    """A running consumer (never restarted) drains while the master holding a busy region is
    failed over (CLUSTER FAILOVER on its replica), SIGKILLed, or loses that region's slot to
    another master. Every snapshot is stored exactly once; the promoted replica's missing
    scripts (NOSCRIPT) are loaded again."""
    with start_cluster(masters=3, replicas_per_master=1) as cluster:
        s = cluster_settings(cluster)
        lines = payloads(s, TOPOLOGY_SNAPSHOTS)
        produce(s, lines, tmp_path)
        region = s.regions[0]
        per_region = Counter(decode(p).region_id for p in lines)
        slot = key_slot(s.keys.shard(region).stream.encode())
        master = cluster.master_of_slot(slot)
        args = [*CONSUME, "--batch", "5", *common_flags(s)]
        consumer = Proc(args, tmp_path / "consumer.log")
        try:
            await wait_until(lambda: _persisted(cluster, s, region, 5), 60, "5 persisted")
            # The change begins mid-drain: the consumer is running and the region not done.
            assert consumer.proc.poll() is None, consumer.output()[-2000:]
            assert not await _persisted(cluster, s, region, per_region[region])
            changed = time.monotonic()
            if how == "cluster-failover":
                replica = cluster.replica_of(master)
                assert replica is not None
                await asyncio.to_thread(cluster.failover, replica)
            elif how == "sigkill-master":
                cluster.kill(master)
                await asyncio.to_thread(cluster.wait_promoted_after_kill, master)
            else:
                to = next(m for m in cluster.masters() if m is not master)
                await asyncio.to_thread(cluster.move_slot, slot, to)
            topology_s = time.monotonic() - changed
            code = await asyncio.to_thread(consumer.proc.wait, 120 + len(lines) / 100)
            drained_s = time.monotonic() - changed
        finally:
            consumer.kill()
        assert code == 0, consumer.output()[-3000:]
        if how != "move-slot":  # SCRIPT LOAD is not replicated: the promoted replica lacks them
            assert "loaded them again" in consumer.output(), consumer.output()[-3000:]
        check_exactly_once(cluster, s, lines, {})
        print(f"\n{how}: {len(lines)} snapshots, topology changed in {topology_s:.2f}s, "
              f"drained {drained_s:.2f}s after it began; each stored exactly once")


def cli_json(args: list[str]) -> Any:
    done = run_cli([*args, "--json"])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads(done.stdout)


def test_operators_see_every_shard_and_the_totals(cluster: Cluster, tmp_path: Path) -> None:
    """top, pending and replay on a cluster: a row per shard and the totals; --shards serves
    or shows a subset; replay works across every shard."""
    s = cluster_settings(cluster)
    flags, regions = common_flags(s), list(s.regions)
    lines = payloads(s, 80)
    produce(s, lines, tmp_path)
    poison = add_poison(cluster, s)
    per_region = Counter(decode(p).region_id for p in lines)
    for r, bad in poison.items():
        per_region[r] += len(bad)
    served = regions[:3]
    done = run_cli([*CONSUME, "--shards", ",".join(served), *flags])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    assert f"({', '.join(served)})".encode() in done.stderr

    report = cli_json(["pending", *flags])
    rows = {r["shard"]: r for r in report["shards"]}
    assert list(rows) == regions
    for r in regions:
        assert rows[r]["stream"] == s.keys.shard(r).stream
        assert rows[r]["stream_length"] == per_region[r]
        assert rows[r]["lag"] == (0 if r in served else per_region[r]), r
        assert rows[r]["pending"] == 0
    assert report["stream_length"] == len(lines) + sum(map(len, poison.values()))
    assert report["lag"] == sum(per_region[r] for r in regions if r not in served)
    assert report["dlq_length"] == sum(len(poison.get(r, [])) for r in served)
    assert {c["shard"] for c in report["consumers"]} == set(served)

    subset = cli_json(["pending", "--shards", regions[4], *flags])
    assert [r["shard"] for r in subset["shards"]] == [regions[4]]
    assert subset["lag"] == per_region[regions[4]]

    top = run_cli(["top", "--once", "--plain", *flags])
    assert top.returncode == 0, top.stderr.decode()[-2000:]
    assert top.stdout.decode().startswith(f"shards={len(regions)} stream={report['stream_length']} "
                                          f"lag={report['lag']} ")
    table = run_cli(["top", "--once", *flags]).stdout.decode()
    assert "shards" in table and all(r in table for r in regions) and "total" in table

    done = run_cli([*CONSUME, *flags])  # every shard now
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    dead = sum(map(len, poison.values()))
    one = next(iter(poison))  # a shard with dead letters: --shards and --region pick it alone
    for pick in (["--shards", one], ["--region", one]):
        picked = cli_json(["replay", "--dlq", "--dry-run", *pick, *flags])
        assert [e["shard"] for e in picked["entries"]] == [one] * len(poison[one]), pick
    dry = cli_json(["replay", "--dlq", "--dry-run", *flags])
    assert sorted(e["shard"] for e in dry["entries"]) == sorted(
        r for r, bad in poison.items() for _ in bad)
    moved = cli_json(["replay", "--dlq", *flags])
    assert len(moved["entries"]) == dead and all(e["new_id"] for e in moved["entries"])
    assert cli_json(["pending", *flags])["lag"] == dead  # back on their shards' streams
    done = run_cli([*CONSUME, *flags])  # ... and dead-lettered there again
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    ranged = cli_json(["replay", "--range", "-", "+", *flags])
    assert ranged["outcomes"] == {"redelivered": len(lines), "invalid": 2 * dead}
    check_exactly_once(cluster, s, lines, poison)


def test_shards_needs_the_region_layout(redis_url: str) -> None:
    """--shards on one stream (a single server's default layout): one line, exit 2."""
    tag = uuid.uuid4().hex[:10]
    s = Settings.load({"redis_url": redis_url, "stream": f"ss:{tag}", "group": f"g-{tag}",
                       "prefix": f"sp:{tag}"}, env={})
    for command in (["consume", "--drain"], ["pending"], ["top", "--once"]):
        line = one_line(run_cli([*command, "--shards", "mena", *common_flags(s)]), 2)
        assert "--shards" in line and "--shard-by region" in line, line
    line = one_line(run_cli(["pending", "--shards", "atlantis", *common_flags(s)]), 2)
    assert "--shards" in line and "atlantis" in line, line


async def _persisted(cluster: Cluster, s: Settings, region: str, n: int) -> bool:
    with owner(cluster, s.keys.index(region)) as c:
        return int(c.zcard(s.keys.index(region))) >= n


async def test_group_gauges_per_shard_on_a_cluster(cluster: Cluster, tmp_path: Path) -> None:
    """The metrics' group gauges read every shard on its own node: one series per shard,
    also from a consumer serving a --shards subset (a shard nobody serves must show)."""
    import dataclasses

    from prometheus_client import CollectorRegistry

    from shared.group_metrics import start_group_gauges

    s = cluster_settings(cluster)
    s = dataclasses.replace(s, shards=s.regions[:1])
    lines = payloads(s, 40)
    produce(s, lines, tmp_path)
    per_region = Counter(decode(p).region_id for p in lines)
    registry, stop = CollectorRegistry(), asyncio.Event()
    task = start_group_gauges(s, registry, stop)

    def gauge(name: str, shard: str) -> float | None:
        labels = {"stream": s.stream, "shard": shard}
        if name.startswith("group_"):
            labels["group"] = s.group
        return registry.get_sample_value(f"regionstream_{name}", labels)

    async def read() -> bool:
        return all(gauge("group_lag", r) == per_region[r] for r in s.regions)

    try:
        await wait_until(read, within=20, what="every shard's gauges")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    for r in s.regions:
        assert gauge("stream_length", r) == per_region[r]
        assert gauge("group_pending", r) == 0 and gauge("dlq_length", r) == 0
    assert gauge("group_lag", "all") is None  # no series for a layout not in use


def test_demo_runs_on_a_cluster(cluster: Cluster) -> None:
    """The demo against a cluster URL: producer, consumer group and view all sharded."""
    s = cluster_settings(cluster)
    done = run_cli(["demo", "--duration", "4", "--interval", "1", "--plain", *common_flags(s)])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    final = done.stdout.decode().strip().splitlines()[-1]
    assert final.startswith(f"final: shards={len(s.regions)} "), final
    assert f"regions_with_latest={len(s.regions)}/{len(s.regions)}" in final, final


@pytest.mark.chaos
async def test_a_slot_held_migrating_spends_no_deliveries(tmp_path: Path) -> None:
    """A region's slot stays half-moved (MIGRATING/IMPORTING) for many retry rounds while a
    consumer drains: every persist of that region is refused for now (ASK, TRYAGAIN), and
    the entries stay pending without spending their deliveries (--max-deliveries 2 would
    dead-letter them after 2). Once the move completes they are stored, none dead-lettered."""
    with start_cluster(masters=2, replicas_per_master=0) as cluster:
        s = cluster_settings(cluster)
        lines = payloads(s, 200)
        produce(s, lines, tmp_path)
        region = s.regions[0]
        slot = key_slot(s.keys.shard(region).stream.encode())
        source = cluster.master_of_slot(slot)
        to = next(m for m in cluster.masters() if m is not source)
        # The shard's DLQ exists on the source (an earlier dead letter): a dead-letter call
        # would be served there while the persists, writing new keys, are refused.
        earlier = {wire.F_PAYLOAD: b"an earlier dead letter"}
        with owner(cluster, s.keys.shard(region).dlq) as c:
            c.xadd(s.keys.shard(region).dlq, earlier)
        to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id())
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", to.node_id())
        args = [*CONSUME, "--max-deliveries", "2", *common_flags(s)]
        consumer = Proc(args, tmp_path / "consumer.log")
        stream = s.keys.shard(region).stream
        try:
            async def delivered_often() -> bool:  # 3x the delivery budget, still pending
                with owner(cluster, stream) as c:
                    rows = c.xpending_range(stream, s.group, "-", "+", 1)
                return bool(rows) and rows[0]["times_delivered"] >= 6
            await wait_until(delivered_often, 60, "entries delivered 6 times while migrating")
            await asyncio.to_thread(cluster.move_slot, slot, to)
            code = await asyncio.to_thread(consumer.proc.wait, 120)
        finally:
            consumer.kill()
        assert code == 0, consumer.output()[-3000:]
        assert "dead-lettered" not in consumer.output()
        check_exactly_once(cluster, s, lines, {region: [earlier[wire.F_PAYLOAD]]})
