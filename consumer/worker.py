"""One worker of the group: a named consumer running ``read -> handle -> settle`` batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from consumer import store
from consumer.message import Poison, Valid, check_entry
from shared.aio import abandon, pause
from shared.connection import ErrorKind, PermanentError, backoff, classify
from shared.failpoints import failpoint
from shared.group import CLOCK_AHEAD_S, ensure_group, id_seconds
from shared.keys import ALL_SHARD, Keys
from shared.metrics import ConsumerMetrics, observe_many
from shared.settings import Settings
from shared.shards import note_error

log = logging.getLogger("regionstream.consumer")


JITTER = 0.5  # back-offs vary by +-50%
# At a graceful stop a worker settles at most this many batches of its own pending entries;
# anything beyond (a huge backlog) stays pending and is replayed at the next start.
FINISH_MAX_PAGES = 50

ONLY_OWN = b"0"  # XREADGROUP from 0: this consumer's own pending entries (replay)
NEW = b">"  # XREADGROUP from >: entries never delivered to the group


@dataclass(slots=True)
class StepResult:
    read: int = 0
    failed: int = 0
    replay: bool = False
    outcomes: dict[str, int] = field(default_factory=dict)  # outcome -> entries


class Worker:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings, name: str,
                 metrics: ConsumerMetrics, stop: asyncio.Event,
                 clock: Callable[[], float] = time.time,
                 regions: tuple[str, ...] | None = None) -> None:
        self.redis, self.keys, self.settings, self.name = redis, keys, settings, name
        self.metrics, self.stop, self.clock = metrics, stop, clock
        # The regions this worker's stream may carry: its shard's one region (an entry of
        # another region there is poison: its keys would live in another slot), else all.
        self.regions = regions or settings.regions
        # This shard's failure counters (label shard: its region, or "all" for one stream).
        self.failure = metrics.failure[regions[0] if regions else ALL_SHARD]
        # A (re)started worker first replays what it still holds from before (read from 0),
        # then reads new entries: nothing it was given before a crash is left behind.
        self.cursor = ONLY_OWN
        # Transient errors back off exponentially (capped, jittered): a Redis that is down for
        # a minute is retried every second or so, not hammered.
        self.backoff = backoff()
        self.errors_in_a_row = 0
        self.full_since: float | None = None  # when Redis began refusing writes (OOM)
        self.said_ahead = False  # an entry id ahead of the clock was reported

    async def _read(self) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        replay = self.cursor != NEW
        started = time.perf_counter()
        reply: Any = await self.redis.xreadgroup(
            self.keys.group, self.name, {self.keys.stream: self.cursor},
            count=self.settings.batch, block=None if replay else self.settings.block_ms)
        self.metrics.rtt["read"].observe(time.perf_counter() - started)
        if not reply:
            if replay:
                self.cursor = NEW
            return []
        entries: list[tuple[bytes, dict[bytes, bytes] | None]] = reply[0][1]
        if replay:  # walk our own pending list; once it is empty, switch to new entries
            self.cursor = entries[-1][0] if entries else NEW
        return entries

    async def iteration(self) -> StepResult:
        """What ``run`` repeats: one batch. A blocking read for new entries is abandoned when
        ``stop`` is set, so a shutdown does not wait out ``block_ms``; whatever the server
        delivered to the abandoned read is in our pending list, which ``finish`` settles."""
        if self.cursor != NEW:
            return await self.step()
        read = asyncio.ensure_future(self._read())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the grace period is over: leave no read behind
            abandon(read)
            raise
        finally:
            stopped.cancel()
        if not read.done():
            read.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await read
            self.cursor = ONLY_OWN
            return StepResult()
        return await self.process(read.result())

    async def finish(self) -> None:
        """On a graceful stop: settle what is still pending under our name (bounded)."""
        self.cursor = ONLY_OWN
        try:
            for _ in range(FINISH_MAX_PAGES):
                result = await self.step()
                if self.cursor == NEW or result.failed:
                    return
        except (RedisError, OSError) as exc:  # they stay pending: replayed at the next start
            log.warning("%s: could not settle own pending entries at stop: %s", self.name, exc)

    async def step(self) -> StepResult:
        """One iteration: read a batch, validate it, settle it in one round trip."""
        replay = self.cursor != NEW
        return await self.process(await self._read(), replay)

    async def process(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]],
                      replay: bool = False) -> StepResult:
        """Validate and settle entries already read; never abandoned half-way."""
        if not entries:
            return StepResult(replay=replay)
        failpoint("consumer.after-read")
        started = time.perf_counter()
        valid, poison, gone = self._handle(entries)
        if gone:
            await self._drop_gone(gone)
        sent = time.perf_counter()
        settled = await store.settle(self.redis, self.keys, self.settings, self.name,
                                     valid, poison)
        self.metrics.rtt["settle"].observe(time.perf_counter() - sent)  # the round trip alone
        failpoint("consumer.after-settle")
        self._stop_on_fatal(settled.outcomes)
        if settled.scripts_reloaded:
            self.failure["noscript"].inc()
            log.warning("%s: Redis had lost our scripts; loaded them again", self.name)
        failed = [o for o in settled.outcomes if o.outcome == store.FAILED]
        # A refusal that says "not now" (a slot migrating: ASK, TRYAGAIN; MOVED; a failover;
        # BUSY) is no fault of the entry: it must not spend the entry's deliveries, or a long
        # reshard would dead-letter valid snapshots. It stays pending and is retried after
        # the slot map is read again.
        later = [o for o in failed if o.transient]
        failed = [o for o in failed if not o.transient]
        full = [o for o in later if o.kind is ErrorKind.OOM]
        later = [o for o in later if o.kind is not ErrorKind.OOM]
        self._note_full(full, len(entries))
        if later:
            self.failure["transient"].inc(len(later))
            log.warning("%s: Redis refused to persist %d entries for now (%s); they stay "
                        "pending", self.name, len(later), later[0].error)
            await note_error(self.redis, ResponseError(later[0].error))
        if failed:
            self.failure["persist"].inc(len(failed))
            moved = await self._spend_budget(failed, dict(entries))  # type: ignore[arg-type]
            gone_ids = {o.entry_id for o in moved}
            settled.outcomes = [o for o in settled.outcomes
                                if o.outcome != store.FAILED or o.entry_id not in gone_ids]
            settled.outcomes += moved
        outcomes = self._record(settled)
        self.metrics.batch_size.observe(len(entries))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        still_failed = outcomes.get(store.FAILED, 0)
        if still_failed:
            self.cursor = ONLY_OWN  # retry what failed, after a pause
        return StepResult(len(entries), still_failed, replay, outcomes)

    def _note_ahead(self, ids: list[bytes], now: float) -> None:
        """Entries whose id is ahead of the clock (an outside ``XADD`` with an explicit id, and
        every auto-id after it, which Redis keeps increasing from there): their latency would
        read as 0 and drag the latency figures down, so they are left out of them, counted
        (``regionstream_ids_ahead_of_clock_total``) and said once per worker."""
        if not ids:
            return
        self.metrics.ids_ahead.inc(len(ids))
        if not self.said_ahead:
            self.said_ahead = True
            log.error("%s: entry %s has an id %.0f s ahead of this clock: an outside XADD with "
                      "an explicit id? Every later entry of the stream inherits it (latency "
                      "figures leave them out; see README Operations)", self.name,
                      ids[0].decode("ascii", "replace"), id_seconds(ids[0]) - now)

    def _note_full(self, full: list[store.Outcome], read: int) -> None:
        """Redis at maxmemory (noeviction) refuses writes: the entries stay pending, spending
        none of their deliveries (they were dead-lettered as max-deliveries, with an ERROR line
        per entry and retry), and are retried after the usual back-off. Said once when it
        starts and once when it ends; counted as failures{kind="oom"} (RegionstreamRedisFull)."""
        if full:
            self.failure["oom"].inc(len(full))
            if self.full_since is None:
                self.full_since = time.monotonic()
                log.error("%s: Redis is out of memory (maxmemory, policy noeviction): it "
                          "refuses to store; %d entries stay pending and are retried until "
                          "memory is freed (%s)", self.name, len(full), full[0].error)
        elif read and self.full_since is not None:
            log.warning("%s: Redis accepts writes again after %.1f s out of memory", self.name,
                        time.monotonic() - self.full_since)
            self.full_since = None

    async def _spend_budget(self, failed: list[store.Outcome],
                            fields: dict[bytes, dict[bytes, bytes]]) -> list[store.Outcome]:
        """Dead-letter the failed entries that used up their deliveries; the rest stay pending
        for another attempt. A message failing every attempt thus ends in the dead-letter
        stream after exactly ``max_deliveries`` deliveries, instead of looping forever."""
        # Each failed entry's own pending row (one pipelined round trip): a range query over
        # the batch's ids would also return other entries and could miss some of these.
        pipe = self.redis.pipeline(transaction=False)
        for o in failed:
            pipe.xpending_range(self.keys.stream, self.keys.group, o.entry_id, o.entry_id, 1,
                                self.name)
        delivered = {r["message_id"]: int(r["times_delivered"])
                     for rows in await pipe.execute() for r in rows}
        exhausted = [
            Poison(o.entry_id, fields[o.entry_id], store.MAX_DELIVERIES_REASON, o.error or "")
            for o in failed if delivered.get(o.entry_id, 0) >= self.settings.max_deliveries
        ]
        if not exhausted:
            return []
        settled = await store.settle(self.redis, self.keys, self.settings, self.name,
                                     (), exhausted)
        return [o for o in settled.outcomes if o.outcome != store.FAILED]

    def _stop_on_fatal(self, outcomes: list[store.Outcome]) -> None:
        """A failure no retry fixes (a missing permission, the dead-letter stream of the wrong
        type) stops the worker: retrying would only burn delivery counts and fill the log.
        The entries stay pending, to be settled once an operator fixed the cause."""
        for o in outcomes:
            if o.fatal:
                raise PermanentError(f"settling entry {o.entry_id.decode()} ({o.region})",
                                     o.error or "")

    def _handle(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]
                ) -> tuple[list[Valid], list[Poison], list[bytes]]:
        now_ms = int(self.clock() * 1000)
        valid: list[Valid] = []
        poison: list[Poison] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted or trimmed while pending: nothing left to process
                gone.append(entry_id)
                continue
            checked = check_entry(entry_id, fields, max_bytes=self.settings.max_bytes,
                                  now_ms=now_ms, regions=self.regions,
                                  retention_ms=self.settings.retention_ms)
            if isinstance(checked, Valid):
                valid.append(checked)
            else:
                poison.append(checked)
        return valid, poison, gone

    async def _drop_gone(self, ids: list[bytes]) -> None:
        await self.redis.xack(self.keys.stream, self.keys.group, *ids)
        self.count_lost(len(ids))

    def count_lost(self, n: int) -> None:
        self.metrics.lost_trimmed.inc(n)
        log.warning("%s: %d pending entries were deleted from the stream before processing",
                    self.name, n)

    def _record(self, settled: store.Settled) -> dict[str, int]:
        """Count each entry's fate in the metrics; returns the tally per outcome. Counters are
        bumped once per (region, outcome) of the batch, not once per entry."""
        now = self.clock()
        tally: dict[str, int] = {}
        by_label: dict[tuple[str, str], int] = {}
        latencies: list[float] = []
        ahead: list[bytes] = []
        for o in settled.outcomes:
            tally[o.outcome] = tally.get(o.outcome, 0) + 1
            if o.outcome == store.SETTLED_ELSEWHERE:
                continue
            if o.outcome == store.FAILED:
                if not o.transient:  # those are said once per batch (process)
                    log.error("%s: persisting %s (%s) failed: %s", self.name,
                              o.entry_id.decode(), o.region, o.error)
                continue
            label = (o.region, o.outcome)
            by_label[label] = by_label.get(label, 0) + 1
            if o.outcome == store.DEAD_LETTERED:
                if o.invalid:
                    label = (o.region, "invalid")
                    by_label[label] = by_label.get(label, 0) + 1
                log.warning("%s: entry %s (%s) dead-lettered after %d deliveries: %s: %s",
                            self.name, o.entry_id.decode(), o.region, o.deliveries, o.error,
                            o.detail)
            latency = now - id_seconds(o.entry_id)
            if latency >= -CLOCK_AHEAD_S:
                latencies.append(max(0.0, latency))
            else:
                ahead.append(o.entry_id)
        observe_many(self.metrics.e2e_latency, latencies)
        self._note_ahead(ahead, now)
        for label, n in by_label.items():
            self.metrics.outcome[label].inc(n)
            self.metrics.totals[label[1]] += n
        for err in settled.ack_errors:
            self.failure["ack"].inc()
            log.error("%s: XACK failed: %s", self.name, err)
        return tally

    async def run(self) -> None:
        """Run iterations until ``stop`` is set; errors back off instead of killing the worker.
        A graceful stop then settles and acks everything this worker still holds."""
        await self._loop()
        await self.finish()

    async def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                result = await self.iteration()
            except ResponseError as exc:
                await self._on_response_error(exc)
                continue
            except (RedisError, OSError) as exc:
                kind = classify(exc)
                if kind is ErrorKind.PERMANENT:
                    raise PermanentError(f"{self.name} talking to Redis", exc) from exc
                if kind is not ErrorKind.TRANSIENT:
                    raise
                self.failure["transient"].inc()
                log.warning("%s: Redis unavailable (%s); retrying", self.name, exc)
                await note_error(self.redis, exc)
                # What we read may not have been settled: take our own pending entries first
                # (harmless if it was: they are recognized as redeliveries).
                self.cursor = ONLY_OWN
                self.errors_in_a_row += 1
                await self._pause(self.backoff.compute(self.errors_in_a_row))
                continue
            self.errors_in_a_row = 0
            if result.failed:  # settings.retry_backoff_ms says why it is not 0
                await self._pause(self.settings.retry_backoff_ms / 1000)

    async def _on_response_error(self, exc: ResponseError) -> None:
        kind = classify(exc)
        # The commands that raise here (XREADGROUP, XAUTOCLAIM, XPENDING, XACK) all work on the
        # stream: a wrong type there, like a missing permission, is a deployment fault.
        if kind in (ErrorKind.PERMANENT, ErrorKind.WRONGTYPE):
            raise PermanentError(f"{self.name} on stream {self.keys.stream}", exc) from exc
        if kind is ErrorKind.NOGROUP:
            # Redis lost the group (restart without persistence, someone ran XGROUP DESTROY):
            # recreate it rather than failing every read.
            try:
                await ensure_group(self.redis, self.keys)
            except (RedisError, OSError) as again:
                if classify(again) not in (ErrorKind.OOM, ErrorKind.TRANSIENT):
                    raise
                # Redis full (XGROUP CREATE is a write) or away: the next read finds the
                # group missing again and tries again, after a back-off; never fatal.
                self.failure["oom" if classify(again) is ErrorKind.OOM else "transient"].inc()
                log.warning("%s: consumer group %s is missing on %s and Redis cannot "
                            "recreate it yet (%s); retrying", self.name, self.keys.group,
                            self.keys.stream, again)
                self.cursor = ONLY_OWN
                await self._pause(self.settings.retry_backoff_ms / 1000)
                return
            self.metrics.nogroup.inc()
            self.failure["nogroup"].inc()
            log.error("%s: consumer group %s was missing on %s; recreated it", self.name,
                      self.keys.group, self.keys.stream)
            self.cursor = ONLY_OWN
            return
        self.failure[{ErrorKind.TRANSIENT: "transient", ErrorKind.OOM: "oom"}.get(
            kind, "other")].inc()
        log.error("%s: Redis refused a command: %s", self.name, exc)
        if kind is ErrorKind.TRANSIENT:  # MOVED, ASK, TRYAGAIN, CLUSTERDOWN, UNBLOCKED...
            await note_error(self.redis, exc)
        self.cursor = ONLY_OWN  # whatever was read before the error is retried first
        await self._pause(self.settings.retry_backoff_ms / 1000)

    async def _pause(self, seconds: float) -> None:
        # Jitter, so that workers hit by the same outage don't retry in lockstep.
        await pause(self.stop, seconds * random.uniform(1 - JITTER, 1 + JITTER))
