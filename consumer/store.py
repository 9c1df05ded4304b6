"""Settling one batch: every persist and dead-letter call of the batch in ONE pipelined round
trip, each call atomic on the server (see ``persist.lua`` and ``dead_letter.lua``).

A persist call is one region's share of the batch, sent as ``MULTI; MSET <staging keys and
payloads>; EVALSHA persist ...; EXEC``: the payloads go to Redis as plain MSET arguments, never
through Lua, which would cost the server twice as much per message (``persist.lua`` says why)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, TryAgainError

from consumer import scripts
from consumer.dead_letters import MAX_DETAIL_BYTES, stored_fields
from consumer.message import Poison, Reason, Valid
from shared import failpoints
from shared.connection import ErrorKind, classify
from shared.keys import Keys, dedup_bucket
from shared.settings import Settings

PERSISTED, DUPLICATE, REDELIVERED, DEAD_LETTERED, FAILED, SETTLED_ELSEWHERE = (
    "persisted", "duplicate", "redelivered", "dead_lettered", "failed", "settled_elsewhere")
MAX_DELIVERIES_REASON = Reason.MAX_DELIVERIES
# Messages per persist call, whatever --batch is: a call's keys and arguments grow by three
# per message, and the script hands its acknowledgements to Lua's unpack(), which fails near
# 8,000 values (a batch of 8,000+ entries of one region failed after writing, every retry,
# until the stored snapshots were dead-lettered as max-deliveries). Calls of one batch still
# go out in one pipelined round trip.
MAX_MESSAGES_PER_CALL = 1000
_STATUS = {"p": PERSISTED, "d": DUPLICATE, "r": REDELIVERED}
# Refusals that say "the server, not this entry": retried without spending a delivery.
NOT_THE_ENTRYS_FAULT = frozenset({ErrorKind.TRANSIENT, ErrorKind.OOM})


@dataclass(frozen=True, slots=True)
class Outcome:
    entry_id: bytes
    region: str
    outcome: str
    error: str | None = None  # the failure, or the dead-letter reason
    deliveries: int = 0  # for a dead-lettered entry: how often it had been delivered
    detail: str = ""  # for a dead-lettered entry: what exactly was wrong
    # A failure no retry of this entry can fix: a missing permission, or the stream or the
    # dead-letter stream holding another type. The worker stops on it (entries stay pending).
    fatal: bool = False
    # A refusal for now (a slot migrating or moved, a failover, BUSY, Redis full): no fault of
    # the entry, so it spends none of its deliveries. Judged from the error itself: redis-py's
    # ASK and MOVED errors lose their code in their text.
    transient: bool = False
    kind: ErrorKind | None = None  # a failure's class (ErrorKind.OOM: Redis is full)

    @property
    def invalid(self) -> bool:
        """Dead-lettered because no retry could fix it (not for running out of retries)."""
        return self.outcome == DEAD_LETTERED and self.error != MAX_DELIVERIES_REASON


@dataclass(slots=True)
class _Call:
    script: scripts.Script
    keys: list[str]
    args: list[Any]
    members: Sequence[Valid | Poison]
    # persist calls: the staging keys and payloads, MSET in the same transaction as the script
    staged: list[Any] | None = None

    def commands(self) -> list[tuple[Any, ...]]:
        evalsha = ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)
        if self.staged is None:
            return [evalsha]
        return [("MULTI",), ("MSET", *self.staged), evalsha, ("EXEC",)]

    def result(self, replies: Sequence[Any]) -> Any:
        """The script's reply (or the error in its place) out of this call's replies."""
        if self.staged is None:
            return replies[0]
        executed = replies[-1]
        if isinstance(executed, list):
            # [MSET's reply, the script's]. A failed MSET needs no report of its own: the
            # script fails a message whose staged payload is missing.
            return executed[1]
        # EXECABORT: a command was refused when queued (out of memory, ...); nothing ran.
        refused = [r for r in replies[1:-1] if isinstance(r, Exception)]
        return refused[0] if refused else executed


@dataclass(slots=True)
class Settled:
    outcomes: list[Outcome] = field(default_factory=list)
    ack_errors: list[str] = field(default_factory=list)
    scripts_reloaded: bool = False  # Redis answered NOSCRIPT (restart, SCRIPT FLUSH, failover)


def _persist_call(keys: Keys, s: Settings, region: str, batch: list[Valid], ack: bool
                  ) -> _Call:
    k: list[str] = [keys.stream, keys.index(region), keys.latest(region)]
    a: list[Any] = [keys.group, "1" if ack else "0", s.dedup_window_s, s.retention_s,
                    s.retention_ms]
    staged: list[Any] = []
    window = s.dedup_window_ms
    for v in batch:
        staging_key = keys.incoming(region, v.entry_id)
        bucket = dedup_bucket(v.generated_at, window)
        k += (keys.dedup(region, v.trigger_reason, bucket), keys.by_id(region, v.snapshot_id),
              staging_key)
        a += (v.entry_id, v.snapshot_id, v.generated_at)
        staged += (staging_key, v.payload)
    return _Call(scripts.persist(), k, a, batch, staged)


def _dead_letter_call(keys: Keys, consumer: str, p: Poison) -> _Call:
    provenance = {
        b"dlq_reason": p.reason.encode(),
        b"dlq_error": p.detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES],
        b"dlq_original_id": p.entry_id,
        b"dlq_stream": keys.stream.encode(),
        b"dlq_group": keys.group.encode(),
        b"dlq_consumer": consumer.encode(),
        b"dlq_at_ms": str(int(time.time() * 1000)).encode(),
    }
    args: list[Any] = [keys.group, p.entry_id, *stored_fields(p.fields, provenance)]
    return _Call(scripts.dead_letter(), [keys.stream, keys.dlq, keys.dlq_ids], args, [p])


def plan(keys: Keys, s: Settings, consumer: str,
         valid: Sequence[Valid], poison: Sequence[Poison], ack: bool = True) -> list[_Call]:
    """One persist call per region present in the batch (one region's keys share a cluster
    slot) and per ``MAX_MESSAGES_PER_CALL`` of its messages, one dead-letter call per poison
    entry."""
    by_region: dict[str, list[Valid]] = defaultdict(list)
    for v in valid:
        by_region[v.region].append(v)
    calls = [_persist_call(keys, s, r, b[i:i + MAX_MESSAGES_PER_CALL], ack)
             for r, b in by_region.items() for i in range(0, len(b), MAX_MESSAGES_PER_CALL)]
    calls += [_dead_letter_call(keys, consumer, p) for p in poison]
    return calls


async def _send(redis: aioredis.Redis, calls: Sequence[_Call]) -> list[Any]:
    """Every call's commands in one pipeline; one result per call."""
    pipe = redis.pipeline(transaction=False)
    per_call = [c.commands() for c in calls]
    if failpoints.due("consumer.settle-in-flight") or (
            any(c.script.name == "dead_letter" for c in calls)
            and failpoints.due("consumer.dead-letter-in-flight")):
        await failpoints.die_after_sending(redis, [c for cs in per_call for c in cs])
    for commands in per_call:
        for command in commands:
            pipe.execute_command(*command)
    replies = await pipe.execute(raise_on_error=False)
    results, at = [], 0
    for call, commands in zip(calls, per_call, strict=True):
        results.append(call.result(replies[at:at + len(commands)]))
        at += len(commands)
    return results


