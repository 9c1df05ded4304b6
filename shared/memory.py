"""Redis memory: its eviction policy, read at start, and the keys it evicted.

Every guarantee of regionstream assumes Redis keeps what it was given. Under a
``maxmemory-policy`` other than ``noeviction`` a full Redis deletes keys to make room: stored
snapshots (``volatile-*``: they all carry an expiry), and with ``allkeys-*`` the stream itself
with its group and pending list. Measured here: with ``volatile-lru`` and memory full,
``consume --drain`` reported 2,000 persisted, exit 0, and 1,355 of them were then gone; with
``allkeys-lru`` the stream was evicted and 400 entries ended neither stored, dead-lettered nor
pending. So the writing commands refuse an evicting policy (exit 3, one line) unless told
``--allow-eviction``; the policy and ``evicted_keys`` are exported and alerted on
(RegionstreamRedisMayEvict, RegionstreamRedisEvictedKeys).

The policy is read with ``INFO memory``, which managed services allow where ``CONFIG`` is
disabled. A server that does not report one (an old or embedded server) is taken as not
evicting: nothing can be said about it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from shared.connection import describe_url

log = logging.getLogger("regionstream")

SAFE_POLICY = "noeviction"


@dataclass(frozen=True, slots=True)
class Memory:
    policy: str | None  # maxmemory-policy; None when the server does not say
    evicted_keys: int | None  # keys evicted since the server started (INFO stats)
    maxmemory: int = 0  # 0: no limit set

    @property
    def evicting(self) -> bool:
        return self.policy is not None and self.policy != SAFE_POLICY


class EvictionRisk(Exception):
    """A server of the deployment may evict keys, and the user did not accept it."""


def memory_of(memory_info: dict[str, Any], stats_info: dict[str, Any]) -> Memory:
    policy = memory_info.get("maxmemory_policy")
    evicted = stats_info.get("evicted_keys")
    return Memory(None if policy is None else str(policy),
                  None if evicted is None else int(evicted),
                  int(memory_info.get("maxmemory", 0) or 0))


async def read_memory(client: Any) -> Memory:
    """The server's policy and evictions, in one round trip (``INFO memory``, ``INFO stats``)."""
    pipe = client.pipeline(transaction=False)
    pipe.info("memory")
    pipe.info("stats")
    memory_info, stats_info = await pipe.execute()
    return memory_of(memory_info, stats_info)


async def check_eviction(clients: list[Any], url: str, *, allow: bool) -> list[Memory]:
    """Read every node's policy; refuse (``EvictionRisk``) if one may evict, unless ``allow``,
    in which case say it once as a warning."""
    read = [await read_memory(c) for c in clients]
    evicting = sorted({m.policy for m in read if m.evicting and m.policy})
    if not evicting:
        return read
    what = (f"Redis at {describe_url(url)} has maxmemory-policy {', '.join(evicting)}: when "
            "full it deletes keys (stored snapshots, or the stream with its group and pending "
            "entries)")
    if not allow:
        raise EvictionRisk(f"{what}; set maxmemory-policy noeviction, or pass "
                           "--allow-eviction (REGIONSTREAM_ALLOW_EVICTION=1) to accept losing "
                           "data")
    log.warning("%s; running anyway (--allow-eviction): what it evicts is lost", what)
    return read
