"""Settling entries: check -> plan -> send -> interpret -> delivery budget -> dead letter, for
the workers, the reclaimer and ``replay`` alike, each entry's fate returned as a typed
``Outcome``.

All persist and dead-letter calls of a batch go out in ONE pipelined round trip, each call
atomic on the server (see ``persist.lua`` and ``dead_letter.lua``). A persist call is one
region's share of the batch, sent as ``MULTI; MSET <staging keys and payloads>; EVALSHA persist
...; EXEC``: the payloads go to Redis as plain MSET arguments, never through Lua, which would
cost the server twice as much per message (``persist.lua`` says why)."""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, Protocol

from redis.exceptions import AskError, MovedError, NoScriptError, RedisError, TryAgainError

from consumer import dead_letters, scripts
from consumer.message import Poison, Reason, Valid, check_entry
from consumer.shard_group import Command, Entry, ShardGroup
from shared.connection import ErrorKind, PermanentError, classify
from shared.failpoints import failpoint
from shared.ids import CLOCK_AHEAD_S, id_seconds
from shared.keys import Keys
from shared.metrics import ConsumerMetrics, observe_many
from shared.settings import Settings

log = logging.getLogger("regionstream.consumer")


class Fate(StrEnum):
    """What became of an entry (the values are the ``outcome`` metric labels)."""

    PERSISTED = "persisted"
    DUPLICATE = "duplicate"  # its region, trigger and dedup bucket already hold a snapshot
    REDELIVERED = "redelivered"  # this very entry was stored before (a retry, a replay)
    DEAD_LETTERED = "dead_lettered"
    FAILED = "failed"  # stays pending, for another attempt
    SETTLED_ELSEWHERE = "settled_elsewhere"  # another consumer settled it meanwhile
    INVALID = "invalid"  # re-driving history (no ack): invalid, left where it is


# The members as module constants: a class attribute of an Enum costs ~110 ns a lookup on
# Python 3.11, several per message on the hot path.
PERSISTED, DUPLICATE, REDELIVERED, DEAD_LETTERED, FAILED, SETTLED_ELSEWHERE, INVALID = Fate


# Messages per persist call, whatever --batch is: a call's keys and arguments grow by three
# per message, and the script hands its acknowledgements to Lua's unpack(), which fails near
# 8,000 values (a batch of 8,000+ entries of one region failed after writing, every retry,
# until the stored snapshots were dead-lettered as max-deliveries). Calls of one batch still
# go out in one pipelined round trip.
MAX_MESSAGES_PER_CALL = 1000
_STATUS = {b"p": PERSISTED, b"d": DUPLICATE, b"r": REDELIVERED,
           "p": PERSISTED, "d": DUPLICATE, "r": REDELIVERED}  # bytes, or str if decoded
# Refusals that say "the server, not this entry" (a slot moving, a failover, Redis full, its
# script cache flushed again after the reload): retried without spending a delivery.
NOT_THE_ENTRYS_FAULT = frozenset({ErrorKind.TRANSIENT, ErrorKind.OOM, ErrorKind.NOSCRIPT})
# Failures no retry of the entry can fix: the worker stops on them (entries stay pending).
FATAL_PERSIST = frozenset({ErrorKind.PERMANENT})
FATAL_DEAD_LETTER = frozenset({ErrorKind.PERMANENT, ErrorKind.WRONGTYPE})


class Outcome(NamedTuple):
    """What became of one entry. (A named tuple: one is made per message, and a frozen
    dataclass of these nine fields cost 0.9 µs to make, this 0.26.)"""

    entry_id: bytes
    region: str
    fate: Fate
    kind: ErrorKind | None = None  # a failure's class
    error: str = ""  # a failure as Redis said it
    reason: Reason | None = None  # why it was dead-lettered
    detail: str = ""  # for a dead-lettered entry: what exactly was wrong
    deliveries: int = 0  # for a dead-lettered entry: how often it had been delivered
    # A failure no retry of this entry can fix: a missing permission, or the stream or the
    # dead-letter stream holding another type. The worker stops on it (entries stay pending).
    fatal: bool = False

    @property
    def transient(self) -> bool:
        """A refusal for now (a slot migrating or moved, a failover, BUSY, Redis full): no
        fault of the entry, so it spends none of its deliveries. Judged from the error
        itself: redis-py's ASK and MOVED errors lose their code in their text."""
        return self.kind in NOT_THE_ENTRYS_FAULT

    @property
    def invalid(self) -> bool:
        """Dead-lettered because no retry could fix it (not for running out of retries)."""
        return self.fate is DEAD_LETTERED and self.reason is not Reason.MAX_DELIVERIES


