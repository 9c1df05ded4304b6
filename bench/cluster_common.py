"""What the Redis Cluster scenarios share: a local cluster (``harness.cluster``) that is
always stopped, optionally announcing a delay proxy per master; direct (never proxied)
clients of every master to watch it; which master holds which region shard; the consumer
process (``bench.cluster_runner``); tidying up a prefix without crossing slots.

Everything listens on and connects to 127.0.0.1 (the cluster nodes bind it, the proxies refuse
anything else, and CLUSTER SLOTS announces it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from bench import observe
from bench.config import Context
from bench.procs import Spec
from bench.proxy import DelayProxy
from harness import wait
from harness.cluster import HOST, Cluster, ClusterNode, start_cluster
from shared.connection import connect
from shared.keys import Keys
from shared.shards import Deployment, Shard

LAYOUT = "region"  # --shard-by: one stream shard per region, in that region's slot
ANNOUNCE_TIMEOUT_S = 20.0
POLL_S = 0.02
SCAN_COUNT = 1000
# The consumer holds a connection per blocked reader: 8 shards x 4 workers on one server.
PROXY_MAX_CONNECTIONS = 256
US_PER_S = 1e6


class ClusterSpec(Spec):
    """A ``Spec`` for ``bench.cluster_runner`` (same protocol and flags as ``bench.runner``,
    plus ``--shard-by``)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("bench.runner")] = "bench.cluster_runner"
        return argv


def consumer_spec(url: str, keys: Keys, name: str, **options: Any) -> ClusterSpec:
    return ClusterSpec("consumer", url, keys, name=name,
                       options={**options, "shard_by": LAYOUT})


def bench_keys(ctx: Context, scenario: str, tag: str) -> Keys:
    """Store prefix and stream apart (``<base>:store`` / ``<base>:stream``): the region shards
    ``<stream>:{<region>}`` must not fall under the store prefix that is deleted."""
    base = f"bench:{ctx.run_id}:{scenario}:{tag}"
    return Keys(prefix=f"{base}:store", stream=f"{base}:stream", group=f"bench-{tag}")


@dataclass
class Node:
    """One Redis server (a cluster master, or the single server) as the benchmark sees it."""

    port: int  # where it really listens
    announced: int  # the port clients are sent to (its delay proxy's, or its own)
    direct: aioredis.Redis  # straight to the server, for observing

    @property
    def label(self) -> str:
        via = f" via proxy :{self.announced}" if self.announced != self.port else ""
        return f"{HOST}:{self.port}{via}"


class Nodes:
    def __init__(self, nodes: list[Node]) -> None:
        self.all = nodes
        self._by_announced = {n.announced: n for n in nodes}

    def owner(self, deployment: Deployment, shard: Shard) -> Node:
        """The node holding ``shard`` (by the address the deployment was told)."""
        address = deployment.node_of(shard)
        if address is None:
            (only,) = self.all
            return only
        return self._by_announced[address[1]]

    def placement(self, deployment: Deployment) -> list[list[str]]:
        """Per node (in ``all`` order), the regions whose shard it holds."""
        held: dict[int, list[str]] = {n.port: [] for n in self.all}
        for shard in deployment.shards:
            held[self.owner(deployment, shard).port].append(shard.label)
        return [held[n.port] for n in self.all]

    async def cpu_s(self) -> list[tuple[float, float]]:
        """Each node's ``(used_cpu_user, used_cpu_sys)`` (INFO cpu), in ``all`` order."""
        out = []
        for n in self.all:
            info = await n.direct.info("cpu")
            out.append((float(info["used_cpu_user"]), float(info["used_cpu_sys"])))
        return out

    async def aclose(self) -> None:
        for n in self.all:
            await n.direct.aclose()


@contextlib.asynccontextmanager
async def running_cluster(masters: int) -> AsyncIterator[Cluster]:
    """A cluster of ``masters`` masters, no replicas; stopped whatever happens."""
    cluster = await asyncio.to_thread(start_cluster, masters, 0)
    try:
        yield cluster
    finally:
        await asyncio.to_thread(cluster.stop)


async def cluster_masters(cluster: Cluster) -> list[ClusterNode]:
    """The masters in slot order (the first holds slot 0)."""

    def ordered() -> list[ClusterNode]:
        return sorted(cluster.masters(), key=lambda m: min(lo for lo, _ in _own_slots(m)))

    return await asyncio.to_thread(ordered)


