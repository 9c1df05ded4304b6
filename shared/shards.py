"""Where a deployment's streams live: the shard layout (``--shard-by``) and, on a Redis Cluster,
which node holds each shard.

A shard is one stream, its dead-letter stream and its consumer group (``Keys``). With
``--shard-by region`` each region has its own shard, in the slot of that region's data keys, so
everything a batch does (persist and ack, dead-letter, replay) stays one script call or one
MULTI/EXEC on one node. On a cluster every command of a shard goes to the node that owns the
shard's slot through a plain connection to that node: no ``COMMAND GETKEYS`` round trips, no
cross-node pipeline splitting. When a slot moves (MOVED, ASK, a failover) the caller's error
handling asks ``note_error`` to re-read the slot map, and the next command goes to the new owner.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from shared.connection import ErrorKind, Tls, backoff, classify, connect, is_sentinel_url
from shared.keys import ALL_SHARD, Keys

log = logging.getLogger("regionstream.shards")
T = TypeVar("T")



class LayoutError(ValueError):
    """A --shard-by value that does not fit the server (one line, exit 2)."""


@dataclass(frozen=True, slots=True)
class Shard:
    region: str | None  # None: the single stream of --shard-by none
    keys: Keys

    @property
    def label(self) -> str:
        return self.region or ALL_SHARD

    @property
    def slot(self) -> int:
        """The cluster slot of the shard's stream (and, with regions, of its data)."""
        return key_slot(self.keys.stream.encode())


def resolve_layout(shard_by: str, cluster: bool) -> str:
    if shard_by == "auto":
        return "region" if cluster else "none"
    if shard_by == "none" and cluster:
        raise LayoutError("bad setting --shard-by: 'none' cannot run on a Redis Cluster (one "
                          "stream is one slot, and its scripts would cross slots); use "
                          "--shard-by region")
    return shard_by


def shards(keys: Keys, regions: Iterable[str], layout: str, only: Iterable[str] = ()
           ) -> tuple[Shard, ...]:
    """The layout's shards; ``only`` (``--shards``): just these regions' shards."""
    only = tuple(only)
    if layout == "none":
        if only:
            raise LayoutError("bad setting --shards: it selects region shards, and this "
                              "deployment has one stream (--shard-by none); use "
                              "--shard-by region, or leave --shards out")
        return (Shard(None, keys),)
    return tuple(Shard(r, keys.shard(r)) for r in regions if not only or r in only)


async def is_cluster(client: aioredis.Redis) -> bool:
    """``cluster_enabled:1`` in INFO: the server is a Redis Cluster node."""
    try:
        info: Any = await client.info("cluster")
    except ResponseError:  # a server (or proxy) without the section: not a cluster
        return False  # (an unreachable server raises: it is not thereby a single server)
    return str(info.get("cluster_enabled", 0)) == "1"