def failed(entry_id: bytes, region: str, error: RedisError | str, fatal_kinds: frozenset[ErrorKind]
           ) -> Outcome:
    kind = classify(error)
    text = _describe(error) if isinstance(error, RedisError) else error
    return Outcome(entry_id, region, FAILED, kind, text, fatal=kind in fatal_kinds)


# Redis's words when a script runs a command the ACL user lacks: they do not name it.
SCRIPT_REFUSED = "can't run this command or subcommand"
SCRIPT_REFUSED_HINT = (" (a command one of regionstream's scripts runs: the consumer's user "
                       "needs every command `regionstream acl` grants it; this release's "
                       "persist script added +mget and +zmscore)")


@dataclass(slots=True)
class Settled:
    """One batch settled: each entry's outcome, and what happened around them."""

    outcomes: list[Outcome] = field(default_factory=list)
    read: int = 0  # entries handed in (deleted ones included)
    gone: int = 0  # deleted or trimmed while pending: acknowledged, nothing to settle
    ack_errors: list[str] = field(default_factory=list)
    scripts_reloaded: bool = False  # Redis answered NOSCRIPT (restart, SCRIPT FLUSH, failover)

    def tally(self) -> Counter[Fate]:
        return Counter(o.fate for o in self.outcomes)

    @property
    def failed(self) -> int:
        """Entries still pending after this batch: retried after a pause."""
        return sum(1 for o in self.outcomes if o.fate is FAILED)


class Check(Protocol):
    def __call__(self, entry_id: bytes, fields: dict[bytes, bytes], *, max_bytes: int,
                 now_ms: int, regions: Sequence[str], retention_ms: int | None
                 ) -> Valid | Poison: ...


@dataclass(slots=True)
class _Call:
    script: scripts.Script
    keys: list[str]
    args: list[Any]
    members: Sequence[Valid | Poison]
    # persist calls: the staging keys and payloads, MSET in the same transaction as the script
    staged: list[Any] | None = None

    def commands(self) -> list[Command]:
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

    def staging_left(self, replies: Sequence[Any]) -> list[Any]:
        """The staging keys this call's replies say are left: the MSET ran, the script did
        not (NOSCRIPT, or an error that stopped it), so nothing deleted them."""
        if self.staged is None:
            return []
        executed = replies[-1]
        if isinstance(executed, list) and isinstance(executed[1], Exception):
            return self.staged[::2]
        return []


def _persist_call(keys: Keys, s: Settings, region: str, batch: list[Valid], ack: bool
                  ) -> _Call:
    names = keys.of_region(region)
    k: list[Any] = [keys.stream, names.index, names.latest]
    a: list[Any] = [keys.group, "1" if ack else "0", s.dedup_window_ms, s.retention_s,
                    s.retention_ms]
    staged: list[Any] = []
    window = s.dedup_window_ms
    dedup, by_id, incoming = names.dedup, names.by_id, names.incoming
    for v in batch:
        staging_key = incoming + v.entry_id
        k += (f"{dedup}{v.trigger_reason}:{v.generated_at // window}", by_id + v.snapshot_id,
              staging_key)
        a += (v.entry_id, v.snapshot_id, v.generated_at)
        staged += (staging_key, v.payload)
    return _Call(scripts.persist(), k, a, batch, staged)


def _dead_letter_call(keys: Keys, consumer: str, p: Poison, at_ms: int) -> _Call:
    args: list[Any] = [keys.group, p.entry_id, dead_letters.DELIVERIES_FIELD,
                       *dead_letters.stored_fields(p, keys, consumer, at_ms)]
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
    at_ms = int(time.time() * 1000)
    calls += [_dead_letter_call(keys, consumer, p, at_ms) for p in poison]
    return calls


