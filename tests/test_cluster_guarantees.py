"""Guarantees that the README states for a Redis Cluster, each proven on real cluster nodes
(Debian's redis-server, harness/cluster.py):

* the least-privilege ACL users (shared/acl.py) run the whole pipeline through the real command
  when every node of a cluster carries them, and no node refuses them anything;
* the producer's retry after a partial publish sends only the shards that failed, so no shard
  that landed gets its snapshots twice;
* a consumer's data and its XACK are one MULTI/EXEC on one node, so a replica promoted with
  stale data holds, for every entry, both or neither: an entry acknowledged there always has its
  snapshot stored, and the next drain stores every snapshot exactly once.

The tests that move slots use this module's own cluster; the failover test starts a fresh
cluster for each of its attempts (it kills a master).
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
from prometheus_client import CollectorRegistry
from redis.crc import key_slot

from harness.cluster import Cluster, ClusterNode, start_cluster
from producer.publisher import PartlyPublished, Publisher
from shared import wire
from shared.acl import CONSUMER, OPERATOR, PRODUCER, acl_rules
from shared.metrics import ProducerMetrics
from shared.schema import Snapshot, decode
from shared.settings import Settings
from shared.shards import open_deployment
from tests.conftest import wait_until
from tests.helpers import load_payloads
from tests.proc import Proc, common_flags, run_cli
from tests.test_acl import flags_as, ok
from tests.test_cluster import CONSUME, add_poison, check_exactly_once, cluster_settings, produce

User = tuple[str, str]  # name, password


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """This module's own cluster (3 masters, a replica each): its slots are moved and one of
    its masters is SIGKILLed."""
    with start_cluster(masters=3, replicas_per_master=1) as c:
        yield c


def shard_slot(s: Settings, region: str) -> int:
    return key_slot(s.keys.shard(region).stream.encode())


def client_of(node: ClusterNode) -> sync_redis.Redis:
    return sync_redis.Redis(port=node.port, socket_timeout=5)


# -- the ACL users on every node of a cluster -------------------------------------------------

def _acl_denials(node: ClusterNode, names: set[str]) -> list[Any]:
    with sync_redis.Redis(port=node.port, socket_timeout=5, decode_responses=True) as c:
        log: Any = c.acl_log(count=1000)
    return [e for e in log if e["username"] in names]


def test_acl_users_run_the_pipeline_on_every_node_of_a_cluster(
        shared_cluster: Cluster, tmp_path: Path) -> None:
    """The three users (rules from acl_rules, a password added) are set on every master and
    replica; produce, consume --drain, replay --dlq, replay --range, top and pending run as
    them through the CLI against the cluster; every snapshot is stored exactly once and no
    node's ACL LOG holds a refusal of these users."""
    cluster = shared_cluster
    s = cluster_settings(cluster)
    tag = uuid.uuid4().hex[:10]
    rules = acl_rules(s.keys)
    users: dict[str, User] = {role: (f"{role}-{tag}", uuid.uuid4().hex) for role in rules}
    names = {name for name, _ in users.values()}
    nodes = cluster.live()
    assert len(nodes) == 6
    producer, consumer, operator = users[PRODUCER], users[CONSUMER], users[OPERATOR]
    try:
        for node in nodes:
            for role, rule in rules.items():
                node.command("ACL", "SETUSER", users[role][0], *rule.split(),
                             f">{users[role][1]}")
        lines = load_payloads(s, 200, seed=43)
        source = tmp_path / "snapshots.jsonl"
        source.write_bytes(b"\n".join(lines) + b"\n")
        out = run_cli(["produce", "--source", str(source), "--chunk", "50",
                       *flags_as(s, producer)])
        ok(out, producer)
        assert b"published 200 snapshot(s)" in out.stderr
        poison = add_poison(cluster, s)  # three entries, as an admin: three dead letters
        drained = run_cli([*CONSUME, *flags_as(s, consumer)])
        ok(drained, consumer)
        assert b"Redis Cluster" in drained.stderr

        moved = json.loads(ok(run_cli(["replay", "--dlq", "--json", *flags_as(s, consumer)]),
                              consumer))
        assert len(moved["entries"]) == 3 and all(m["new_id"] for m in moved["entries"])
        ok(run_cli([*CONSUME, *flags_as(s, consumer)]), consumer)  # dead-lettered again
        ranged = json.loads(ok(run_cli(["replay", "--range", "-", "+", "--json",
                                        *flags_as(s, consumer)]), consumer))
        # 200 stored already; the 3 poison entries and their 3 replayed copies are invalid
        assert ranged["outcomes"] == {"redelivered": 200, "invalid": 6}

        top = ok(run_cli(["top", "--once", "--plain", *flags_as(s, operator)]), operator)
        assert "shards=8 stream=206 lag=0 pending=0" in top, top
        assert "dlq=3" in top and "stored=200" in top, top
        report = json.loads(ok(run_cli(["pending", "--json", *flags_as(s, operator)]),
                               operator))
        assert (report["stream_length"], report["lag"], report["pending"],
                report["dlq_length"], report["group_exists"]) == (206, 0, 0, 3, True)
        assert len(report["shards"]) == 8

        check_exactly_once(cluster, s, lines, poison)
        refused = {node.port: _acl_denials(node, names) for node in nodes}
        assert refused == {node.port: [] for node in nodes}
    finally:
        for node in nodes:
            node.command("ACL", "DELUSER", *names)
    assert all(not node.command("ACL", "GETUSER", producer[0]) for node in nodes)


