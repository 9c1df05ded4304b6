"""Entries waiting in the streams of the *other* ``--shard-by`` layout: a mismatch made visible.

A producer publishing with ``--shard-by none`` beside consumers on ``--shard-by region`` (or the
other way round) writes to streams nobody reads: the consumers see empty shards, report the
group drained and exit 0 with ``--drain``, while the entries wait. ``layout_mismatch`` reads
the streams the deployment does NOT serve (``shared.shards.shards`` of the other layout, named
by ``shared.keys``) and says what waits there; ``top`` and ``pending`` show it, the consumer
logs it once at start.

Only entries the group has not consumed count (undelivered or pending; every entry of a stream
the group was never created on): the stream retention keeps acknowledged history for a day, so
a deployment that changed its layout the documented way (drained first) is not warned about.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from shared.group import GroupStats, read_group_stats
from shared.keys import Keys
from shared.shards import Deployment, Shard, retrying, shards

# At most this many stream names are listed in the description; the count covers them all.
MAX_NAMED = 3


def other_layout(layout: str) -> str:
    return "none" if layout == "region" else "region"


def unconsumed(stats: GroupStats) -> int | None:
    """Entries of one stream the group has not consumed: undelivered plus pending, or the whole
    stream when the group does not exist on it; None when Redis cannot count the undelivered
    (its lag after deletions) and nothing is pending."""
    if not stats.exists:
        return stats.stream_length
    if stats.lag is None:
        return stats.pending or None
    return stats.lag + stats.pending


async def layout_mismatch(deployment: Deployment, keys: Keys, regions: Iterable[str]
                          ) -> str | None:
    """A one-line description of what waits in the other layout's streams (``regions``: whose
    shard streams to look at when the deployment serves one stream), or None when nothing
    does. One pipelined read per stream, concurrently, each on the node holding it."""
    other = other_layout(deployment.layout)
    if deployment.cluster and other == "none":
        # Nothing runs one stream on a cluster (resolve_layout refuses it), and its stream and
        # dead-letter stream would not even share a node.
        return None
    streams = shards(keys, regions, other)

    async def read(shard: Shard) -> GroupStats:
        return await retrying(deployment, lambda: read_group_stats(
            deployment.client_for(shard), shard.keys))

    stats = await asyncio.gather(*(read(s) for s in streams))
    holding = [(s, n) for s, st in zip(streams, stats, strict=True)
               if (n := unconsumed(st)) != 0]
    if not holding:
        return None
    counts = [n for _, n in holding]
    total = None if None in counts else sum(n for n in counts if n is not None)
    entries = ("an unknown number of entries" if total is None
               else "1 entry" if total == 1 else f"{total} entries")
    names = ", ".join(s.keys.stream for s, _ in holding[:MAX_NAMED]) + (
        ", ..." if len(holding) > MAX_NAMED else "")
    serving = ("one stream (--shard-by none)" if deployment.layout == "none"
               else "region shard streams (--shard-by region)")
    return (f"{names} (--shard-by {other}) {'holds' if len(holding) == 1 else 'hold'} "
            f"{entries} group {keys.group} has not consumed, but this deployment reads "
            f"{serving}: a producer or consumer runs with another --shard-by")
