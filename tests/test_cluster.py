"""regionstream on a real local Redis Cluster (3 masters + 3 replicas of Debian's redis-server,
shared/cluster_servers.py): the cluster is found out from the server, each region gets its
own stream shard in the slot of its data, and every script call and MULTI/EXEC is judged by the
server itself (a key in another slot is CROSSSLOT: a regression cannot pass). A failover and a
moved slot in the middle of a drain lose nothing and apply nothing twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.crc import key_slot

from shared import wire
from shared.cluster_servers import Cluster, start_cluster
from shared.schema import decode
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import check_exactly_once, load_payloads, owner
from tests.proc import Proc, common_flags, run_cli

N = 400
POISON = [b"{not json", b'{"x":' + b"[" * 3000 + b"]" * 3000 + b"}"]
CONSUME = ["consume", "--drain", "--workers", "1", "--batch", "20", "--block-ms", "100",
           "--min-idle-ms", "500", "--claim-interval-ms", "200", "--retry-backoff-ms", "50"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with start_cluster(masters=3, replicas_per_master=1) as c:
        yield c


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
        lines = payloads(s, 1600)
        produce(s, lines, tmp_path)
        region = s.regions[0]
        slot = key_slot(s.keys.shard(region).stream.encode())
        master = cluster.master_of_slot(slot)
        args = [*CONSUME, "--batch", "5", *common_flags(s)]
        consumer = Proc(args, tmp_path / "consumer.log")
        try:
            await wait_until(lambda: _persisted(cluster, s, region, 5), 60, "5 persisted")
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
            code = await asyncio.to_thread(consumer.proc.wait, 120)
        finally:
            consumer.kill()
        assert code == 0, consumer.output()[-3000:]
        check_exactly_once(cluster, s, lines, {})


async def _persisted(cluster: Cluster, s: Settings, region: str, n: int) -> bool:
    with owner(cluster, s.keys.index(region)) as c:
        return int(c.zcard(s.keys.index(region))) >= n
