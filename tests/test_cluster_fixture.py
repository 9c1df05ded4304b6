"""The local Redis Cluster helper (harness/cluster.py) against real redis-server nodes:
routing, slot moves with a consumer group's pending entries, failover, SIGKILL + promotion,
restart, and the small shapes (1 and 2 masters) that redis-cli cannot create."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import MovedError

from harness.cluster import SLOTS, Cluster, start_cluster
from shared.servers import redis_server_binary


def _require_redis_server() -> None:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed", pytrace=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """3 masters + 3 replicas shared by the tests that leave the topology healthy."""
    _require_redis_server()
    with start_cluster(masters=3, replicas_per_master=1) as c:
        yield c


def _client(cluster: Cluster) -> RedisCluster:
    return RedisCluster.from_url(cluster.url, decode_responses=True)


def test_a_key_lands_on_the_master_of_its_slot(cluster: Cluster) -> None:
    key = f"test:cluster:{uuid.uuid4().hex}"
    with _client(cluster) as rc:
        rc.set(key, "v")
    owner = cluster.master_of_slot(key_slot(key.encode()))
    assert owner.role() == "master"
    assert owner.command("GET", key) == "v"
    other = next(m for m in cluster.masters() if m is not owner)
    with pytest.raises(MovedError, match=f"^{key_slot(key.encode())} 127.0.0.1:{owner.port}$"):
        other.command("GET", key)
    assert len(cluster.masters()) == 3
    assert len(cluster.replicas()) == 3
    assert all(cluster.replica_of(m) is not None for m in cluster.masters())


def test_move_slot_keeps_a_streams_pending_entries(cluster: Cluster) -> None:
    tag = uuid.uuid4().hex
    stream, group = f"test:cluster:{tag}:s", f"g-{tag}"
    slot = key_slot(stream.encode())
    with _client(cluster) as rc:
        first = rc.xadd(stream, {"n": "1"})
        second = rc.xadd(stream, {"n": "2"})
        rc.xgroup_create(stream, group, id="0")
        assert rc.xreadgroup(group, "c1", {stream: ">"}, count=1) == [
            [stream, [(first, {"n": "1"})]]]
        source = cluster.master_of_slot(slot)
        target = next(m for m in cluster.masters() if m is not source)

        cluster.move_slot(slot, target)

        assert cluster.master_of_slot(slot) is target
        assert source.command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert target.command("XPENDING", stream, group) == {
            "pending": 1, "min": first, "max": first,
            "consumers": [{"name": "c1", "pending": 1}]}
        # The same client follows MOVED: the group resumes after the pending entry.
        assert rc.xreadgroup(group, "c1", {stream: ">"}) == [[stream, [(second, {"n": "2"})]]]
        assert rc.xack(stream, group, first, second) == 2


@pytest.mark.slow  # kills a master and waits for the promotion
def test_failover_kill_promotion_and_restart() -> None:
    _require_redis_server()
    key = f"test:cluster:{uuid.uuid4().hex}"
    slot = key_slot(key.encode())
    with start_cluster(masters=3, replicas_per_master=1) as cluster:
        with _client(cluster) as rc:
            rc.set(key, "v")
        old_master = cluster.master_of_slot(slot)
        replica = cluster.replica_of(old_master)
        assert replica is not None

        cluster.failover(replica)  # manual failover: the replica catches up first, no loss

        assert replica.role() == "master"
        assert old_master.role() == "slave"
        assert cluster.master_of_slot(slot) is replica
        assert cluster.replica_of(replica) is old_master
        with _client(cluster) as rc:
            assert rc.get(key) == "v"

        cluster.kill(replica)  # now the master of the slot
        promoted = cluster.wait_promoted_after_kill(replica)

        assert promoted is old_master
        assert cluster.master_of_slot(slot) is old_master
        with _client(cluster) as rc:
            assert rc.get(key) == "v"

        cluster.restart(replica)  # back with its nodes.conf: a replica of the new owner
        assert replica.role() == "slave"
        assert cluster.replica_of(old_master) is replica


@pytest.mark.parametrize(("masters", "replicas"), [(1, 0), (2, 1)])
def test_small_clusters(masters: int, replicas: int) -> None:
    _require_redis_server()
    tag = uuid.uuid4().hex
    with start_cluster(masters=masters, replicas_per_master=replicas) as cluster:
        owners = cluster.masters()
        assert len(owners) == masters
        assert len(cluster.replicas()) == masters * replicas
        slots = sorted(r for m in owners for line in m.cluster_nodes()
                       if "myself" in line.flags for r in line.slots)
        assert slots[0][0] == 0
        assert slots[-1][1] == SLOTS - 1
        assert sum(hi - lo + 1 for lo, hi in slots) == SLOTS
        keys = [f"test:cluster:{tag}:{i}" for i in range(20)]
        with _client(cluster) as rc:
            for k in keys:
                rc.set(k, k)
            assert [rc.get(k) for k in keys] == keys
        hit = {cluster.master_of_slot(key_slot(k.encode())).port for k in keys}
        assert hit == {m.port for m in owners}  # 20 keys: every master owns some
