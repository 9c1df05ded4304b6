"""The consumer group of one shard: every stream-group command a consumer sends for it (read,
autoclaim, claim, pending, ack, the script calls), each to the node that holds the shard now.

Nothing here decides what an entry's fate is (that is ``consumer.settle``) or when to read
(``consumer.worker``, ``consumer.reclaim``): this is the one place that speaks to the shard's
stream, its group and its dead-letter stream, so that the rest is plain logic over replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from consumer import scripts
from shared import failpoints
from shared.shards import Deployment, Shard

# An entry as read: its id and its fields (None: deleted or trimmed while it was pending).
Entry = tuple[bytes, dict[bytes, bytes] | None]
# A command as sent: name and arguments.
Command = tuple[Any, ...]


class ShardGroup:
    """``shard``'s stream, group and dead-letter stream in ``deployment``."""

    def __init__(self, deployment: Deployment, shard: Shard) -> None:
        self.deployment, self.shard, self.keys = deployment, shard, shard.keys
        # The regions this shard's stream may carry: its one region (an entry of another
        # region there is poison: its keys would live in another slot), else None (any).
        self.regions = (shard.region,) if shard.region else None

    @property
    def redis(self) -> aioredis.Redis:
        """The client of the node holding the shard now (asked again for every command)."""
        return self.deployment.client_for(self.shard)

    @property
    def label(self) -> str:
        return self.shard.label

    async def note_error(self, exc: BaseException | str) -> None:
        """A command of this shard failed: on a cluster the slot map is read again, so the
        next command goes to the slot's owner (after a MOVED, a failover, a reshard)."""
        await self.deployment.note_error(exc)

    async def read(self, consumer: str, cursor: bytes, count: int, block_ms: int | None
                   ) -> list[Entry]:
        """XREADGROUP: from ``>`` new entries (waiting up to ``block_ms``), else ``consumer``'s
        own pending entries after ``cursor``."""
        reply: Any = await self.redis.xreadgroup(
            self.keys.group, consumer, {self.keys.stream: cursor}, count=count, block=block_ms)
        return reply[0][1] if reply else []

    async def autoclaim(self, consumer: str, min_idle_ms: int, start: bytes, count: int
                        ) -> tuple[bytes, list[Entry], list[bytes]]:
        """XAUTOCLAIM: the next cursor, the entries claimed, the ids Redis found deleted."""
        next_cursor, entries, deleted = await self.redis.xautoclaim(
            self.keys.stream, self.keys.group, consumer, min_idle_ms, start_id=start,
            count=count)
        return next_cursor, list(entries), list(deleted)

    async def claim(self, consumer: str, min_idle_ms: int, ids: Sequence[bytes]
                    ) -> list[Entry]:
        """XCLAIM: the entries claimed (Redis 7 drops those deleted from the stream)."""
        claimed: Any = await self.redis.xclaim(self.keys.stream, self.keys.group, consumer,
                                               min_idle_ms, list(ids))
        return list(claimed)

    async def pending(self, start: bytes | str, count: int, consumer: bytes | str | None = None,
                      idle_ms: int | None = None) -> list[dict[str, Any]]:
        """XPENDING's extended form: rows after ``start`` (of ``consumer``, idle ``idle_ms``)."""
        rows: Any = await self.redis.xpending_range(self.keys.stream, self.keys.group, start,
                                                    "+", count, consumer, idle=idle_ms)
        return list(rows)

    async def deliveries(self, consumer: str, ids: Sequence[bytes]) -> dict[bytes, int]:
        """How often each of ``ids`` has been delivered, from its own pending row (one
        pipelined round trip: a range over the batch's ids would also return other entries
        and could miss some of these). An id not pending is left out."""
        pipe = self.redis.pipeline(transaction=False)
        for entry_id in ids:
            pipe.xpending_range(self.keys.stream, self.keys.group, entry_id, entry_id, 1,
                                consumer)
        return {r["message_id"]: int(r["times_delivered"])
                for rows in await pipe.execute() for r in rows}

    async def ack(self, ids: Sequence[bytes]) -> int:
        acked: int = await self.redis.xack(self.keys.stream, self.keys.group, *ids)
        return acked

    async def delete(self, keys: Sequence[Any]) -> None:
        """DEL of keys in this shard's slot (staging keys a failed persist left)."""
        await self.redis.delete(*keys)

    async def consumers(self) -> list[dict[str, Any]]:
        listed: Any = await self.redis.xinfo_consumers(self.keys.stream, self.keys.group)
        return list(listed)

    async def history(self, start: str, end: str, count: int) -> list[Entry]:
        """XRANGE of the stream (``replay --range``)."""
        page: Any = await self.redis.xrange(self.keys.stream, start, end, count=count)
        return list(page)

    async def dead_letters(self, start: str, count: int) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """XRANGE of the dead-letter stream from ``start``."""
        page: Any = await self.redis.xrange(self.keys.dlq, start, "+", count=count)
        return list(page)

    async def call(self, script: scripts.Script, keys: list[str], args: list[Any]) -> Any:
        """One script call outside a batch (loading the script again on NOSCRIPT)."""
        return await scripts.call(self.redis, script, keys, args)

    async def send(self, per_call: Sequence[Sequence[Command]], *, dead_letters: bool = False
                   ) -> list[Any]:
        """Every call's commands in ONE pipeline, errors as values; the replies, call by call.
        (Fail points: a process killed with the batch in flight, ``dead_letters`` said when
        the batch holds a dead-letter call.)"""
        redis = self.redis
        if failpoints.due("consumer.settle-in-flight") or (
                dead_letters and failpoints.due("consumer.dead-letter-in-flight")):
            await failpoints.die_after_sending(redis, [c for cs in per_call for c in cs])
        pipe = redis.pipeline(transaction=False)
        for commands in per_call:
            for command in commands:
                pipe.execute_command(*command)
        replies = await pipe.execute(raise_on_error=False)
        out, at = [], 0
        for commands in per_call:
            out.append(replies[at:at + len(commands)])
            at += len(commands)
        return out

    async def load_scripts(self, names: set[str]) -> None:
        """After NOSCRIPT (a restart, SCRIPT FLUSH, a failover): load them on the shard's node."""
        for name in sorted(names):
            await self.redis.script_load(scripts.script(name).body)

