"""What the benchmarks race the consumer against, and how every contender counts its acks.

- :class:`Baseline`: upstream's shape, one message at a time: ``SET NX`` the dedup marker, then
  ONE non-transactional pipeline of the data writes, then ``XACK``, each awaited in series.
  Same payloads, same validation (``check_entry``) and the same keys (``shared.keys.Keys``) as
  the consumer, so the only difference measured is the round-trip shape.
- :class:`Batched`: a hand-written batched consumer (XREADGROUP 200, one pipeline per batch, one
  script per message): what a competent engineer writes without regionstream's design. The
  consumer's workers, batch size, check and keys; per message one atomic script (persist and
  ack, marker last, ``latest`` only forward), so its ratio to the consumer measures the design.
- :class:`Ceiling`: read + ack only (``XREADGROUP`` + ``XACK``, no decode, no persistence): the
  most any consumer of this stream could do with the same batch size and concurrency, and the
  floor of CPU per message, on both sides.
- :func:`unchecked_entry`: a diagnostic, not a contender: the real consumer with the payload
  check (decode + validation) replaced by trusting the entry's routing fields, to show what
  that check costs and what everything else (reading, persisting, acking) costs.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from consumer.message import Poison, Valid, check_entry
from shared import wire
from shared.keys import Keys, dedup_bucket
from shared.settings import Settings

NEW = b">"
MS_PER_S = 1000
# Latency samples kept per run: enough for a p99 of a 10 s run at 5k msg/s, and bounded.
MAX_LATENCY_SAMPLES = 200_000

# The batched contender's script, one call per message. The payload travels as an argument,
# as anyone would write it (regionstream stages it with MSET instead: see consumer/persist.lua).
# KEYS: stream, dedup marker, by-id, index, latest.
# ARGV: group, entry id, snapshot id, generated_at ms, payload, dedup TTL s, retention s.
BATCHED_LUA = b"""
if not redis.call('GET', KEYS[2]) then
  redis.call('SET', KEYS[3], ARGV[5], 'EX', ARGV[7])
  redis.call('ZADD', KEYS[4], ARGV[4], ARGV[3])
  local current = redis.call('GET', KEYS[5])
  local current_at = current and redis.call('ZSCORE', KEYS[4], current)
  if not current_at or tonumber(ARGV[4]) > tonumber(current_at) then
    redis.call('SET', KEYS[5], ARGV[3], 'EX', ARGV[7])
  end
  redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[6])
end
return redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
"""
BATCHED_SHA = hashlib.sha1(BATCHED_LUA).hexdigest()  # called by SHA: loaded before ``go``


@dataclass
class Tracker:
    """Acks seen by one process: a count, first/last wall time and (optionally) latencies from
    the entry id's time (XADD on the server) to the ack being confirmed here."""

    keep_latency: bool = False
    count: int = 0
    t_first: float | None = None
    t_last: float | None = None
    latencies_s: list[float] = field(default_factory=list)

    def acked(self, entry_ids: Iterable[bytes]) -> None:
        now = time.time()
        n = 0
        keep = self.keep_latency and len(self.latencies_s) < MAX_LATENCY_SAMPLES
        for eid in entry_ids:
            n += 1
            if keep:
                self.latencies_s.append(now - int(eid.split(b"-", 1)[0]) / MS_PER_S)
        if n:
            self.count += n
            self.t_first = self.t_first if self.t_first is not None else now
            self.t_last = now


def unchecked_entry(entry_id: bytes, fields: dict[bytes, bytes], **_: Any) -> Valid | Poison:
    """``check_entry`` minus the payload check: the routing fields taken on trust. For the
    "unchecked" diagnostic run only; the consumer never ships without the check."""
    return Valid(entry_id, fields[wire.F_REGION].decode(), fields[wire.F_SNAPSHOT_ID].decode(),
                 fields[wire.F_TRIGGER].decode(), int(fields[wire.F_GENERATED_AT]),
                 fields[wire.F_PAYLOAD])