def _own_slots(node: ClusterNode) -> list[tuple[int, int]]:
    for line in node.cluster_nodes():
        if "myself" in line.flags:
            return list(line.slots) or [(1 << 16, 1 << 16)]
    return [(1 << 16, 1 << 16)]


def announce(cluster: Cluster, masters: list[ClusterNode], ports: list[int],
             timeout: float = ANNOUNCE_TIMEOUT_S) -> None:
    """Make each master announce ``ports[i]`` to clients (CONFIG SET cluster-announce-port),
    its cluster bus staying on its real bus port; return once every master's CLUSTER SLOTS
    names only the announced ports and the cluster is ok (blocking: call in a thread)."""
    for master, port in zip(masters, ports, strict=True):
        master.command("CONFIG", "SET", "cluster-announce-port", port)
        master.command("CONFIG", "SET", "cluster-announce-bus-port", master.bus_port)
    wanted = set(ports)
    deadline = time.monotonic() + timeout

    def other_ports() -> str | None:
        seen = [{int(row[2][1]) for row in m.command("CLUSTER", "SLOTS")} for m in masters]
        return None if all(s == wanted for s in seen) else f"CLUSTER SLOTS names {seen}"

    wait.until(other_ports, timeout, f"CLUSTER SLOTS to name only {sorted(wanted)}")
    cluster.wait_ok(wait.remaining(deadline))


@contextlib.asynccontextmanager
async def proxied_cluster(masters: int, delay_s: float
                          ) -> AsyncIterator[tuple[Nodes, list[DelayProxy]]]:
    """A cluster whose masters each announce their own DelayProxy: a client that follows
    CLUSTER SLOTS (the project's NodeRouter) pays the delay on every node."""
    async with running_cluster(masters) as cluster, contextlib.AsyncExitStack() as stack:
        ordered = await cluster_masters(cluster)
        proxies = [await stack.enter_async_context(
            DelayProxy(m.port, delay_s, max_connections=PROXY_MAX_CONNECTIONS))
            for m in ordered]
        await asyncio.to_thread(announce, cluster, ordered, [p.port for p in proxies])
        nodes = Nodes([Node(m.port, p.port, connect(m.url))
                       for m, p in zip(ordered, proxies, strict=True)])
        try:
            yield nodes, proxies
        finally:
            await nodes.aclose()


@contextlib.asynccontextmanager
async def direct_cluster(masters: int) -> AsyncIterator[tuple[str, Nodes]]:
    """A cluster reached directly; yields the URL of the first master and its nodes."""
    async with running_cluster(masters) as cluster:
        ordered = await cluster_masters(cluster)
        nodes = Nodes([Node(m.port, m.port, connect(m.url)) for m in ordered])
        try:
            yield ordered[0].url, nodes
        finally:
            await nodes.aclose()


async def wait_blocked(nodes: Nodes, count: int, timeout_s: float) -> None:
    """Until ``count`` readers are blocked in XREADGROUP over all nodes."""

    async def unblocked() -> str | None:
        blocked = sum([await observe.blocked_readers(n.direct) for n in nodes.all])
        return None if blocked >= count else f"{blocked} of {count} readers blocked"

    await wait.until_async(unblocked, timeout_s, "the readers blocked", poll_s=observe.POLL_S)


async def wait_shards_drained(deployment: Deployment, nodes: Nodes, timeout_s: float,
                              on_progress: Callable[[int], None] | None = None) -> bool:
    """Until every shard's group has nothing undelivered or pending (each read on its owner,
    directly); False on timeout."""
    owners = [(shard, nodes.owner(deployment, shard)) for shard in deployment.shards]

    async def undrained() -> str | None:
        seen = [await observe.progress(node.direct, shard.keys) for shard, node in owners]
        if on_progress is not None:
            on_progress(sum(p.acked for p in seen))
        return None if all(p.drained for p in seen) else "not drained"

    return await observe.drained_within(undrained, timeout_s)


async def delete_prefix(nodes: Nodes, prefix: str) -> int:
    """UNLINK every key under ``prefix:`` on every node, one slot per UNLINK (a cluster
    refuses a multi-key command across slots)."""
    n = 0
    for node in nodes.all:
        by_slot: dict[int, list[bytes]] = {}
        async for key in node.direct.scan_iter(match=f"{prefix}:*", count=SCAN_COUNT):
            by_slot.setdefault(key_slot(key), []).append(key)
        for keys in by_slot.values():
            n += await node.direct.unlink(*keys)
    return n