# -- a partial publish is retried alone --------------------------------------------------------

Attempt = tuple[tuple[str, ...], str]  # regions the attempt sent, its outcome

# These found three bugs, fixed with them: the ids of what landed were dropped after a partial
# publish (KeyError), a node's shards that landed beside a refused one were published again,
# and NOREPLICAS was not retried.


def _xadd_calls(masters: list[ClusterNode]) -> dict[int, int]:
    out = {}
    for m in masters:
        stat = m.info("commandstats").get("cmdstat_xadd", {})
        out[m.port] = int(stat.get("calls", 0))
    return out


async def _publish_with_a_failing_shard(
        cluster: Cluster, break_it: Callable[[Settings, dict[int, list[str]]], list[str]],
        mend: Callable[[], None] = lambda: None
) -> tuple[Settings, list[Snapshot], list[bytes], list[Attempt], list[str], dict[int, int]]:
    """Open a deployment (its slot map read now), let ``break_it`` make some shards fail
    (it gets the regions per master port and returns the failing regions), then
    publish_until_done 5 snapshots per region. ``mend`` runs after the first failed
    attempt. Returns the settings, the snapshots, the entry ids publish_until_done returned,
    each attempt, the failing regions and the XADD calls each master executed."""
    s = cluster_settings(cluster)
    deployment = await open_deployment(s.redis_url, s.keys, s.regions, s.shard_by)
    try:
        registry = CollectorRegistry()
        pub = Publisher(deployment, s, ProducerMetrics(registry))
        await pub.prepare()
        snaps = [decode(p) for p in load_payloads(s, 40, seed=47)]
        by_node: dict[int, list[str]] = {}
        for r in s.regions:
            by_node.setdefault(cluster.master_of_slot(shard_slot(s, r)).port, []).append(r)
        failing = await asyncio.to_thread(break_it, s, by_node)
        masters = cluster.masters()
        before = _xadd_calls(masters)
        attempts: list[Attempt] = []
        publish = pub.publish

        async def spied(batch: Any, payloads: Any = None) -> list[bytes]:
            sent = tuple(sorted({snap.region_id for snap in batch}))
            try:
                ids = await publish(batch, payloads)
            except BaseException as exc:
                attempts.append((sent, type(exc).__name__))
                if len(attempts) == 1:
                    await asyncio.to_thread(mend)
                raise
            attempts.append((sent, "ok"))
            return ids

        pub.publish = spied  # type: ignore[method-assign,assignment]
        try:
            ids = await asyncio.wait_for(
                pub.publish_until_done(snaps, None, asyncio.Event()), 30)
        finally:
            await asyncio.to_thread(mend)
        after = _xadd_calls(masters)
        # every snapshot counted as published once, those that landed in a failed attempt too
        counted = {r: registry.get_sample_value("regionstream_published_total", {"region": r})
                   for r in s.regions}
        assert counted == dict(Counter(snap.region_id for snap in snaps))
        return s, snaps, ids, attempts, failing, {p: after[p] - before[p] for p in after}
    finally:
        await deployment.aclose()