class _Contender:
    def __init__(self, redis: aioredis.Redis, keys: Keys, settings: Settings, name: str,
                 tracker: Tracker) -> None:
        self.redis, self.keys, self.s, self.name, self.tracker = (
            redis, keys, settings, name, tracker)
        # Set to stop between messages; a read in progress returns within block_ms.
        self.stop = asyncio.Event()

    async def _read(self, consumer: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
        reply: Any = await self.redis.xreadgroup(
            self.keys.group, consumer, {self.keys.stream: NEW},
            count=self.s.batch, block=self.s.block_ms)
        entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1] if reply else []
        return entries

    def _check(self, entry_id: bytes, fields: dict[bytes, bytes]) -> Valid | Poison:
        """The consumer's own check, with its settings: every contender pays the same."""
        return check_entry(entry_id, fields, max_bytes=self.s.max_bytes,
                           now_ms=int(time.time() * MS_PER_S), regions=self.s.regions,
                           retention_ms=self.s.retention_ms)


class Baseline(_Contender):
    """Upstream's persistence shape as a single stream reader (see the module docstring)."""

    async def run(self) -> None:
        """Until stopped: read a batch, then settle its messages one by one."""
        while not self.stop.is_set():
            for entry_id, fields in await self._read(self.name):
                if self.stop.is_set():
                    return  # the rest stays pending, like a killed upstream run
                await self.settle_one(entry_id, fields)

    async def settle_one(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        checked = self._check(entry_id, fields)
        if isinstance(checked, Valid):
            await self._persist(checked)
        # upstream has no dead-letter stream: an invalid message is just acknowledged
        await self.redis.xack(self.keys.stream, self.keys.group, entry_id)
        self.tracker.acked((entry_id,))

    async def _persist(self, v: Valid) -> None:
        k, s = self.keys, self.s
        bucket = dedup_bucket(v.generated_at, s.dedup_window_ms)
        # Round trip 1: the marker first (upstream's order, and its bug).
        fresh = await self.redis.set(k.dedup(v.region, v.trigger_reason, bucket),
                                     v.snapshot_id, ex=s.dedup_window_s, nx=True)
        if not fresh:
            return  # duplicate-bucket: skipped
        # Round trip 2: the data writes in one non-transactional pipeline.
        cutoff_ms = int(time.time() * MS_PER_S) - s.retention_ms
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(k.by_id(v.region, v.snapshot_id), v.payload, ex=s.retention_s)
        pipe.set(k.latest(v.region), v.snapshot_id, ex=s.retention_s)
        pipe.zadd(k.index(v.region), {v.snapshot_id: v.generated_at})
        pipe.zremrangebyscore(k.index(v.region), "-inf", f"({cutoff_ms}")
        await pipe.execute()


class _Workers(_Contender):
    """``settings.workers`` loops, each reading a batch and settling it before the next."""

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for i in range(self.s.workers):
                tg.create_task(self._loop(self.keys.consumer_name(self.name, i)))

    async def _loop(self, consumer: str) -> None:
        while not self.stop.is_set():
            entries = await self._read(consumer)
            if entries:
                await self._settle(entries)
                self.tracker.acked(entry_id for entry_id, _ in entries)

    async def _settle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        """Persist (or not) and acknowledge every entry of one batch."""
        raise NotImplementedError


class Batched(_Workers):
    """A hand-written batched consumer (XREADGROUP 200, one pipeline per batch, one script per
    message): each message checked, then ONE non-transactional pipeline per batch of one
    :data:`BATCHED_LUA` call per message (marker checked, by-id, index, ``latest`` if newer,
    marker last, XACK). The script is loaded before ``go`` (``bench.runner.prepare``)."""

    async def _settle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        k, s = self.keys, self.s
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, fields in entries:
            v = self._check(entry_id, fields)
            if not isinstance(v, Valid):
                pipe.xack(k.stream, k.group, entry_id)  # no dead-letter stream: just acked
                continue
            bucket = dedup_bucket(v.generated_at, s.dedup_window_ms)
            pipe.evalsha(BATCHED_SHA, 5, k.stream,
                         k.dedup(v.region, v.trigger_reason, bucket),
                         k.by_id(v.region, v.snapshot_id), k.index(v.region), k.latest(v.region),
                         k.group, entry_id, v.snapshot_id, v.generated_at, v.payload,
                         s.dedup_window_s, s.retention_s)
        await pipe.execute()


class Ceiling(_Workers):
    """``settings.workers`` loops of XREADGROUP + XACK: no decode, no writes."""

    async def _settle(self, entries: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        await self.redis.xack(self.keys.stream, self.keys.group,
                              *(entry_id for entry_id, _ in entries))