class Settler:
    """Settles entries of one shard's group for the consumer ``consumer``: each is checked
    (``check_entry``), persisted or dead-lettered in one round trip, and a failed one either
    stays pending for another attempt or, once it has used up ``--max-deliveries``, is
    dead-lettered (the budget). Counts every fate in ``metrics`` and logs what an operator
    must see. ``check`` and ``on_settled`` are seams for the benchmarks (the unchecked
    diagnostic, counting acknowledgements) and tests; production uses the defaults."""

    def __init__(self, group: ShardGroup, settings: Settings, consumer: str,
                 metrics: ConsumerMetrics, *, clock: Callable[[], float] = time.time,
                 check: Check = check_entry,
                 on_settled: Callable[[Settled], None] | None = None) -> None:
        self.group, self.keys, self.settings, self.consumer = group, group.keys, settings, consumer
        self.metrics, self.clock, self.check, self.on_settled = metrics, clock, check, on_settled
        self.regions = group.regions or settings.regions
        # This shard's failure counters (label shard: its region, or "all" for one stream).
        self.failure = metrics.failure[group.label]
        self.full_since: float | None = None  # when Redis began refusing writes (OOM)
        self.said_ahead = False  # an entry id ahead of the clock was reported

    async def settle(self, entries: Sequence[Entry]) -> Settled:
        """Check, persist and acknowledge or dead-letter ``entries``, already read; never
        abandoned half-way. (Re-driving history, which acknowledges nothing, uses ``checked``
        and ``send`` alone: ``consumer.ops.replay_range``.)"""
        if not entries:
            return Settled()
        failpoint("consumer.after-read")
        started = time.perf_counter()
        valid, poison, gone = self.checked(entries)
        if gone:
            await self.group.ack(gone)
            self.count_lost(len(gone))
        sent = time.perf_counter()
        settled = await self.send(valid, poison)
        self.metrics.rtt["settle"].observe(time.perf_counter() - sent)  # the round trip alone
        failpoint("consumer.after-settle")
        settled.read, settled.gone = len(entries), len(gone)
        self._stop_on_fatal(settled.outcomes)
        if settled.scripts_reloaded:
            self.failure["noscript"].inc()
            log.warning("%s: Redis had lost our scripts; loaded them again", self.consumer)
        await self._later(settled, len(entries))
        await self._spend_budget(settled, entries)
        self._record(settled)
        self.metrics.batch_size.observe(len(entries))
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        if self.on_settled is not None:
            self.on_settled(settled)
        return settled

    def checked(self, entries: Sequence[Entry]
                ) -> tuple[list[Valid], list[Poison], list[bytes]]:
        """``entries`` sorted by the check: valid, poison, and the ids of deleted ones."""
        now_ms = int(self.clock() * 1000)
        s = self.settings
        valid: list[Valid] = []
        poison: list[Poison] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            if fields is None:  # deleted or trimmed while pending: nothing left to process
                gone.append(entry_id)
                continue
            checked = self.check(entry_id, fields, max_bytes=s.max_bytes, now_ms=now_ms,
                                 regions=self.regions, retention_ms=s.retention_ms)
            if isinstance(checked, Valid):
                valid.append(checked)
            else:
                poison.append(checked)
        return valid, poison, gone

    def count_lost(self, n: int) -> None:
        """``n`` pending entries were found deleted from the stream (XDEL, a trim)."""
        self.metrics.lost_trimmed.inc(n)
        log.warning("%s: %d pending entries were deleted from the stream before processing",
                    self.consumer, n)

    async def send(self, valid: Sequence[Valid], poison: Sequence[Poison], ack: bool = True
                   ) -> Settled:
        """Persist ``valid`` and dead-letter ``poison`` (checked already): plan, send in one
        round trip (again for the calls refused NOSCRIPT, after loading the scripts),
        interpret. A failed persist leaves its entry pending; nothing is counted or logged
        here (``settle`` does)."""
        calls = plan(self.keys, self.settings, self.consumer, valid, poison, ack)
        if not calls:
            return Settled()
        left: list[Any] = []
        results = await self._round_trip(calls, left)
        refused = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if refused:
            await self.group.load_scripts({calls[i].script.name for i in refused})
            again = await self._round_trip([calls[i] for i in refused], left)
            for i, r in zip(refused, again, strict=True):
                results[i] = r
        if left:
            await self._delete_staging(left)
        settled = _interpret(calls, results)
        settled.scripts_reloaded = bool(refused)
        return settled

    async def _round_trip(self, calls: Sequence[_Call], left: list[Any]) -> list[Any]:
        """The calls' results; the staging keys their MSETs left behind added to ``left``."""
        replies = await self.group.send(
            [c.commands() for c in calls],
            dead_letters=any(c.script.name == "dead_letter" for c in calls))
        for c, r in zip(calls, replies, strict=True):
            left += c.staging_left(r)
        return [c.result(r) for c, r in zip(calls, replies, strict=True)]

    async def _delete_staging(self, keys: list[Any]) -> None:
        """A script that did not run left its call's staging keys (the MSET before it ran):
        deleted, or an entry dead-lettered meanwhile would leave its payload there for good. A
        key its retry staged again and renamed since is gone already (DEL of it does nothing).
        Best effort: a key this fails to delete is deleted by the entry's next persist."""
        try:
            await self.group.delete(keys)
        except RedisError as exc:
            log.warning("%s: could not delete %d staging keys a failed persist left (%s)",
                        self.consumer, len(keys), exc)

    def _stop_on_fatal(self, outcomes: list[Outcome]) -> None:
        """A failure no retry fixes (a missing permission, the dead-letter stream of the wrong
        type) stops the worker: retrying would only burn delivery counts and fill the log.
        The entries stay pending, to be settled once an operator fixed the cause."""
        for o in outcomes:
            if o.fatal:
                hint = SCRIPT_REFUSED_HINT if SCRIPT_REFUSED in o.error else ""
                raise PermanentError(f"settling entry {o.entry_id.decode()} ({o.region})",
                                     o.error + hint)

    async def _later(self, settled: Settled, read: int) -> None:
        """A refusal that says "not now" (a slot migrating: ASK, TRYAGAIN; MOVED; a failover;
        BUSY; Redis full) is no fault of the entry: it must not spend the entry's deliveries,
        or a long reshard would dead-letter valid snapshots. It stays pending and is retried
        after the slot map is read again."""
        later = [o for o in settled.outcomes if o.fate is FAILED and o.transient]
        full = [o for o in later if o.kind is ErrorKind.OOM]
        later = [o for o in later if o.kind is not ErrorKind.OOM]
        self._note_full(full, read)
        if later:
            self.failure["transient"].inc(len(later))
            log.warning("%s: Redis refused to persist %d entries for now (%s); they stay "
                        "pending", self.consumer, len(later), later[0].error)
            await self.group.note_error(later[0].error)

    def _note_full(self, full: list[Outcome], read: int) -> None:
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
                          "memory is freed (%s)", self.consumer, len(full), full[0].error)
        elif read and self.full_since is not None:
            log.warning("%s: Redis accepts writes again after %.1f s out of memory",
                        self.consumer, time.monotonic() - self.full_since)
            self.full_since = None

    async def _spend_budget(self, settled: Settled, entries: Sequence[Entry]) -> None:
        """Dead-letter the failed entries that used up their deliveries; the rest stay pending
        for another attempt. A message failing every attempt thus ends in the dead-letter
        stream after exactly ``max_deliveries`` deliveries, instead of looping forever."""
        failed_ = [o for o in settled.outcomes if o.fate is FAILED and not o.transient]
        if not failed_:
            return
        self.failure["persist"].inc(len(failed_))
        delivered = await self.group.deliveries(self.consumer, [o.entry_id for o in failed_])
        fields = {i: f for i, f in entries if f is not None}
        exhausted = [Poison(o.entry_id, fields[o.entry_id], Reason.MAX_DELIVERIES, o.error)
                     for o in failed_
                     if delivered.get(o.entry_id, 0) >= self.settings.max_deliveries]
        if not exhausted:
            return
        moved = [o for o in (await self.send((), exhausted, True)).outcomes
                 if o.fate is not FAILED]
        gone = {o.entry_id for o in moved}
        settled.outcomes = [o for o in settled.outcomes
                            if o.fate is not FAILED or o.entry_id not in gone] + moved

    def _record(self, settled: Settled) -> None:
        """Count each entry's fate in the metrics. Counters are bumped once per (region,
        outcome) of the batch, not once per entry."""
        now = self.clock()
        by_label: dict[tuple[str, str], int] = {}
        latencies: list[float] = []
        ahead: list[bytes] = []
        for o in settled.outcomes:
            if o.fate is SETTLED_ELSEWHERE:
                continue
            if o.fate is FAILED:
                if not o.transient:  # those are said once per batch (_later)
                    log.error("%s: persisting %s (%s) failed: %s", self.consumer,
                              o.entry_id.decode(), o.region, o.error)
                continue
            label: tuple[str, str] = (o.region, o.fate)  # a str: the metric label
            by_label[label] = by_label.get(label, 0) + 1
            if o.fate is DEAD_LETTERED:
                if o.invalid:
                    label = (o.region, "invalid")
                    by_label[label] = by_label.get(label, 0) + 1
                log.warning("%s: entry %s (%s) dead-lettered after %d deliveries: %s: %s",
                            self.consumer, o.entry_id.decode(), o.region, o.deliveries,
                            o.reason, o.detail)
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
            log.error("%s: XACK failed: %s", self.consumer, err)

    def _note_ahead(self, ids: list[bytes], now: float) -> None:
        """Entries whose id is ahead of the clock (an outside ``XADD`` with an explicit id, and
        every auto-id after it, which Redis keeps increasing from there): their latency would
        read as 0 and drag the latency figures down, so they are left out of them, counted
        (``regionstream_ids_ahead_of_clock_total``) and said once per settler."""
        if not ids:
            return
        self.metrics.ids_ahead.inc(len(ids))
        if not self.said_ahead:
            self.said_ahead = True
            log.error("%s: entry %s has an id %.0f s ahead of this clock: an outside XADD with "
                      "an explicit id? Every later entry of the stream inherits it (latency "
                      "figures leave them out; see docs/operations.md)", self.consumer,
                      ids[0].decode("ascii", "replace"), id_seconds(ids[0]) - now)


