"""Every command, script call and MULTI/EXEC the project sends keeps its keys in one cluster
slot, in the region layout: recorded on the client side (every command redis-py packs), keyed
by the server itself (``COMMAND GETKEYS``) and slotted with ``redis.crc.key_slot``. This runs on
a single server, so a cross-slot regression fails here even where no cluster test exercises
that path (the cluster refuses only what a test happens to send).

With ``--shard-by none`` (refused on a cluster) the one stream and its dead-letter stream are
outside any region's slot; every call still touches at most ONE region's slot besides them,
which is what makes the region layout possible at all."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import ResponseError

from consumer import ops
from producer.service import Producer
from shared.keys import Keys
from shared.schema import decode
from shared.settings import Settings, SettingsError
from tests.helpers import deployed, drain, load_payloads, publish

SCRIPTS = {"persist", "dead_letter", "replay_dlq", "forget_consumer"}


@dataclass
class Recorder:
    """What redis-py packed, in units the server runs as one: a command, or MULTI ... EXEC."""

    units: list[list[tuple[bytes, ...]]] = field(default_factory=list)
    recording: bool = True
    _in_pipeline: bool = False

    def add(self, commands: list[tuple[bytes, ...]]) -> None:
        if not self.recording:
            return
        unit: list[tuple[bytes, ...]] | None = None
        for c in commands:
            name = c[0].upper()
            if name == b"MULTI":
                unit = []
            elif name == b"EXEC":
                if unit:
                    self.units.append(unit)
                unit = None
            elif unit is not None:
                unit.append(c)
            else:
                self.units.append([c])


def _args(args: tuple[Any, ...]) -> tuple[bytes, ...]:
    """Arguments as bytes, a "XINFO STREAM"-style first argument split as redis-py sends it."""
    first = args[0] if isinstance(args[0], bytes) else str(args[0]).encode()
    out = [*first.split(b" ")]
    for a in args[1:]:
        out.append(a if isinstance(a, bytes) else str(a).encode())
    return tuple(out)


@pytest.fixture
def recorder(client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    """Records what every connection of ``client``'s class packs (the project's own class:
    shared.connection packs with hiredis)."""
    rec = Recorder()
    cls: type[AbstractConnection] = client.connection_pool.connection_class
    pack_command, pack_commands = cls.pack_command, cls.pack_commands

    def one(self: AbstractConnection, *args: Any) -> Any:
        if not rec._in_pipeline:
            rec.add([_args(args)])
        return pack_command(self, *args)

    def many(self: AbstractConnection, commands: Any) -> Any:
        commands = [tuple(c) for c in commands]
        rec.add([_args(c) for c in commands])
        rec._in_pipeline = True
        try:
            return pack_commands(self, commands)
        finally:
            rec._in_pipeline = False

    monkeypatch.setattr(cls, "pack_command", one)
    monkeypatch.setattr(cls, "pack_commands", many)
    yield rec


async def keys_of(client: aioredis.Redis, command: tuple[bytes, ...]) -> list[bytes]:
    """The keys of ``command``, as the server finds them."""
    try:
        found: Any = await client.command_getkeys(*command)
    except ResponseError:  # no key arguments (PING, INFO, TIME, SCRIPT LOAD, ...)
        return []
    return [k if isinstance(k, bytes) else str(k).encode() for k in found]


def script_name(command: tuple[bytes, ...]) -> str | None:
    from consumer import scripts

    if command[0].upper() != b"EVALSHA":
        return None
    return next((n for n in scripts.ALL if scripts.script(n).sha.encode() == command[1]),
                "EVALSHA")


async def run_everything(client: aioredis.Redis, s: Settings) -> None:
    """Every path that sends a script or a transaction: publish (MULTI/EXEC per shard), trim,
    consume with poison and a stray region (persist, dead-letter), reclaim and forget a dead
    consumer, replay dead letters, pending entries and a range, and the operator reads."""
    deployment = deployed(client, s)
    await publish(client, s, [decode(p) for p in load_payloads(s, 24, seed=5)])
    shard = deployment.shards[0]
    await client.xadd(shard.keys.stream, {b"schema": b"1", b"payload": b"{not json"})
    # a consumer that takes entries and dies: reclaimed, then forgotten (consumer_timeout_s)
    await client.xreadgroup(s.group, "ghost", {shard.keys.stream: ">"}, count=2)
    consumer = await drain(s)
    assert consumer.totals()["persisted"] == 24
    moved = await ops.replay_dlq(deployment, s.keys)
    assert len(moved) == 1
    await client.xreadgroup(s.group, "ghost2", {shard.keys.stream: ">"}, count=1)
    await ops.replay_pending(deployment, s.keys, s, consumer=None, min_idle_ms=0,
                             dry_run=False, as_name="replayer")
    done = await ops.replay_range(deployment, s.keys, s, start="-", end="+", dry_run=False)
    assert done.outcomes.get("redelivered", 0) == 24
    await ops.pending_report(deployment, s.keys)
    producer = Producer(s)
    await producer.run(deployment, once=True)  # a cycle, then the trim


async def slots_of_units(client: aioredis.Redis, rec: Recorder, s: Settings
                         ) -> list[tuple[str, set[int]]]:
    """(what the unit was, the slots of its keys) for every unit touching this test's keys."""
    mine = (s.stream.encode(), s.prefix.encode())
    rec.recording = False  # not the COMMAND GETKEYS below
    out = []
    for unit in rec.units:
        keys: list[bytes] = []
        for command in unit:
            keys += await keys_of(client, command)
        if not any(k.startswith(mine) for k in keys):
            continue
        names = [script_name(c) or c[0].decode().upper() for c in unit]
        label = ("MULTI " if len(unit) > 1 else "") + " ".join(dict.fromkeys(names))
        out.append((label, {key_slot(k) for k in keys}))
    return out