async def settle(redis: aioredis.Redis, keys: Keys, s: Settings, consumer: str,
                 valid: Sequence[Valid], poison: Sequence[Poison], *, ack: bool = True
                 ) -> Settled:
    """Persist ``valid`` and dead-letter ``poison`` in one round trip; report each entry's fate.

    A failed persist leaves its entry pending (unacknowledged) for a later retry. With
    ``ack=False`` (re-driving history) nothing is acknowledged and nothing dead-lettered."""
    calls = plan(keys, s, consumer, valid, poison if ack else (), ack)
    if not calls:
        return Settled()
    results = await _send(redis, calls)
    refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if refused:
        for name in {calls[i].script.name for i in refused}:
            await redis.script_load(scripts.script(name).body)
        again = await _send(redis, [calls[i] for i in refused])
        for i, r in zip(refused, again, strict=True):
            results[i] = r
    settled = _interpret(calls, results)
    settled.scripts_reloaded = bool(refused)
    return settled


def _interpret(calls: Sequence[_Call], results: Sequence[Any]) -> Settled:
    settled = Settled()
    for call, result in zip(calls, results, strict=True):
        if call.script.name == "dead_letter":
            (p,) = call.members
            assert isinstance(p, Poison)
            if isinstance(result, RedisError):
                # The dead-letter stream itself refused it: it stays pending. A missing
                # permission or a wrong type there fails every dead letter alike.
                kind = classify(result)
                settled.outcomes.append(Outcome(
                    p.entry_id, p.region, FAILED, str(result),
                    fatal=kind in (ErrorKind.PERMANENT, ErrorKind.WRONGTYPE),
                    transient=kind in NOT_THE_ENTRYS_FAULT, kind=kind))
            elif int(result) > 0:
                settled.outcomes.append(Outcome(p.entry_id, p.region, DEAD_LETTERED, p.reason,
                                                int(result), p.detail))
            else:  # no longer pending: another consumer settled it (0); or dead-lettered
                # before, read again after its group was recreated, now acknowledged (-1):
                # nothing to count twice
                settled.outcomes.append(Outcome(p.entry_id, p.region, SETTLED_ELSEWHERE))
            continue
        if isinstance(result, RedisError):
            kind = classify(result)
            for v in call.members:
                settled.outcomes.append(Outcome(
                    v.entry_id, v.region, FAILED, _describe(result),
                    fatal=kind is ErrorKind.PERMANENT, transient=kind in NOT_THE_ENTRYS_FAULT,
                    kind=kind))
            continue
        statuses = [x.decode() if isinstance(x, bytes) else str(x) for x in result]
        for v, status in zip(call.members, statuses, strict=False):
            assert isinstance(v, Valid)
            if status[0] == "E":
                kind = classify(status[1:])
                settled.outcomes.append(Outcome(
                    v.entry_id, v.region, FAILED, status[1:],
                    fatal=kind is ErrorKind.PERMANENT, transient=kind in NOT_THE_ENTRYS_FAULT,
                    kind=kind))
            else:
                settled.outcomes.append(Outcome(v.entry_id, v.region, _STATUS[status]))
        settled.ack_errors += [x[1:] for x in statuses[len(call.members):]]
    return settled


def _describe(error: RedisError) -> str:
    """The error as Redis said it: redis-py drops the code from ASK and MOVED replies."""
    text = str(error)
    for code, cls in (("ASK", AskError), ("MOVED", MovedError), ("TRYAGAIN", TryAgainError)):
        if isinstance(error, cls) and not text.startswith(code):
            return f"{code} {text}"
    return text