def _assert_each_shard_once(cluster: Cluster, s: Settings, snaps: list[Snapshot],
                            ids: list[bytes], calls: dict[int, int]) -> None:
    """Every shard's stream holds each of its region's snapshots exactly once, under the
    entry id publish_until_done returned for it, and each master executed exactly as many
    XADDs as the snapshots of the shards it holds now."""
    expected_calls: Counter[int] = Counter()
    streams: dict[str, Counter[bytes]] = {}
    entry_of: dict[tuple[str, bytes], bytes] = {}
    for r in s.regions:
        node = cluster.master_of_slot(shard_slot(s, r))
        with client_of(node) as c:
            entries = c.xrange(s.keys.shard(r).stream)
        streams[r] = Counter(f[wire.F_SNAPSHOT_ID] for _, f in entries)
        entry_of.update(((r, i), f[wire.F_SNAPSHOT_ID]) for i, f in entries)
        expected_calls[node.port] += sum(1 for snap in snaps if snap.region_id == r)
    want = {r: Counter(snap.meta.snapshot_id.encode() for snap in snaps if snap.region_id == r)
            for r in s.regions}
    assert streams == want
    assert len(ids) == len(snaps)
    assert [entry_of.get((snap.region_id, i)) for snap, i in zip(snaps, ids, strict=True)] == [
        snap.meta.snapshot_id.encode() for snap in snaps]
    assert calls == {port: expected_calls[port] for port in calls}


async def test_partial_publish_retries_only_the_node_that_failed(
        cluster: Cluster) -> None:
    """The slots of every shard of one master move to another master after the producer read
    the slot map: the first attempt lands on the two other masters and gets MOVED from the
    old one (PartlyPublished); the retries send only the moved shards, to their new owner."""
    def move_all_of_one_node(s: Settings, by_node: dict[int, list[str]]) -> list[str]:
        port, regions = min(by_node.items(), key=lambda kv: len(kv[1]))
        to = next(m for m in cluster.masters() if m.port != port)
        for r in regions:
            cluster.move_slot(shard_slot(s, r), to)
        return regions

    s, snaps, ids, attempts, failing, calls = await _publish_with_a_failing_shard(
        cluster, move_all_of_one_node)
    assert attempts[0] == (tuple(sorted(s.regions)), PartlyPublished.__name__)
    assert attempts[-1] == (tuple(sorted(failing)), "ok")
    # one retry, after one slot map read that followed the MOVED: only the moved shards
    assert attempts[1:] == [(tuple(sorted(failing)), "ok")], attempts
    _assert_each_shard_once(cluster, s, snaps, ids, calls)


async def test_partial_publish_retries_only_the_shard_that_failed(cluster: Cluster) -> None:
    """One shard's slot moves away from a master that holds other shards too: in the first
    attempt that master takes its other shards' transactions and answers MOVED for the moved
    one. Only the moved shard may be sent again."""
    def move_one_slot(s: Settings, by_node: dict[int, list[str]]) -> list[str]:
        port, regions = max(by_node.items(), key=lambda kv: len(kv[1]))
        assert len(regions) >= 2
        to = next(m for m in cluster.masters() if m.port != port)
        cluster.move_slot(shard_slot(s, regions[0]), to)
        return regions[:1]

    s, snaps, ids, attempts, failing, calls = await _publish_with_a_failing_shard(
        cluster, move_one_slot)
    assert attempts[0] == (tuple(sorted(s.regions)), PartlyPublished.__name__)
    assert attempts[-1][1] == "ok"
    assert attempts[1:] == [(tuple(failing), "ok")], attempts
    _assert_each_shard_once(cluster, s, snaps, ids, calls)


async def test_partial_publish_retries_a_master_refusing_writes(cluster: Cluster) -> None:
    """One master refuses writes (min-replicas-to-write above its replica count: NOREPLICAS)
    for the first attempt only; the retry sends only its shards."""
    refusing: list[ClusterNode] = []

    def refuse_writes(s: Settings, by_node: dict[int, list[str]]) -> list[str]:
        port, regions = min(by_node.items(), key=lambda kv: len(kv[1]))
        (node,) = [m for m in cluster.masters() if m.port == port]
        node.command("CONFIG", "SET", "min-replicas-to-write", "5")
        refusing.append(node)
        return regions

    def mend() -> None:
        for node in refusing:
            node.command("CONFIG", "SET", "min-replicas-to-write", "0")

    s, snaps, ids, attempts, failing, calls = await _publish_with_a_failing_shard(
        cluster, refuse_writes, mend)
    assert attempts[0] == (tuple(sorted(s.regions)), PartlyPublished.__name__)
    assert attempts[1:] == [(tuple(sorted(failing)), "ok")]
    _assert_each_shard_once(cluster, s, snaps, ids, calls)


# -- data and ack lost together in a cluster failover ------------------------------------------