@pytest.mark.parametrize("layout", ["region", "none"])
async def test_every_call_keeps_its_keys_in_one_slot(client: aioredis.Redis, settings: Settings,
                                                     layout: str, recorder: Recorder) -> None:
    s = dataclasses.replace(settings, shard_by=layout, claim_interval_ms=50, min_idle_ms=1,
                            consumer_timeout_s=0.001)
    await run_everything(client, s)
    units = await slots_of_units(client, recorder, s)
    seen = {label for label, _ in units}
    # The recording saw every script and the producer's transactions: a check over nothing
    # would pass for nothing.
    for name in SCRIPTS:
        assert any(name in label for label in seen), (name, sorted(seen))
    assert any(label.startswith("MULTI") and "XADD" in label for label in seen), sorted(seen)
    assert any(label.startswith("MULTI") and "persist" in label for label in seen)
    keys = s.keys
    if layout == "region":
        crossing = [(label, slots) for label, slots in units if len(slots) > 1]
        assert crossing == []
    else:
        outside = {key_slot(keys.stream.encode()), key_slot(keys.dlq.encode())}
        for label, slots in units:
            assert len(slots - outside) <= 1, (label, slots)


@pytest.mark.parametrize("name", ["stream", "prefix"])
def test_a_brace_in_a_key_name_is_refused(name: str) -> None:
    """A ``{`` in --stream or --prefix would become the hash tag of every key built from it,
    splitting a region's data from its shard stream: refused, naming the flag."""
    with pytest.raises(SettingsError) as caught:
        Settings.load({name: "a{b}c"}, env={})
    assert caught.value.problems[0].startswith(f"--{name}: must not contain")


def test_region_keys_share_the_shard_slot() -> None:
    """Every key of a region (its data, its shard stream and DLQ, a staging key) hashes to
    the region's slot."""
    k = Keys(prefix="intelligence", stream="regionstream:snapshots", group="g")
    for region in ("mena", "europe"):
        shard = k.shard(region)
        keys = [shard.stream, shard.dlq, k.index(region), k.latest(region),
                k.by_id(region, "snap"), k.dedup(region, "scheduled", 1),
                k.incoming(region, "1700000000000-0")]
        assert len({key_slot(x.encode()) for x in keys}) == 1, keys


async def test_the_check_sees_a_transaction_across_slots(client: aioredis.Redis,
                                                         settings: Settings) -> None:
    """The checker itself: a MULTI/EXEC touching two regions' keys is one unit of two slots,
    and a script call's keys are its declared keys."""
    rec, k = Recorder(), settings.keys
    rec.add([(b"MULTI",), (b"SET", k.latest("mena").encode(), b"1"),
             (b"SET", k.latest("europe").encode(), b"1"), (b"EXEC",)])
    rec.add([(b"EVALSHA", b"0" * 40, b"2", k.index("mena").encode(), k.shard("mena").stream.encode(),
              b"not-a-key")])
    (multi, script) = await slots_of_units(client, rec, settings)
    assert multi[0] == "MULTI SET" and len(multi[1]) == 2
    assert script[1] == {key_slot(k.index("mena").encode())}
