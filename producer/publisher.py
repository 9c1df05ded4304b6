"""Publishing snapshots: one pipelined round trip per cycle, and trimming that never drops an
entry a consumer group still needs."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from producer.trim import safe_trim_id
from shared import failpoints, wire
from shared.aio import pause
from shared.connection import ErrorKind, backoff, classify
from shared.group import ensure_group_when_writable
from shared.ids import CLOCK_AHEAD_S, id_key, id_seconds, min_id
from shared.keys import Keys
from shared.metrics import ProducerMetrics
from shared.schema import Snapshot, encode
from shared.settings import Settings
from shared.shards import Deployment

log = logging.getLogger("regionstream.producer")


class Unconfirmed(Exception):
    """Fewer replicas than --min-replicas confirmed a publish within the timeout: a failover
    now could lose it, so it is published again (the repeat is deduplicated downstream)."""

    def __init__(self, confirmed: int, wanted: int, timeout_ms: int) -> None:
        super().__init__(f"{confirmed} of {wanted} replica(s) confirmed the publish within "
                         f"{timeout_ms} ms")


class PartlyPublished(Exception):
    """Some shards of a publish landed, others failed (``cause``); ``remaining`` are the
    indexes of the snapshots still to publish, ``ids`` the entry id of each snapshot (None for
    the remaining ones)."""

    def __init__(self, cause: BaseException, remaining: list[int],
                 ids: list[bytes | None]) -> None:
        super().__init__(str(cause))
        self.cause, self.remaining, self.ids = cause, remaining, ids


class Publisher:
    """Publishes to every shard of a deployment (one stream, or one per region): per shard one
    ``MULTI; XADD...; EXEC`` (plus a ``WAIT`` per node with --min-replicas), every shard of a
    node in one pipeline, the nodes in parallel: a cycle costs about one round trip."""

    def __init__(self, deployment: Deployment, settings: Settings,
                 metrics: ProducerMetrics | None = None) -> None:
        self.deployment, self.settings, self.metrics = deployment, settings, metrics
        self.keys = settings.keys
        self.shards = deployment.shards
        self._by_region = {shard.region: i for i, shard in enumerate(self.shards)}
        self.said_ids_ahead = False

    def describe(self) -> str:
        if len(self.shards) == 1:
            return self.shards[0].keys.stream
        return f"{len(self.shards)} shards of {self.keys.stream}"

    def _shard_index(self, snap: Snapshot) -> int:
        if self.deployment.layout == "none":
            return 0
        return self._by_region[snap.region_id]

    async def prepare(self, stop: asyncio.Event | None = None) -> None:
        """Create the consumer group of every shard if missing, so that entries published
        before any consumer started are kept for it (trimming respects every group it can
        see); while Redis is full, wait for memory until ``stop``."""
        for shard in self.shards:
            await ensure_group_when_writable(self.deployment.client_for(shard), shard.keys,
                                             stop or asyncio.Event(), "producer")

    async def publish(self, snaps: Sequence[Snapshot],
                      payloads: Sequence[bytes] | None = None) -> list[bytes]:
        """XADD every snapshot, atomically per shard, in one round trip per node (the nodes in
        parallel); returns the entry ids in the order of ``snaps``.

        With ``min_replicas`` set, a WAIT follows each node's last EXEC in the same round trip,
        and Unconfirmed is raised when fewer replicas confirmed the writes in time. When some
        nodes failed and others did not, PartlyPublished says which snapshots remain."""
        if not snaps:
            return []
        payloads = payloads if payloads is not None else [encode(s) for s in snaps]
        per_shard: dict[int, list[int]] = {}
        for i, snap in enumerate(snaps):
            per_shard.setdefault(self._shard_index(snap), []).append(i)
        per_node: dict[object, list[int]] = {}
        for shard_index in per_shard:
            per_node.setdefault(self._node(shard_index), []).append(shard_index)
        ids: list[bytes | None] = [None] * len(snaps)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self._publish_node(shards, per_shard, snaps, payloads, ids)
              for shards in per_node.values()), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            # The cause reported (and judged for a retry) is the worst: a refusal no retry
            # fixes must not hide behind another node's failover.
            cause = next((e for e in failed if not _retryable(e)), failed[0])
            remaining = [i for i, entry_id in enumerate(ids) if entry_id is None]
            if len(remaining) < len(snaps):
                self._count([snaps[i] for i, entry_id in enumerate(ids) if entry_id is not None])
                raise PartlyPublished(cause, remaining, ids)
            raise cause
        failpoints.failpoint("producer.after-publish")
        if self.metrics is not None:
            self.metrics.rtt["publish"].observe(time.perf_counter() - started)
        self._count(snaps)
        self._note_ids_ahead(cast(list[bytes], ids))
        return cast(list[bytes], ids)  # every one set: no node failed

    def _note_ids_ahead(self, ids: Sequence[bytes]) -> None:
        """Redis keeps a stream's ids increasing: after one outside ``XADD`` with an explicit
        id far in the future, every id it gives carries that future time. Latency figures
        and time-based trimming (MINID) cannot work on such a stream: said once, as an error
        naming the remedy (docs/operations.md), and exported as a gauge
        (``regionstream_stream_ids_ahead_seconds``, RegionstreamStreamIdsAhead)."""
        ahead_s = max(id_seconds(i) for i in ids) - time.time() if ids else 0.0
        if self.metrics is not None:
            self.metrics.ids_ahead.set(max(0.0, ahead_s))
        if ahead_s > CLOCK_AHEAD_S and not self.said_ids_ahead:
            self.said_ids_ahead = True
            log.error("the stream gives ids %.0f s ahead of this clock (entry %s): an outside "
                      "XADD with an explicit id; latencies cannot work on it, and it is trimmed "
                      "to what the groups still need, keeping no acknowledged history (see "
                      "docs/operations.md: start the stream anew)", ahead_s,
                      max(ids, key=id_key).decode("ascii", "replace"))

    def _count(self, published: Sequence[Snapshot]) -> None:
        if self.metrics is not None:
            for snap in published:
                self.metrics.region[snap.region_id].inc()

    def _node(self, shard_index: int) -> object:
        return self.deployment.node_of(self.shards[shard_index])

    async def _publish_node(self, shard_indexes: list[int], per_shard: dict[int, list[int]],
                            snaps: Sequence[Snapshot], payloads: Sequence[bytes],
                            ids: list[bytes | None]) -> None:
        client = self.deployment.client_for(self.shards[shard_indexes[0]])
        pipe = client.pipeline(transaction=False)
        commands: list[tuple[object, ...]] = []
        exec_at: list[int] = []
        for shard_index in shard_indexes:
            stream = self.shards[shard_index].keys.stream
            commands.append(("MULTI",))
            for i in per_shard[shard_index]:
                fields = wire.entry_fields(snaps[i], payloads[i])
                commands.append(("XADD", stream, "*",
                                 *(part for item in fields.items() for part in item)))
            commands.append(("EXEC",))
            exec_at.append(len(commands) - 1)
        wanted, timeout_ms = self.settings.min_replicas, self.settings.min_replicas_timeout_ms
        if wanted:
            commands.append(("WAIT", wanted, timeout_ms))
        for command in commands:
            pipe.execute_command(*command)
        if failpoints.due("producer.publish-in-flight"):
            await failpoints.die_after_sending(client, commands[:-1] if wanted else commands)
        # Errors as values: one shard's refused transaction (MOVED after its slot moved,
        # NOREPLICAS...) must not hide that the node's other shards landed.
        replies = await pipe.execute(raise_on_error=False)
        error: BaseException | None = None
        landed: list[tuple[int, bytes]] = []
        first = 0
        for shard_index, at in zip(shard_indexes, exec_at, strict=True):
            block, first = replies[first:at + 1], at + 1  # MULTI, XADD..., EXEC
            refused = next((r for r in block if isinstance(r, BaseException)), None)
            if refused is not None:  # the first refusal (MOVED), not EXEC's EXECABORT
                error = error or refused
                continue
            for i, entry_id in zip(per_shard[shard_index], block[-1], strict=True):
                if isinstance(entry_id, BaseException):  # failed inside EXEC; others landed
                    error = error or entry_id
                else:
                    landed.append((i, entry_id))
        if error is not None and not _retryable(error):
            raise error  # before any WAIT shortfall: this one no retry fixes
        if wanted and (isinstance(replies[-1], BaseException) or replies[-1] < wanted):
            if isinstance(replies[-1], BaseException):
                raise replies[-1]
            if self.metrics is not None:
                self.metrics.unconfirmed.inc()
            raise Unconfirmed(replies[-1], wanted, timeout_ms)
        for i, entry_id in landed:
            ids[i] = entry_id
        if error is not None:
            raise error

    async def publish_until_done(self, snaps: Sequence[Snapshot],
                                 payloads: Sequence[bytes] | None, stop: asyncio.Event
                                 ) -> list[bytes]:
        """publish(), again after a capped, jittered backoff while Redis is unavailable (a
        failover, a restart, a moved slot) or replicas did not confirm, until it lands or
        ``stop`` is set; after a partial failure only the shards that failed are published
        again. A retried publish that had landed after all is recognized downstream as a
        redelivery: an outage delays snapshots, it does not lose them. Anything else is
        raised at once."""
        failures, delays = 0, backoff()
        payloads = list(payloads) if payloads is not None else [encode(s) for s in snaps]
        todo = list(range(len(snaps)))
        ids: dict[int, bytes] = {}
        while True:
            try:
                got = await self.publish([snaps[i] for i in todo], [payloads[i] for i in todo])
                ids.update(zip(todo, got, strict=True))
                return [ids[i] for i in range(len(snaps))]
            except (RedisError, OSError, Unconfirmed, PartlyPublished) as exc:
                cause = exc.cause if isinstance(exc, PartlyPublished) else exc
                if isinstance(exc, PartlyPublished):
                    ids.update((todo[i], entry_id) for i, entry_id in enumerate(exc.ids)
                               if entry_id is not None)
                    todo = [todo[i] for i in exc.remaining]
                if self.metrics is not None:
                    self.metrics.publish_failures.inc()
                if not _retryable(cause) or stop.is_set():
                    raise cause from None
                failures += 1
                await self.deployment.note_error(cause)
                log.warning("publishing %d snapshot(s) failed (%s); retry %d", len(todo), cause,
                            failures)
                if await pause(stop, delays.compute(failures)):
                    raise cause from None

    async def trim(self) -> int:
        """Trim every shard: entries older than the stream retention, but none that any group
        has not acknowledged or not yet read. Returns the number of entries removed."""
        removed = 0
        for shard in self.shards:
            removed += await self._trim(self.deployment.client_for(shard), shard.keys)
        return removed

    async def _trim(self, client: aioredis.Redis, keys: Keys) -> int:
        bound = await safe_trim_id(client, keys)
        if bound is None:
            return 0
        retention_ms = self.settings.stream_retention_s * 1000
        now_ms = int(time.time() * 1000)
        # A stream whose ids run ahead of the clock (an outside XADD with a future id: every
        # later id inherits it) cannot be trimmed by age: no id would ever be old enough, and
        # it grew for good. It keeps only what some group still needs; said when publishing.
        ahead = id_seconds(bound) * 1000 > now_ms + CLOCK_AHEAD_S * 1000
        if retention_ms and not ahead:
            cutoff = b"%d-0" % max(0, now_ms - retention_ms)
            bound = min_id(bound, cutoff)
        # Exact (not "~") trimming: with "~" Redis may keep more, never less, but exact makes
        # the retention promise checkable.
        started = time.perf_counter()
        removed: int = await client.xtrim(keys.stream, minid=bound, approximate=False)
        if self.metrics is not None:
            self.metrics.rtt["trim"].observe(time.perf_counter() - started)
        return removed


def _retryable(exc: BaseException) -> bool:
    """Publishing again may succeed: replicas did not confirm, Redis is unavailable for now (a
    failover, a moved slot, a restart), or full (OOM under noeviction: once memory is freed the
    cycle goes out; giving up would lose it)."""
    return isinstance(exc, Unconfirmed) or classify(exc) in (ErrorKind.TRANSIENT,
                                                              ErrorKind.OOM)