def _interpret(calls: Sequence[_Call], results: Sequence[Any]) -> Settled:
    settled = Settled()
    for call, result in zip(calls, results, strict=True):
        if call.script.name == "dead_letter":
            (p,) = call.members
            assert isinstance(p, Poison)
            if isinstance(result, RedisError):
                # The dead-letter stream itself refused it: it stays pending. A missing
                # permission or a wrong type there fails every dead letter alike.
                settled.outcomes.append(failed(p.entry_id, p.region, result, FATAL_DEAD_LETTER))
            elif int(result) > 0:
                settled.outcomes.append(Outcome(p.entry_id, p.region, DEAD_LETTERED,
                                                reason=p.reason, detail=p.detail,
                                                deliveries=int(result)))
            else:  # no longer pending: another consumer settled it (0); or dead-lettered
                # before, read again after its group was recreated, now acknowledged (-1):
                # nothing to count twice
                settled.outcomes.append(Outcome(p.entry_id, p.region, SETTLED_ELSEWHERE))
            continue
        if isinstance(result, RedisError):
            settled.outcomes += [failed(v.entry_id, v.region, result, FATAL_PERSIST)
                                 for v in call.members]
            continue
        outcomes = settled.outcomes
        for v, status in zip(call.members, result, strict=False):
            assert isinstance(v, Valid)
            if (fate := _STATUS.get(status)) is not None:
                outcomes.append(Outcome(v.entry_id, v.region, fate))
            else:  # b"E<error>"
                outcomes.append(failed(v.entry_id, v.region, _text(status)[1:], FATAL_PERSIST))
        settled.ack_errors += [_text(x)[1:] for x in result[len(call.members):]]
    return settled


def _text(status: bytes | str) -> str:
    return status.decode("utf-8", "replace") if isinstance(status, bytes) else str(status)


def _describe(error: RedisError) -> str:
    """The error as Redis said it: redis-py drops the code from ASK and MOVED replies."""
    text = str(error)
    for code, cls in (("ASK", AskError), ("MOVED", MovedError), ("TRYAGAIN", TryAgainError)):
        if isinstance(error, cls) and not text.startswith(code):
            return f"{code} {text}"
    return text
