"""The consumer group: creating it, and reading its state from Redis."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.connection import ErrorKind, classify
from shared.keys import Keys


async def ensure_group(redis: aioredis.Redis, keys: Keys) -> bool:
    """Create the group (and the stream) if missing; True if it was created.

    The group starts at id 0, so entries published before any consumer ran are processed."""
    try:
        await redis.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if classify(exc) is ErrorKind.BUSYGROUP:
            return False
        raise
    return True


@dataclass(frozen=True, slots=True)
class GroupState:
    exists: bool
    pending: int = 0
    lag: int | None = None  # undelivered entries; None when Redis cannot tell (after XDEL)
    consumers: int = 0
    last_delivered_id: bytes = b"0-0"
    stream_length: int = 0

    @property
    def drained(self) -> bool:
        return self.exists and self.pending == 0 and self.lag == 0


async def group_state(redis: aioredis.Redis, keys: Keys) -> GroupState:
    """The group's counters, read in one round trip."""
    pipe = redis.pipeline(transaction=False)
    pipe.xinfo_groups(keys.stream)
    pipe.xinfo_stream(keys.stream)
    groups, stream = await pipe.execute(raise_on_error=False)
    if isinstance(groups, ResponseError) or isinstance(stream, ResponseError):
        return GroupState(exists=False)  # no such stream
    length = int(stream["length"])
    for g in groups:
        if _s(g["name"]) == keys.group:
            lag = g.get("lag")
            last = g["last-delivered-id"]
            if lag is None and last == stream["last-generated-id"]:
                lag = 0  # Redis cannot count after deletions, but nothing is past our cursor
            return GroupState(True, int(g["pending"]), None if lag is None else int(lag),
                              int(g["consumers"]), last, length)
    return GroupState(exists=False, stream_length=length)


def next_id(entry_id: bytes) -> bytes:
    """The smallest stream id after ``entry_id``."""
    ms, _, seq = entry_id.partition(b"-")
    return b"%d-%d" % (int(ms), int(seq or 0) + 1)


def id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq or 0)


async def safe_trim_id(redis: aioredis.Redis, keys: Keys) -> bytes | None:
    """The newest MINID that drops no entry some group still needs: the oldest pending or
    undelivered entry over every group of the stream. None: no group, trim nothing (Redis 7
    has no ACKED trim option, so this is computed here)."""
    try:
        groups = await redis.xinfo_groups(keys.stream)
    except ResponseError:
        return None
    if not groups:
        return None
    pipe = redis.pipeline(transaction=False)
    for g in groups:
        pipe.xpending(keys.stream, g["name"])
    summaries = await pipe.execute()
    bounds = []
    for g, summary in zip(groups, summaries, strict=True):
        bounds.append(next_id(g["last-delivered-id"]))
        if summary["pending"]:
            bounds.append(summary["min"])
    return min(bounds, key=id_key)


def min_id(a: bytes, b: bytes) -> bytes:
    return min(a, b, key=id_key)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v