FAILOVER_SNAPSHOTS = 2400
# The promoted replica must really have missed persists: wait until the master holds at least
# this many bytes of replication stream it could not hand to the stopped replica's socket (the
# kernel's socket buffers, ~4 MB here on loopback and delivered even after the SIGKILL, come on
# top). A persisted snapshot is ~9.4 KB of replication stream: this is ~27 lost persists.
UNSENT_BYTES = 256 << 10
CONSUME_RUNNING = [a for a in CONSUME if a != "--drain"]
PROMOTION_BY_ELECTION_S = 8.0
FAILOVER_ATTEMPTS = 3


def repl_offset(node: ClusterNode) -> int:
    info = node.info("replication")
    return int(info["slave_repl_offset" if info["role"] == "slave" else "master_repl_offset"])


def unsent_to_replicas(master: ClusterNode) -> int:
    """Replication bytes the master still holds for its replicas (``omem`` of their links)."""
    text = str(master.command("CLIENT", "LIST", "TYPE", "replica"))
    fields = (dict(f.split("=", 1) for f in line.split() if "=" in f)
              for line in text.splitlines())
    return max((int(f["omem"]) for f in fields), default=0)


def shard_state(node: ClusterNode, s: Settings, region: str) -> dict[str, Any]:
    """What ``node`` holds of one region's shard: entry id -> snapshot id, the acknowledged
    entries (delivered, at or before last-delivered-id, and not pending), the indexed snapshot
    ids, and the snapshot ids whose by-id key exists."""
    k = s.keys.shard(region)
    with client_of(node) as c:
        entries = {i: f[wire.F_SNAPSHOT_ID].decode() for i, f in c.xrange(k.stream)}
        (group,) = [g for g in c.xinfo_groups(k.stream) if g["name"] == s.group.encode()]
        pel = {row["message_id"] for row in c.xpending_range(k.stream, s.group, "-", "+",
                                                              len(entries) + 1)}
        indexed = {m.decode() for m in c.zrange(s.keys.index(region), 0, -1)}
        sids = sorted(set(entries.values()))
        pipe = c.pipeline(transaction=False)
        for sid in sids:
            pipe.exists(s.keys.by_id(region, sid))
        by_id = {sid for sid, n in zip(sids, pipe.execute(), strict=True) if n}
    last = _id(group["last-delivered-id"])
    acked = {i for i in entries if _id(i) <= last and i not in pel}
    return {"entries": entries, "acked": acked, "indexed": indexed, "by_id": by_id,
            "pending": pel}


def frozen_state(master: ClusterNode, s: Settings, regions: list[str]
                 ) -> dict[str, dict[str, Any]]:
    """shard_state of each region, read while the master's replication offset stood still (a
    command the frozen consumer had sent, or the master's PING to its replicas, may land
    during a read: then it is read again)."""
    for _ in range(10):
        offset = repl_offset(master)
        state = {r: shard_state(master, s, r) for r in regions}
        if repl_offset(master) == offset:
            return state
    raise AssertionError("the master's replication offset kept moving with the consumer "
                         "stopped")


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.decode().partition("-")
    return int(ms), int(seq)


async def _promote(cluster: Cluster, replica: ClusterNode) -> str:
    """Until ``replica`` is master: elected by the other masters, or (if that has not
    happened within PROMOTION_BY_ELECTION_S) by CLUSTER FAILOVER TAKEOVER."""
    async def promoted() -> bool:
        try:
            return replica.role() == "master"
        except sync_redis.RedisError:
            return False
    try:
        await wait_until(promoted, PROMOTION_BY_ELECTION_S, "the replica elected")
        how = "elected"
    except AssertionError:
        replica.command("CLUSTER", "FAILOVER", "TAKEOVER")
        await wait_until(promoted, 10, "the replica promoted by TAKEOVER")
        how = "takeover"
    await asyncio.to_thread(cluster.wait_ok)
    return how


@pytest.mark.chaos
async def test_failover_to_a_stale_replica_loses_data_and_ack_together(tmp_path: Path) -> None:
    """The replica of the busiest master is SIGSTOPped while a consumer persists (after it
    has taken part of the persists), the master is SIGKILLed once it holds a backlog
    the replica never got, and the replica, resumed, is promoted. On it, every entry of that
    master's shards is acknowledged exactly when its snapshot is stored (indexed and by-id):
    the persists it missed are missing whole, data and ack. A new `consume --drain` then stores
    every snapshot exactly once.

    Whether the replica really misses persists depends on socket buffers outside our control
    (once in three CI runs it had them all): a run that lost nothing proves nothing, so the
    scenario is run again on a fresh cluster, up to FAILOVER_ATTEMPTS times."""
    for attempt in range(1, FAILOVER_ATTEMPTS + 1):
        with start_cluster(masters=3, replicas_per_master=1) as cluster:
            lost = await _stale_failover(cluster, tmp_path / f"attempt-{attempt}")
        if lost:
            return
    pytest.fail(f"the promoted replica had all the data in {FAILOVER_ATTEMPTS} attempts: "
                "the scenario never lost anything to check")


