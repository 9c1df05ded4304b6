"""A private Sentinel setup for tests and benchmarks: one primary, its replicas and three
sentinels, each a real Debian ``redis-server`` / ``redis-sentinel`` on a loopback port in its own
temporary directory. Every wait is bounded and says what it waited for."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from harness import wait
from shared.servers import START_TIMEOUT_S, Server, free_port, start_redis_server, wait_port

MASTER_NAME = "regionstream-test"
POLL_S = 0.02


class CuttableLink:
    """A loopback TCP forwarder a replica replicates through; ``cut()`` stops it forwarding
    (bytes read after the cut are dropped), a network partition between the two servers that
    leaves everyone else's links alone. Threads, not asyncio: it must keep forwarding while a
    test's event loop is busy or blocked."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="link-accept").start()

    def cut(self) -> None:
        self._cut.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                down, _ = self._listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                down.close()
                continue
            up.settimeout(None)
            self._sockets += (down, up)
            for src, dst in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name="link-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self._cut.is_set():
                    dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def sentinel_binary() -> str | None:
    return shutil.which("redis-sentinel")


@dataclass
class SentinelProc:
    port: int
    proc: subprocess.Popen[bytes]
    dir: str

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class SentinelGroup:
    """``url`` is the redis+sentinel:// URL of the group; ``servers`` holds the primary first
    at start (after a failover, ask ``master_port()`` which one leads)."""

    servers: list[Server]
    sentinels: list[SentinelProc]
    master_name: str = MASTER_NAME
    killed: set[int] = field(default_factory=set)
    links: list[CuttableLink] = field(default_factory=list)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def server(self, port: int) -> Server:
        return next(s for s in self.servers if s.port == port)

    def master_port(self) -> int | None:
        """The primary's port as a majority of live sentinels reports it (None: no majority)."""
        votes: dict[int, int] = {}
        for s in self.sentinels:
            with contextlib.suppress(redis.RedisError), s.client() as c:
                addr = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
                if addr:
                    votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
        best = max(votes.items(), key=lambda kv: kv[1], default=None)
        return best[0] if best and best[1] > len(self.sentinels) // 2 else None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every sentinel sees the primary, every replica and the other sentinels, and every
        replica's link to the primary is up."""
        primary = self.servers[0]
        want_replicas, want_others = len(self.servers) - 1, len(self.sentinels) - 1

        def ready() -> bool:
            for s in self.sentinels:
                with s.client() as c:
                    m = c.execute_command("SENTINEL", "MASTER", self.master_name)
                    state = dict(zip(m[::2], m[1::2], strict=True)) if isinstance(m, list) else m
                    if (int(state["port"]) != primary.port or "s_down" in state["flags"]
                            or int(state["num-slaves"]) < want_replicas
                            or int(state["num-other-sentinels"]) < want_others):
                        return False
            for r in self.servers[1:]:
                with redis.Redis(port=r.port, socket_timeout=2, decode_responses=True) as c:
                    if c.info("replication").get("master_link_status") != "up":
                        return False
            return True

        _wait(ready, timeout, "the sentinels to see the primary, replicas and each other")

    def kill(self, port: int) -> float:
        """SIGKILL the server on ``port``; returns the monotonic time of the kill."""
        proc = self.server(port).proc
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        self.killed.add(port)
        return time.monotonic()

    def wait_promoted(self, old_port: int, timeout: float = 30.0) -> int:
        """Wait until a majority of sentinels names another primary, and that server says it is
        a master; returns its port."""
        found: list[int] = []

        def promoted() -> bool:
            port = self.master_port()
            if port is None or port == old_port:
                return False
            with contextlib.suppress(redis.RedisError), redis.Redis(
                    port=port, socket_timeout=2, decode_responses=True) as c:
                if c.info("replication")["role"] == "master":
                    found.append(port)
                    return True
            return False

        _wait(promoted, timeout, f"a replica of :{old_port} to be promoted")
        return found[0]

    def stop(self) -> None:
        for s in self.sentinels:
            s.stop()
        for server in self.servers:
            server.stop()
        for link in self.links:
            link.close()

    def __enter__(self) -> SentinelGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    wait.until(wait.holds(predicate, "not yet"), timeout, what,
               ignoring=(redis.RedisError, OSError), poll_s=POLL_S)


def start_sentinel(master_port: int, *, quorum: int = 2, down_after_ms: int = 500,
                   failover_timeout_ms: int = 2_000, master_name: str = MASTER_NAME
                   ) -> SentinelProc:
    binary = sentinel_binary()
    if binary is None:
        raise FileNotFoundError("redis-sentinel is not installed")
    tmp = tempfile.mkdtemp(prefix="regionstream-sentinel-")
    port = free_port()
    conf = Path(tmp, "sentinel.conf")
    conf.write_text("\n".join([
        f"port {port}", "bind 127.0.0.1", f"dir {tmp}", f"logfile {tmp}/sentinel.log",
        "daemonize no",
        f"sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}",
        f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
        f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
        f"sentinel parallel-syncs {master_name} 1", ""]))
    proc = subprocess.Popen([binary, str(conf)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", port, START_TIMEOUT_S, proc)
    except Exception:
        proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SentinelProc(port, proc, tmp)


def start_sentinel_group(replicas: int = 1, sentinels: int = 3, *, down_after_ms: int = 500,
                         failover_timeout_ms: int = 2_000, cuttable: bool = False
                         ) -> SentinelGroup:
    """A primary, ``replicas`` replicas of it and ``sentinels`` sentinels (quorum: a majority),
    ready (see SentinelGroup.wait_ready). ``cuttable``: each replica replicates through a
    CuttableLink (``group.links``). Sentinel re-points a replica whose master address is not the
    primary's only after ``failover_timeout_ms``: give such a group a long one."""
    group = SentinelGroup([], [])
    try:
        primary = start_redis_server()
        group.servers.append(primary)
        for _ in range(replicas):
            upstream = primary.port
            if cuttable:
                group.links.append(CuttableLink(primary.port))
                upstream = group.links[-1].port
            group.servers.append(start_redis_server(
                extra=("--replicaof", "127.0.0.1", str(upstream))))
        for _ in range(sentinels):
            group.sentinels.append(start_sentinel(
                primary.port, quorum=sentinels // 2 + 1, down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms))
        group.wait_ready()
        return group
    except Exception:
        group.stop()
        raise