class NodeRouter:
    """Plain clients of the cluster's masters, one per node, and the slot map to pick one."""

    def __init__(self, url: str, tls: Tls | None, options: dict[str, Any]) -> None:
        self.url, self.tls, self.options = url, tls, options
        self._clients: dict[tuple[str, int], aioredis.Redis] = {}
        self._slots: list[tuple[int, int, tuple[str, int]]] = []
        self._refreshed_at = 0.0
        self._answered: aioredis.Redis | None = None  # the node that gave the last map
        self._lock = asyncio.Lock()

    def _node_url(self, host: str, port: int) -> str:
        parts = urlsplit(self.url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"{host}:{port}"
        return parts._replace(netloc=netloc, path="/0").geturl()

    def client_of(self, node: tuple[str, int]) -> aioredis.Redis:
        if node not in self._clients:
            self._clients[node] = connect(self._node_url(*node), tls=self.tls, **self.options)
        return self._clients[node]

    async def refresh(self, *, since: float | None = None) -> None:
        """Read the slot map. ``since``: an error seen at that time (monotonic) asks for it,
        and a read that started after then is new enough: the many workers that hit one MOVED
        cause one read, and none is skipped for a read older than its error."""
        async with self._lock:
            if since is not None and self._refreshed_at >= since:
                return
            started = time.monotonic()  # the map read is at least this new
            # The node that answered last first, the URL's node last: a dead node (often the
            # one that just failed) costs a connect timeout, and the map is needed now.
            seed = self._seed()
            known = [c for c in self._clients.values() if c is not seed]
            seeds = [*sorted(known, key=lambda c: c is not self._answered), seed]
            last: BaseException | None = None
            for client in seeds:
                try:
                    reply: Any = await client.execute_command(  # type: ignore[no-untyped-call]
                        "CLUSTER SLOTS")
                except (RedisError, OSError) as exc:
                    last = exc
                    continue
                self._slots = sorted(_parse_slots(reply))
                self._refreshed_at, self._answered = started, client
                return
            raise last if last is not None else RedisError("no cluster node answered")

    async def refresh_after(self, exc: BaseException | str) -> None:
        """A command failed (``exc``): re-read the slot map (rate-limited) so that the next
        command goes to the slot's owner after a MOVED, a failover or a reshard. A failed
        re-read is logged: the caller's own retry will ask again."""
        seen = time.monotonic()
        try:
            await self.refresh(since=seen)
        except (RedisError, OSError) as err:
            log.warning("re-reading the cluster slot map failed: %s (after: %s)", err, exc)

    def adopt(self, other: NodeRouter) -> None:
        """Start from ``other``'s slot map (another router of the same cluster)."""
        self._slots, self._refreshed_at = list(other._slots), other._refreshed_at

    def _seed(self) -> aioredis.Redis:
        parts = urlsplit(self.url)
        return self.client_of((parts.hostname or "127.0.0.1", parts.port or 6379))

    def node_of(self, slot: int) -> tuple[str, int]:
        for start, end, node in self._slots:
            if start <= slot <= end:
                return node
        raise RedisError(f"CLUSTERDOWN no node serves slot {slot} (slot map being refreshed)")

    def client_for(self, slot: int) -> aioredis.Redis:
        return self.client_of(self.node_of(slot))

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def _parse_slots(reply: Any) -> list[tuple[int, int, tuple[str, int]]]:
    out = []
    for row in reply:  # [start, end, [host, port, id, ...], replicas...] (a plain client's)
        host, port = row[2][0], row[2][1]
        out.append((int(row[0]), int(row[1]), (_text(host), int(port))))
    return out


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class Deployment:
    """The clients of one deployment, found out once (``open_deployment``): ``client_for(shard)``
    is the client of the node holding a shard now (the one client on a single server). Ask it
    per command: on a cluster the answer changes when a slot moves, once ``note_error`` has
    re-read the slot map."""

    def __init__(self, url: str, tls: Tls | None, options: dict[str, Any], base: aioredis.Redis,
                 router: NodeRouter | None, layout: str, shard_list: tuple[Shard, ...]) -> None:
        self.url, self.tls, self.options = url, tls, options
        self.base, self.router, self.layout, self.shards = base, router, layout, shard_list

    @property
    def cluster(self) -> bool:
        return self.router is not None

    def with_options(self, **options: Any) -> Deployment:
        """The same deployment (layout, shards, slot map) through new clients with other
        connection ``options`` (the consumer's workers: no re-sends, a longer read timeout),
        without asking the server again what it is."""
        merged = {**self.options, **options}
        router = None
        if self.router is not None:
            router = NodeRouter(self.url, self.tls, merged)
            router.adopt(self.router)
        return Deployment(self.url, self.tls, merged, connect(self.url, tls=self.tls, **merged),
                          router, self.layout, self.shards)

    def client_for(self, shard: Shard) -> aioredis.Redis:
        if self.router is None:
            return self.base
        return self.router.client_for(shard.slot)

    def node_of(self, shard: Shard) -> tuple[str, int] | None:
        """The node holding ``shard`` now (None: the one server)."""
        return None if self.router is None else self.router.node_of(shard.slot)

    def node_clients(self) -> list[aioredis.Redis]:
        """A client of each node holding a shard (the one client on a single server)."""
        if self.router is None:
            return [self.base]
        nodes = sorted({self.router.node_of(s.slot) for s in self.shards})
        return [self.router.client_of(node) for node in nodes]

    async def note_error(self, exc: BaseException | str) -> None:
        """A command failed: on a cluster, re-read the slot map (NodeRouter.refresh_after)."""
        if self.router is not None:
            await self.router.refresh_after(exc)

    def regions_by_node(self, keys: Keys, regions: Iterable[str]
                        ) -> list[tuple[aioredis.Redis, list[str]]]:
        """``regions`` grouped by the node holding their data keys, each group with that
        node's client: one pipeline per node reads them all (one group on a single server)."""
        regions = list(regions)
        if self.router is None:
            return [(self.base, regions)] if regions else []
        groups: dict[tuple[str, int], list[str]] = {}
        for r in regions:
            node = self.router.node_of(key_slot(keys.latest(r).encode()))
            groups.setdefault(node, []).append(r)
        return [(self.router.client_of(node), rs) for node, rs in groups.items()]

    def client_for_region(self, keys: Keys, region: str) -> aioredis.Redis:
        """The client of the node holding ``region``'s data keys (for ``show``)."""
        if self.router is None:
            return self.base
        return self.router.client_for(key_slot(keys.latest(region).encode()))

    async def aclose(self) -> None:
        if self.router is not None:
            await self.router.aclose()
        await self.base.aclose()


def single_server(url: str, client: aioredis.Redis, keys: Keys, regions: Iterable[str],
                  shard_by: str = "none", only: Iterable[str] = ()) -> Deployment:
    """The deployment of the one server at ``url``, through ``client`` (a connection of
    ``url`` the caller made and closes), without asking the server what it is: for tools
    and tests that know. ``with_options`` connects to ``url`` anew."""
    layout = resolve_layout(shard_by, cluster=False)
    return Deployment(url, None, {}, client, None, layout, shards(keys, regions, layout, only))


# A read of every shard (``top``, ``pending``) that meets a redirect (a slot moved, a failover)
# re-reads the slot map and asks again, this many times in all, before it reports the error.
READ_ATTEMPTS = 3


async def read_each(deployment: Deployment,
                    read: Callable[[Shard, aioredis.Redis], Awaitable[T]]
                    ) -> list[T]:
    """``read(shard, client)`` for every shard, concurrently, in shard order. Only for reads:
    a transient error (MOVED, ASK, a failover, a dropped connection) runs ``read`` again."""

    def reader(shard: Shard) -> Callable[[], Awaitable[T]]:
        return lambda: read(shard, deployment.client_for(shard))

    return list(await asyncio.gather(*(retrying(deployment, reader(shard))
                                       for shard in deployment.shards)))


async def retrying(deployment: Deployment, read: Callable[[], Awaitable[T]]) -> T:
    """``read()``, again after a transient error (the slot map re-read, a backoff pause in
    between), READ_ATTEMPTS times in all. Only for reads: they can be repeated."""
    delays = backoff()
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return await read()
        except (RedisError, OSError) as exc:
            if attempt == READ_ATTEMPTS or classify(exc) is not ErrorKind.TRANSIENT:
                raise
            await deployment.note_error(exc)
            await asyncio.sleep(delays.compute(attempt))
    raise AssertionError("unreachable")


async def open_deployment(url: str, keys: Keys, regions: Iterable[str], shard_by: str, *,
                          only: Iterable[str] = (), tls: Tls | None = None, **options: Any
                          ) -> Deployment:
    """Connect, find out whether ``url`` is a cluster node, resolve the layout and (on a
    cluster) read the slot map. Raises LayoutError for --shard-by none on a cluster."""
    base = connect(url, tls=tls, **options)
    try:
        cluster = not is_sentinel_url(url) and await is_cluster(base)
        layout = resolve_layout(shard_by, cluster)
        router = None
        if cluster:
            router = NodeRouter(url, tls, options)
            await router.refresh()
        return Deployment(url, tls, options, base, router, layout,
                          shards(keys, regions, layout, only))
    except BaseException:
        await base.aclose()
        raise