async def _stale_failover(cluster: Cluster, tmp_path: Path) -> int:
    """One run of the scenario; returns the persisted snapshots the promoted replica lost
    (after checking they were lost together with their acks, and drained again once)."""
    await asyncio.to_thread(tmp_path.mkdir)
    s = cluster_settings(cluster)
    lines = load_payloads(s, FAILOVER_SNAPSHOTS, seed=53)
    await asyncio.to_thread(produce, s, lines, tmp_path)
    by_master: dict[ClusterNode, list[str]] = {}
    for r in s.regions:
        by_master.setdefault(cluster.master_of_slot(shard_slot(s, r)), []).append(r)
    # the busiest master (3 of the 8 regions): the most persists the replica can miss
    master, regions = max(by_master.items(), key=lambda kv: len(kv[1]))
    replica = cluster.replica_of(master)
    assert replica is not None
    on_master = sum(1 for p in lines if decode(p).region_id in regions)

    async def caught_up(offset: int) -> bool:
        return repl_offset(replica) >= offset

    async def stored_on_master(n: int) -> bool:
        with client_of(master) as c:
            return sum(int(c.zcard(s.keys.index(r))) for r in regions) >= n

    async def backlog() -> bool:
        if consumer.proc.poll() is not None or await stored_on_master(on_master):
            return True  # it died, or has nothing left to do: no use waiting (asserted below)
        return unsent_to_replicas(master) >= UNSENT_BYTES

    produced = repl_offset(master)
    await wait_until(lambda: caught_up(produced), 30, "the replica has every entry")
    consumer = Proc([*CONSUME_RUNNING, *common_flags(s), "--name", f"doomed-{s.group}"],
                    tmp_path / "consumer.log")
    stopped_replica = False
    try:
        await wait_until(lambda: stored_on_master(40), 60, "40 persisted on the master")
        target = repl_offset(master)
        await wait_until(lambda: caught_up(target), 30, "the replica has those persists")
        replica.proc.send_signal(signal.SIGSTOP)
        stopped_replica = True
        await wait_until(backlog, 60, f"{UNSENT_BYTES} bytes the replica did not get")
        assert consumer.proc.poll() is None, consumer.output()[-3000:]
        assert unsent_to_replicas(master) >= UNSENT_BYTES, (
            "the consumer finished before the replica missed enough: raise FAILOVER_SNAPSHOTS")
        consumer.proc.send_signal(signal.SIGSTOP)  # freeze what the master holds
        before = frozen_state(master, s, regions)
        master.proc.send_signal(signal.SIGKILL)
        master.proc.wait(10)
        replica.proc.send_signal(signal.SIGCONT)
        stopped_replica = False
        how = await _promote(cluster, replica)
        after = {r: shard_state(replica, s, r) for r in regions}
    finally:
        if stopped_replica:
            replica.proc.send_signal(signal.SIGCONT)
        consumer.kill()

    lost_acks = lost_data = kept = 0
    for r in regions:
        old, new = before[r], after[r]
        assert new["entries"] == old["entries"]  # every entry was on the replica before
        for entry_id, sid in new["entries"].items():
            stored = sid in new["indexed"] and sid in new["by_id"]
            assert (entry_id in new["acked"]) == stored, (r, entry_id, sid)
            assert (sid in new["indexed"]) == (sid in new["by_id"]), (r, sid)
        lost_acks += len(old["acked"] - new["acked"])
        lost_data += len(old["indexed"] - new["indexed"])
        kept += len(new["indexed"])
        assert new["acked"] <= old["acked"] and new["indexed"] <= old["indexed"]
    print(f"\nfailover ({how}): the promoted replica had lost {lost_data} persisted snapshots "
          f"and {lost_acks} acknowledgements of {sum(len(b['acked']) for b in before.values())}"
          f" acknowledged on the old master; it kept {kept} ({len(regions)} shards)")
    assert lost_acks == lost_data  # whatever was lost, lost together
    assert kept > 0

    live = replace(s, redis_url=cluster.url)  # the settings' seed node was the killed master
    done = await asyncio.to_thread(run_cli, [*CONSUME, *common_flags(live)])
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    check_exactly_once(cluster, s, lines, {})
    return lost_data
