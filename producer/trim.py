"""The producer's trim policy: how far a stream may be trimmed without dropping an entry some
consumer group still needs."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.group import cursor_ahead, cursor_ahead_message
from shared.ids import id_key, next_id
from shared.keys import Keys

log = logging.getLogger("regionstream.producer")


async def safe_trim_id(redis: aioredis.Redis, keys: Keys) -> bytes | None:
    """The newest MINID that drops no entry some group still needs: the oldest pending or
    undelivered entry over every group of the stream. None: no group, trim nothing (Redis 7
    has no ACKED trim option, so this is computed here)."""
    pipe = redis.pipeline(transaction=False)  # one round trip: the groups and the stream
    pipe.xinfo_groups(keys.stream)
    pipe.xinfo_stream(keys.stream)
    groups, stream = await pipe.execute(raise_on_error=False)
    if isinstance(groups, ResponseError) or isinstance(stream, ResponseError):
        return None  # no stream (or a refusal): trim nothing
    if not groups:
        return None
    if ahead := [g for g in groups if cursor_ahead(g, stream)]:
        # Its cursor says nothing of what it processed: trim nothing rather than entries it
        # was never given.
        log.warning("not trimming: %s", cursor_ahead_message(keys, ahead[0], stream))
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
