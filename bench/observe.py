"""Watching Redis directly (never through the delay proxy): group progress, blocked readers,
the server's CPU time, and MONITOR for server-side timestamps of individual commands."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from harness import wait
from shared.keys import Keys

POLL_S = 0.01  # condition polls: 10 ms keeps the "drained" time within 1% of a 1 s run
MONITOR_TIMEOUT_S = 10.0
MONITOR_MAX_COMMANDS = 100_000
MONITOR_END = "bench-monitor-end"


@dataclass(frozen=True)
class Progress:
    acked: int  # delivered and acknowledged
    outstanding: int  # undelivered + pending

    @property
    def drained(self) -> bool:
        return self.outstanding == 0


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


async def progress(redis: aioredis.Redis, keys: Keys) -> Progress:
    """One XINFO GROUPS: ``entries-read`` (Redis 7) minus pending is what the group acked."""
    for g in await redis.xinfo_groups(keys.stream):
        if _s(g["name"]) == keys.group:
            read, pending = int(g.get("entries-read") or 0), int(g["pending"])
            lag = int(g["lag"]) if g.get("lag") is not None else 0
            return Progress(read - pending, lag + pending)
    raise LookupError(f"no group {keys.group} on {keys.stream}")


async def wait_drained(redis: aioredis.Redis, keys: Keys, timeout_s: float,
                       on_progress: Callable[[int], None] | None = None) -> bool:
    """Poll until the group has nothing undelivered or pending; False on timeout."""

    async def undrained() -> str | None:
        p = await progress(redis, keys)
        if on_progress is not None:
            on_progress(p.acked)
        return None if p.drained else "not drained"

    return await drained_within(undrained, timeout_s)


async def drained_within(undrained: wait.AsyncMissing, timeout_s: float) -> bool:
    """Whether ``undrained`` came to say nothing within ``timeout_s`` (a contender that does
    not drain in time is a result, not an error)."""
    try:
        await wait.until_async(undrained, timeout_s, "drained", poll_s=POLL_S)
    except wait.WaitTimeout:
        return False
    return True


async def blocked_readers(redis: aioredis.Redis) -> int:
    """Clients blocked in XREADGROUP right now (CLIENT LIST flag ``b``)."""
    n = 0
    for c in await redis.client_list():
        if c.get("cmd") == "xreadgroup" and "b" in c.get("flags", ""):
            n += 1
    return n


async def wait_blocked(redis: aioredis.Redis, count: int, timeout_s: float) -> None:
    async def unblocked() -> str | None:
        blocked = await blocked_readers(redis)
        return None if blocked >= count else f"{blocked} of {count} readers blocked"

    await wait.until_async(unblocked, timeout_s, "the readers blocked", poll_s=POLL_S)


async def server_cpu_s(redis: aioredis.Redis) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


@dataclass(frozen=True)
class Command:
    time_s: float  # the server's clock, as entry ids are
    name: str  # upper case
    key: str
    from_script: bool


class MonitorLog:
    """MONITOR on its own connection, collected in the background until :meth:`stop`.

    Only for a handful of commands (scenario 1): MONITOR slows the server down under load.
    Stopping sends a marker command and reads up to it, so no read is ever cut half-way."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.commands: list[Command] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self) -> MonitorLog:
        self._task = asyncio.create_task(self._collect())
        await asyncio.wait_for(self._ready.wait(), MONITOR_TIMEOUT_S)
        return self

    async def stop(self) -> list[Command]:
        await self.redis.echo(MONITOR_END)
        if self._task is not None:
            await asyncio.wait_for(self._task, MONITOR_TIMEOUT_S)
        return self.commands

    async def _collect(self) -> None:
        async with self.redis.monitor() as m:
            self._ready.set()
            for _ in range(MONITOR_MAX_COMMANDS):
                cmd = _command(await m.next_command())
                if cmd.name == "ECHO" and cmd.key == MONITOR_END:
                    return
                self.commands.append(cmd)


def _command(info: Any) -> Command:
    words = str(info["command"]).split(" ", 2)
    return Command(float(info["time"]), words[0].upper(), words[1] if len(words) > 1 else "",
                   info["client_type"] == "lua")
