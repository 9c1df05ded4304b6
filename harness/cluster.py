"""A private Redis Cluster for the tests and the benchmarks: real ``redis-server`` processes
(cluster mode) on free loopback ports, each in its own directory under one temporary root.

The cluster is built by hand for every shape (1, 2, 3... masters, any replicas per master):
``CLUSTER SET-CONFIG-EPOCH`` + ``CLUSTER ADDSLOTSRANGE`` on each master, ``CLUSTER MEET`` from
the first node, then ``CLUSTER REPLICATE`` on each replica. ``redis-cli --cluster create``
refuses fewer than 3 masters and places replicas its own way; the manual path has neither quirk.

Every node is a ``Popen`` child (``--daemonize no``) so it can be SIGKILLed. Each gets an
explicit ``--cluster-port``: the default bus port, port + 10000, collides with other random
ports or passes 65535. Every wait is bounded and ends in a ``TimeoutError`` naming what was
still wrong."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from harness import wait
from shared.servers import START_TIMEOUT_S, free_port, redis_server_binary, wait_port

HOST = "127.0.0.1"
SLOTS = 16384
CLUSTER_OK_TIMEOUT_S = 20.0   # node start → cluster_state:ok is ~2 s (the writable delay)
PROMOTION_TIMEOUT_S = 20.0    # SIGKILLed master → replica promoted is ~2.6 s at 1000 ms timeout
COMMAND_TIMEOUT_S = 2.0
MIGRATE_TIMEOUT_MS = 5000
MIGRATE_BATCH = 100
POLL_S = 0.02
START_ATTEMPTS = 3            # a freshly picked free port can be taken before redis binds it
BAD_FLAGS = frozenset({"fail", "fail?", "handshake", "noaddr"})


@dataclass(frozen=True)
class NodeLine:
    """One line of ``CLUSTER NODES``: a node as some node sees it."""

    id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # None for masters ("-")
    link: str
    slots: tuple[tuple[int, int], ...]  # owned ranges; importing/migrating markers dropped
    migrating: bool  # "[slot->-id]" / "[slot-<-id]" markers present (only on "myself")

    @property
    def is_master(self) -> bool:
        return "master" in self.flags


def parse_cluster_nodes(text: str) -> list[NodeLine]:
    lines: list[NodeLine] = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) < 8:
            continue
        addr = parts[1].split(",", 1)[0]  # ip:port@cport[,hostname]
        port_text = addr.rsplit(":", 1)[-1].split("@", 1)[0]
        slots: list[tuple[int, int]] = []
        migrating = False
        for token in parts[8:]:
            if token.startswith("["):
                migrating = True
                continue
            lo, _, hi = token.partition("-")
            slots.append((int(lo), int(hi or lo)))
        lines.append(NodeLine(
            id=parts[0], port=int(port_text) if port_text.isdigit() else 0,
            flags=frozenset(parts[2].split(",")),
            master_id=None if parts[3] == "-" else parts[3], link=parts[7],
            slots=tuple(sorted(slots)), migrating=migrating))
    return lines


def _client(port: int, *, decode: bool = True) -> redis.Redis:
    # No retries: a poll of a dead or starting node must fail at once, not back off.
    return redis.Redis(host=HOST, port=port, decode_responses=decode,
                       socket_timeout=COMMAND_TIMEOUT_S,
                       socket_connect_timeout=COMMAND_TIMEOUT_S,
                       retry=Retry(NoBackoff(), 0))


@dataclass(eq=False)
class ClusterNode:
    port: int
    bus_port: int
    proc: subprocess.Popen[bytes] = field(repr=False)
    dir: str
    _id: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def command(self, *args: Any, decode: bool = True) -> Any:
        """One command on a fresh connection (no retries, bounded by COMMAND_TIMEOUT_S)."""
        with _client(self.port, decode=decode) as c:
            return c.execute_command(*args)

    def node_id(self) -> str:
        if self._id is None:  # stable across restarts: it lives in nodes.conf
            self._id = str(self.command("CLUSTER", "MYID"))
        return self._id

    def role(self) -> str:
        """"master" or "slave", as the node itself says (ROLE)."""
        return str(self.command("ROLE")[0])

    def info(self, section: str = "default") -> dict[str, Any]:
        with _client(self.port) as c:
            return dict(c.info(section))

    def cluster_info(self) -> dict[str, str]:
        text = str(self.command("CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def cluster_nodes(self) -> list[NodeLine]:
        return parse_cluster_nodes(str(self.command("CLUSTER", "NODES")))


def _server_args(binary: str, port: int, bus_port: int, directory: str,
                 node_timeout_ms: int) -> list[str]:
    return [
        binary, "--port", str(port), "--bind", HOST,
        "--cluster-enabled", "yes", "--cluster-config-file", str(Path(directory, "nodes.conf")),
        "--cluster-port", str(bus_port), "--cluster-node-timeout", str(node_timeout_ms),
        # Topology changes only when a test asks: no replica wandering to an orphaned master.
        "--cluster-allow-replica-migration", "no",
        # Full syncs start at once instead of waiting 5 s for more replicas to join.
        "--repl-diskless-sync-delay", "0",
        "--save", "", "--appendonly", "no", "--dir", directory,
        "--logfile", str(Path(directory, "redis.log")), "--daemonize", "no",
    ]


def _log_tail(directory: str, lines: int = 5) -> str:
    try:
        text = Path(directory, "redis.log").read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


def _wait_ready(node: ClusterNode, timeout: float) -> None:
    """Listening and answering PING; by then the cluster bus port is bound too."""
    deadline = time.monotonic() + timeout
    wait_port(HOST, node.port, timeout, node.proc)

    def answering() -> str | None:
        if not node.alive:
            raise RuntimeError(f"redis-server on port {node.port} exited with code "
                               f"{node.proc.returncode}: {_log_tail(node.dir)}")
        node.command("PING")
        return None

    wait.until(answering, wait.remaining(deadline), f"redis-server on port {node.port} "
               "answering PING", ignoring=(RedisError,), poll_s=POLL_S)


def _stop_nodes(nodes: list[ClusterNode], root: str) -> None:
    for node in nodes:
        if node.alive:
            node.proc.terminate()
    for node in nodes:
        try:
            node.proc.wait(5)
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait()
    shutil.rmtree(root, ignore_errors=True)


class Cluster:
    """A running local cluster. ``nodes`` keeps start order (masters first, then replicas);
    roles change with failovers, so ask ``masters()`` / ``replicas()`` for the current ones."""

    def __init__(self, binary: str, root: str, node_timeout_ms: int) -> None:
        self.binary = binary
        self.root = root
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[ClusterNode] = []
        self._used_ports: set[int] = set()
        self._orphans: dict[int, list[ClusterNode]] = {}  # killed master's port → its replicas
        # Even if nobody calls stop(), no redis-server outlives the interpreter (normal exit).
        self._finalizer = weakref.finalize(self, _stop_nodes, self.nodes, root)

    # -- processes -------------------------------------------------------------------------

    def _pick_port(self) -> int:
        for _ in range(100):
            port = free_port()
            if port not in self._used_ports:
                self._used_ports.add(port)
                return port
        raise RuntimeError("could not find a free port")

    def _popen(self, port: int, bus_port: int, directory: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            _server_args(self.binary, port, bus_port, directory, self.node_timeout_ms),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _add_node(self, index: int | None = None) -> ClusterNode:
        """Spawn a node on fresh ports (not yet waited on), at ``index`` in ``nodes``."""
        port, bus_port = self._pick_port(), self._pick_port()
        directory = str(Path(self.root, str(port)))
        Path(directory).mkdir()
        node = ClusterNode(port, bus_port, self._popen(port, bus_port, directory), directory)
        self.nodes.insert(len(self.nodes) if index is None else index, node)
        return node

    def _start_nodes(self, count: int) -> None:
        """Start ``count`` nodes in parallel; a node that lost its port race gets new ports."""
        pending = [self._add_node() for _ in range(count)]
        for attempt in range(1, START_ATTEMPTS + 1):
            failed: list[tuple[ClusterNode, RuntimeError]] = []
            for node in pending:
                try:
                    _wait_ready(node, START_TIMEOUT_S)
                except RuntimeError as e:
                    failed.append((node, e))
            if not failed:
                return
            if attempt == START_ATTEMPTS:
                node, error = failed[0]
                raise RuntimeError(f"could not start {len(failed)} redis-server node(s) in "
                                   f"{START_ATTEMPTS} attempts: {error} {_log_tail(node.dir)}")
            pending = []
            for node, _ in failed:
                index = self.nodes.index(node)  # the replacement keeps the start order
                self.nodes.remove(node)
                shutil.rmtree(node.dir, ignore_errors=True)
                pending.append(self._add_node(index))

    def live(self) -> list[ClusterNode]:
        return [n for n in self.nodes if n.alive]

    @property
    def url(self) -> str:
        """The URL of a live node: a seed for ``RedisCluster.from_url``."""
        for node in self.live():
            return node.url
        raise RuntimeError("no live node in the cluster")

    def by_id(self, node_id: str) -> ClusterNode:
        for node in self.nodes:
            if node._id == node_id or (node._id is None and node.node_id() == node_id):
                return node
        raise KeyError(f"no node with id {node_id}")

    # -- topology --------------------------------------------------------------------------

    def masters(self) -> list[ClusterNode]:
        return [n for n in self.live() if n.role() == "master"]

    def replicas(self) -> list[ClusterNode]:
        return [n for n in self.live() if n.role() == "slave"]

    def replicas_of(self, master: ClusterNode) -> list[ClusterNode]:
        """Live replicas configured to follow ``master`` (by their own ROLE: this still
        names the master after it died, until the replica is promoted)."""
        found = []
        for node in self.live():
            if node is master:
                continue
            role = node.command("ROLE")
            if role[0] == "slave" and int(role[2]) == master.port:
                found.append(node)
        return found

    def replica_of(self, master: ClusterNode) -> ClusterNode | None:
        found = self.replicas_of(master)
        return found[0] if found else None

    def master_of_slot(self, slot: int) -> ClusterNode:
        """The owner of ``slot`` in the view of the first live node (after ``wait_ok`` all
        nodes agree)."""
        for line in self.live()[0].cluster_nodes():
            if line.is_master and any(lo <= slot <= hi for lo, hi in line.slots):
                return self.by_id(line.id)
        raise LookupError(f"slot {slot} is not assigned")

    def _problem(self) -> str | None:
        """What keeps the cluster from being healthy and settled, or None."""
        live = self.live()
        if not live:
            return "no live node"
        try:
            live_ids = {n.node_id(): n for n in live}
            reference: tuple[dict[str, tuple[tuple[int, int], ...]], dict[str, str | None]]
            reference_port = 0
            first = True
            for node in live:
                state = node.cluster_info().get("cluster_state")
                if state != "ok":
                    return f"node {node.port}: cluster_state:{state}"
                view = node.cluster_nodes()
                seen = {line.id: line for line in view}
                for node_id, other in live_ids.items():
                    line = seen.get(node_id)
                    if line is None:
                        return f"node {node.port} does not know node {other.port}"
                    if line.flags & BAD_FLAGS or line.link != "connected":
                        return (f"node {node.port} sees node {other.port} as "
                                f"{','.join(sorted(line.flags))} {line.link}")
                    if line.migrating:
                        return f"node {node.port} has a slot importing/migrating"
                slot_map = {line.id: line.slots for line in view if line.is_master and line.slots}
                for owner in slot_map:
                    if owner not in live_ids:
                        return f"node {node.port} maps slots to dead node {owner}"
                roles = {line.id: line.master_id for line in view if line.id in live_ids}
                if first:
                    reference, reference_port, first = (slot_map, roles), node.port, False
                elif (slot_map, roles) != reference:
                    return f"nodes {reference_port} and {node.port} disagree on the topology"
                if node.role() == "slave":
                    link = node.info("replication").get("master_link_status")
                    if link != "up":
                        return f"replica {node.port}: master_link_status:{link}"
        except RedisError as e:
            return f"{type(e).__name__}: {e}"
        return None

    def wait_ok(self, timeout: float = CLUSTER_OK_TIMEOUT_S) -> None:
        """Until every live node says cluster_state:ok, all agree on slots and roles, every
        slot owner is alive, nothing is migrating and every replica's link is up."""
        wait.until(self._problem, timeout, "the cluster ok", poll_s=POLL_S)

    def _wait_for(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        wait.until(wait.holds(check, "not yet"), timeout, what, ignoring=(RedisError,),
                   poll_s=POLL_S)

    # -- faults and changes ----------------------------------------------------------------

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL ``node`` and reap it. A master's replicas are remembered first, for
        ``wait_promoted_after_kill``."""
        if not node.alive:
            return
        with contextlib.suppress(RedisError):
            if node.role() == "master":
                self._orphans[node.port] = self.replicas_of(node)
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait(10)

    def failover(self, replica: ClusterNode, timeout: float = CLUSTER_OK_TIMEOUT_S) -> None:
        """Manual failover (CLUSTER FAILOVER): ``replica`` becomes master, its old master its
        replica; returns once the cluster is ok again."""
        if replica.role() != "slave":
            raise ValueError(f"node {replica.port} is not a replica")
        replica.command("CLUSTER", "FAILOVER")
        self._wait_for(f"node {replica.port} promoted", lambda: replica.role() == "master",
                       timeout)
        self.wait_ok(timeout)

    def wait_promoted_after_kill(self, master: ClusterNode,
                                 timeout: float = PROMOTION_TIMEOUT_S) -> ClusterNode:
        """After ``kill(master)``: wait until one of its replicas is master and the cluster is
        ok again; return the new master."""
        if master.alive:
            raise ValueError(f"node {master.port} is still alive")
        candidates = self._orphans.get(master.port) or self.replicas_of(master)
        if not candidates:
            raise ValueError(f"node {master.port} had no live replica to promote")
        deadline = time.monotonic() + timeout
        promoted: list[ClusterNode] = []

        def one_promoted() -> bool:
            promoted[:] = [n for n in candidates if n.alive and n.role() == "master"]
            return bool(promoted)

        self._wait_for(f"a replica of {master.port} promoted", one_promoted, timeout)
        self.wait_ok(wait.remaining(deadline))
        return promoted[0]

    def move_slot(self, slot: int, to: ClusterNode, timeout: float = CLUSTER_OK_TIMEOUT_S
                  ) -> None:
        """Move one slot and its keys to master ``to``, as the cluster spec orders it:
        IMPORTING on the target, MIGRATING on the source, MIGRATE the keys in batches, then
        SETSLOT NODE on the target, the source and every other master."""
        source = self.master_of_slot(slot)
        if source is to:
            return
        if to.role() != "master":
            raise ValueError(f"node {to.port} is not a master")
        deadline = time.monotonic() + timeout
        source_id, to_id = source.node_id(), to.node_id()
        to.command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        source.command("CLUSTER", "SETSLOT", slot, "MIGRATING", to_id)
        while True:
            keys = source.command("CLUSTER", "GETKEYSINSLOT", slot, MIGRATE_BATCH, decode=False)
            if not keys:
                break
            if time.monotonic() >= deadline:
                raise TimeoutError(f"slot {slot} still has keys on {source.port} after "
                                   f"{timeout}s")
            source.command("MIGRATE", HOST, to.port, "", 0, MIGRATE_TIMEOUT_MS, "KEYS", *keys,
                           decode=False)
        others = [m for m in self.masters() if m is not to and m is not source]
        for node in (to, source, *others):
            node.command("CLUSTER", "SETSLOT", slot, "NODE", to_id)
        self.wait_ok(wait.remaining(deadline))

    def restart(self, node: ClusterNode, timeout: float = CLUSTER_OK_TIMEOUT_S) -> None:
        """Start a stopped node again on its ports and directory (same nodes.conf, so the same
        id); a former master comes back as a replica of whoever took its slots."""
        if node.alive:
            raise ValueError(f"node {node.port} is still running")
        node.proc = self._popen(node.port, node.bus_port, node.dir)
        _wait_ready(node, START_TIMEOUT_S)
        self.wait_ok(timeout)

    def stop(self) -> None:
        """Terminate every node and delete the directories (idempotent)."""
        self._finalizer()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _split_slots(masters: int) -> list[tuple[int, int]]:
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    return [(bounds[i], bounds[i + 1] - 1) for i in range(masters)]


def _wait_mesh(nodes: Iterable[ClusterNode], count: int, timeout: float) -> None:
    nodes = list(nodes)

    def lagging() -> str | None:
        for node in nodes:
            try:
                view = node.cluster_nodes()
            except RedisError as e:
                return f"node {node.port}: {e}"
            if len(view) != count or any(line.flags & BAD_FLAGS for line in view):
                return f"node {node.port} knows {len(view)}/{count} nodes"
        return None

    wait.until(lagging, timeout, "the cluster nodes to meet", poll_s=POLL_S)


def start_cluster(masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000,
                  *, binary: str | None = None, timeout: float = CLUSTER_OK_TIMEOUT_S
                  ) -> Cluster:
    """Start ``masters * (1 + replicas_per_master)`` nodes, slots split evenly over the
    masters, and return once the cluster is ok (about 2 s: a master refuses to go ok until
    2 s after its start)."""
    if masters < 1 or replicas_per_master < 0:
        raise ValueError("need masters >= 1 and replicas_per_master >= 0")
    binary = binary or redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    cluster = Cluster(binary, tempfile.mkdtemp(prefix="regionstream-cluster-"), node_timeout_ms)
    try:
        deadline = time.monotonic() + timeout
        total = masters * (1 + replicas_per_master)
        cluster._start_nodes(total)
        nodes = cluster.nodes
        # Distinct config epochs before the nodes meet (as redis-cli does): no epoch
        # collisions to resolve, the slot owners are settled from the start.
        for epoch, node in enumerate(nodes, start=1):
            node.node_id()  # cached now: by_id() must work on nodes that die later
            node.command("CLUSTER", "SET-CONFIG-EPOCH", epoch)
        for node, (lo, hi) in zip(nodes[:masters], _split_slots(masters), strict=True):
            node.command("CLUSTER", "ADDSLOTSRANGE", lo, hi)
        for node in nodes[1:]:
            nodes[0].command("CLUSTER", "MEET", HOST, node.port, node.bus_port)
        _wait_mesh(nodes, total, wait.remaining(deadline))
        for i, master in enumerate(nodes[:masters]):
            first = masters + i * replicas_per_master
            for replica in nodes[first:first + replicas_per_master]:
                replica.command("CLUSTER", "REPLICATE", master.node_id())
        cluster.wait_ok(wait.remaining(deadline))
    except BaseException:
        cluster.stop()
        raise
    return cluster
