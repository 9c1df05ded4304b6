"""Operator tools: ``pending`` (who holds what) and ``replay`` (dead letters, pending entries of
a dead consumer, a range of history)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from consumer import dead_letters, scripts
from consumer.message import MAX_ENTRY_FIELDS
from consumer.settle import Fate, Settled, Settler
from consumer.shard_group import ShardGroup
from shared import wire
from shared.failpoints import failpoint
from shared.group import GroupStats, read_group_stats, total
from shared.ids import id_seconds, text
from shared.keys import ALL_SHARD, Keys
from shared.layout import layout_mismatch
from shared.metrics import ConsumerMetrics
from shared.settings import Settings
from shared.shards import Deployment, Shard, read_each

# How many pending entries `pending` inspects per consumer for the max delivery count; beyond
# that the figure is a lower bound and says so.
PENDING_SCAN_LIMIT = 10_000
DLQ_PAGE = 500
REPLAY_PAGE = 200




@dataclass
class ConsumerRow:
    name: str
    pending: int
    idle_s: float
    oldest_age_s: float | None = None
    max_deliveries: int = 0
    scanned_all: bool = True
    shard: str = ALL_SHARD


@dataclass
class ShardRow:
    """One shard's stream, group and dead-letter stream (a row of ``pending``'s and ``top``'s
    shard tables: ``regionstream.view.shard_table``)."""

    shard: str
    stream: str
    dlq: str
    group_exists: bool
    stream_length: int
    lag: int | None
    pending: int
    dlq_length: int
    oldest_pending_age_s: float | None

    @classmethod
    def of(cls, shard: Shard, stats: GroupStats) -> ShardRow:
        k = shard.keys
        return cls(shard.label, k.stream, k.dlq, stats.exists, stats.stream_length, stats.lag,
                   stats.pending, stats.dlq_length, stats.oldest_pending_age_s)


@dataclass(frozen=True)
class Totals:
    """A deployment's figures over its shards, the one aggregation of them (``pending``'s report,
    ``top``'s frame, the total row of their shard tables): sums; ``lag`` None if any shard's is
    unknown; the oldest pending entry of any shard; the group on every shard."""

    group_exists: bool
    stream_length: int
    lag: int | None
    pending: int
    dlq_length: int
    oldest_pending_age_s: float | None

    @classmethod
    def over(cls, rows: Sequence[ShardRow]) -> Totals:
        oldest = [r.oldest_pending_age_s for r in rows if r.oldest_pending_age_s is not None]
        return cls(all(r.group_exists for r in rows), sum(r.stream_length for r in rows),
                   total([r.lag for r in rows]), sum(r.pending for r in rows),
                   sum(r.dlq_length for r in rows), max(oldest) if oldest else None)


@dataclass
class PendingReport:
    """The whole deployment: totals over its shards (``Totals``), a row per shard, and every
    consumer of every shard."""

    stream: str
    group: str
    group_exists: bool  # on every shard
    stream_length: int
    lag: int | None
    pending: int
    dlq_length: int
    consumers: list[ConsumerRow] = field(default_factory=list)
    shards: list[ShardRow] = field(default_factory=list)
    # Entries waiting in the other --shard-by layout's streams (shared.layout), or None.
    layout_warning: str | None = None

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


async def pending_report(deployment: Deployment, keys: Keys,
                         regions: tuple[str, ...] = ()) -> PendingReport:
    """Per shard, concurrently: the group's counters (one round trip), then each holding
    consumer's pending list for its oldest entry and highest delivery count. Ages use Redis's
    clock. ``regions``: whose shard streams the layout check looks at (``shared.layout``)."""

    async def one(shard: Shard, redis: aioredis.Redis) -> tuple[ShardRow, list[ConsumerRow]]:
        state = await read_group_stats(redis, shard.keys)
        return (ShardRow.of(shard, state),
                await _consumer_rows(redis, shard, state.at) if state.exists else [])

    read, mismatch = await asyncio.gather(read_each(deployment, one),
                                          layout_mismatch(deployment, keys, regions))
    rows = [r for r, _ in read]
    t = Totals.over(rows)
    return PendingReport(keys.stream, keys.group, t.group_exists, t.stream_length, t.lag,
                         t.pending, t.dlq_length, [c for _, cs in read for c in cs], rows,
                         mismatch)


async def _consumer_rows(redis: aioredis.Redis, shard: Shard, now: float) -> list[ConsumerRow]:
    """A row per consumer of the shard's group. Its name is read again here, as the bytes
    Redis holds (a name another client chose need not be UTF-8): the pending list is asked
    for by those bytes, and only the row shows the name decoded (``untrusted``)."""
    k = shard.keys
    consumers = []
    listed: Any = await redis.xinfo_consumers(k.stream, k.group)
    for c in listed:
        cr = ConsumerRow(text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000,
                         shard=shard.label)
        rows: Any = await redis.xpending_range(k.stream, k.group, "-", "+", PENDING_SCAN_LIMIT,
                                               c["name"]) if cr.pending else []
        if rows:  # none when its entries were acknowledged since XINFO
            cr.oldest_age_s = max(0.0, now - id_seconds(rows[0]["message_id"]))
            cr.max_deliveries = max(int(r["times_delivered"]) for r in rows)
            cr.scanned_all = len(rows) >= cr.pending
        consumers.append(cr)
    return consumers


@dataclass
class Moved:
    id: str
    region: str
    reason: str
    new_id: str | None = None
    skipped: str | None = None  # why it was left in the dead-letter stream
    shard: str = ALL_SHARD


async def replay_dlq(deployment: Deployment, keys: Keys, *,
                     region: str | None = None, reason: str | None = None,
                     limit: int | None = None, dry_run: bool = False,
                     moved: list[Moved] | None = None) -> list[Moved]:
    """Move dead letters back onto their shard's stream with their original fields; each is
    removed from the dead-letter stream in the same step (one script per entry, on the
    shard's node). Shard after shard; with ``region``: in a region layout its shard's dead
    letters, on one stream those whose region field is ``region``.

    Each entry is appended to ``moved`` (returned) as soon as it is done, so a caller holding
    that list knows exactly what was moved when a later step raises (a Redis error, a
    refused XADD). Nothing before a move can raise on what a dead letter holds: its fields
    are only compared as bytes and decoded for the report (``untrusted``)."""
    moved = [] if moved is None else moved
    for shard in deployment.shards:
        if region and shard.region not in (None, region):
            continue
        if limit is not None and len(moved) >= limit:
            break
        # A region's shard: all of its dead letters are that region's, garbage without a
        # region field and strays claiming another region included (they came on its stream).
        await _replay_shard_dlq(ShardGroup(deployment, shard), moved,
                                region=None if shard.region else region, reason=reason,
                                limit=limit, dry_run=dry_run)
    return moved


def _raw(arg: str | None) -> bytes | None:
    """A command-line argument as the bytes the user typed (argv undecodable as UTF-8 comes
    in as surrogate escapes), to compare with or send to Redis."""
    return None if arg is None else arg.encode("utf-8", "surrogateescape")


async def _replay_shard_dlq(group: ShardGroup, moved: list[Moved], *,
                            region: str | None, reason: str | None, limit: int | None,
                            dry_run: bool) -> None:
    keys, want_region, want_reason = group.keys, _raw(region), _raw(reason)
    start = "-"
    while limit is None or len(moved) < limit:
        page = await group.dead_letters(start, DLQ_PAGE)
        for dlq_id, fields in page:
            if limit is not None and len(moved) >= limit:
                break
            r = fields.get(wire.F_REGION, b"?")
            why = fields.get(dead_letters.REASON_FIELD, b"?")
            if (want_region and r != want_region) or (want_reason and want_reason not in why):
                continue
            m = Moved(text(dlq_id), text(r), text(why), shard=group.label)
            original, m.skipped = _replayable(fields)
            if m.skipped is None and not dry_run:
                new_id = await group.call(scripts.replay_dlq(), [keys.stream, keys.dlq],
                                          [dlq_id, *original])
                if new_id is None:
                    continue  # replayed by someone else meanwhile
                m.new_id = text(new_id)
                failpoint("replay.dlq-moved")
            moved.append(m)
        if len(page) < DLQ_PAGE:
            break
        start = "(" + text(page[-1][0])


def _replayable(fields: dict[bytes, bytes]) -> tuple[list[bytes], str | None]:
    """A dead letter's original field/value list, and why it stays where it is (None: it can
    be moved). Found before anything moves: the move script is only handed what XADD takes,
    so a dead letter that cannot go back stops nothing half-way."""
    try:
        original = dead_letters.original_fields(fields)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return [], f"its packed fields ({dead_letters.PACKED_FIELD.decode()}) do not unpack"
    if not original:
        return [], "no original fields"  # XADD needs at least one
    if len(original) > 2 * MAX_ENTRY_FIELDS:
        # It would only be dead-lettered again, and cannot pass through Lua's unpack.
        return original, f"{len(original) // 2} fields: not replayable"
    return original, None


# A pending entry found deleted from the stream when claimed: dropped from the pending list.
DELETED = "deleted_from_stream"


@dataclass
class Replayed:
    entries: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def add(self, fate: str, n: int = 1) -> None:
        self.outcomes[fate] = self.outcomes.get(fate, 0) + n

    def count(self, settled: Settled) -> None:
        for fate, n in settled.tally().items():
            self.add(fate.value, n)


def _settler(group: ShardGroup, settings: Settings, name: str) -> Settler:
    """The consumer's settle pipeline for a replay; its counters are not served (a replay
    reports what it did on stdout)."""
    return Settler(group, settings, name, ConsumerMetrics(CollectorRegistry(), settings.regions))


async def replay_pending(deployment: Deployment, keys: Keys, settings: Settings,
                         *, consumer: str | None, min_idle_ms: int, dry_run: bool,
                         as_name: str, result: Replayed | None = None) -> Replayed:
    """Claim (XCLAIM) what ``consumer`` (or any consumer) holds idle for ``min_idle_ms`` and
    settle it now under ``as_name``, through the consumer's settle pipeline; shard after
    shard. ``consumer`` is matched as the bytes given (a name that is not UTF-8 can be named).
    Outcomes are added to ``result`` (returned) as each page settles: what it holds when a
    later step raises is what was done."""
    result = Replayed() if result is None else result
    for shard in deployment.shards:
        group = ShardGroup(deployment, shard)
        await _replay_shard_pending(group, _settler(group, settings, as_name), result,
                                    consumer=_raw(consumer), min_idle_ms=min_idle_ms,
                                    dry_run=dry_run)
    return result


async def _replay_shard_pending(group: ShardGroup, settler: Settler, result: Replayed, *,
                                consumer: bytes | None, min_idle_ms: int, dry_run: bool
                                ) -> None:
    start: bytes | str = "-"
    while True:
        # Its own entries too: what an earlier `replay --pending` claimed and then died on.
        rows = await group.pending(start, REPLAY_PAGE, consumer, min_idle_ms)
        ids = [r["message_id"] for r in rows]
        result.ids += [text(i) for i in ids]
        if ids and not dry_run:
            claimed = await group.claim(settler.consumer, min_idle_ms, ids)
            result.entries += len(claimed)
            # Redis 7 drops an entry deleted from the stream (XDEL, a trim) from the pending
            # list instead of returning it: nothing of it is left to settle. Said, not hidden
            # in the count (the report said "replayed 2" of which one was gone).
            returned = {c[0] for c in claimed}
            if gone := [i for i in ids if i not in returned]:
                result.add(DELETED, len(gone))
            failpoint("replay.pending-claimed")
            result.count(await settler.settle(claimed))
        if len(rows) < REPLAY_PAGE:
            return
        start = "(" + text(rows[-1]["message_id"])


async def replay_range(deployment: Deployment, keys: Keys, settings: Settings, *,
                       start: str, end: str, dry_run: bool, result: Replayed | None = None
                       ) -> Replayed:
    """Re-drive stream history through dedup: each entry goes through the settle pipeline
    without an ack (it belongs to the group's own accounting). Idempotent: what is stored is
    recognized and nothing is written twice. Every shard's stream, START..END each (ids are
    times, so a range means the same span of time on every shard). Outcomes are added to
    ``result`` as each page settles (see ``replay_pending``)."""
    result = Replayed() if result is None else result
    for shard in deployment.shards:
        group = ShardGroup(deployment, shard)
        # An entry of another region on a region's shard cannot be persisted there (its keys
        # live in another slot): invalid here, as it is for the consumer.
        await _replay_shard_range(group, _settler(group, settings, "replay-range"), result,
                                  start=start, end=end, dry_run=dry_run)
    return result


async def _replay_shard_range(group: ShardGroup, settler: Settler, result: Replayed, *,
                              start: str, end: str, dry_run: bool) -> None:
    cursor = start
    while True:
        page = await group.history(cursor, end, REPLAY_PAGE)
        result.entries += len(page)
        result.ids += [text(i) for i, _ in page]
        # The check and the persist call of the consumer, without its acknowledgement, its
        # dead letters, its retries or its log: the report says what happened to each entry.
        valid, poison, _ = settler.checked(page)
        if poison:
            result.add(Fate.INVALID.value, len(poison))
        if valid and not dry_run:
            result.count(await settler.send(valid, (), ack=False))
        if len(page) < REPLAY_PAGE:
            return
        cursor = "(" + text(page[-1][0])
