"""Fail points: named places where a process can be made to SIGKILL itself, for crash tests.

``REGIONSTREAM_FAILPOINT=name`` (or ``name:N``, to fire on the N-th time the point is reached;
several separated by commas) arms them; unset, ``failpoint()`` is one dict lookup that finds
nothing. SIGKILL and not an exception: a crash runs no ``finally``, no graceful stop, no flush,
which is exactly what the crash-safety claims must survive.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable, Mapping
from typing import Any

ENV = "REGIONSTREAM_FAILPOINT"

# Every point, where it is, and what a crash there leaves behind.
POINTS: dict[str, str] = {
    "consumer.after-read": "entries read (pending under this consumer), nothing settled",
    "consumer.settle-in-flight": "a batch's persist/dead-letter round trip sent, reply unread",
    "consumer.dead-letter-in-flight": "as settle-in-flight, for a batch with a dead letter",
    "consumer.after-settle": "a batch persisted and acked on Redis, not yet counted here",
    "reclaim.after-claim": "a dead consumer's entries claimed by the reclaimer, not settled",
    "replay.dlq-moved": "replay --dlq moved one dead letter back, more to go",
    "replay.pending-claimed": "replay --pending claimed entries, not settled",
    "producer.publish-in-flight": "a cycle's MULTI/EXEC sent, reply unread",
    "producer.after-publish": "a cycle published, not yet counted or trimmed",
}


class FailpointError(ValueError):
    pass


def parse(spec: str) -> dict[str, int]:
    """``"a,b:3"`` -> ``{"a": 1, "b": 3}``; unknown names and bad counts raise."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        if name not in POINTS:
            raise FailpointError(f"{ENV}: unknown fail point {name!r}; known: "
                                 + ", ".join(POINTS))
        if count and (not count.isdigit() or int(count) < 1):
            raise FailpointError(f"{ENV}: {item!r}: the count must be a positive integer")
        armed[name] = int(count or 1)
    return armed


_armed: dict[str, int] = {}


def arm(env: Mapping[str, str] = os.environ) -> None:
    """Read the environment once, at start (the CLI does). Raises FailpointError."""
    _armed.clear()
    _armed.update(parse(env.get(ENV, "")))


def due(name: str) -> bool:
    """Count one pass of ``name``; True when the process is to die there now. For a point
    that needs a step of its own before dying (sending a request whose reply it never reads)."""
    left = _armed.get(name)
    if left is None:
        return False
    if left > 1:
        _armed[name] = left - 1
        return False
    return True


def kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def failpoint(name: str) -> None:
    """SIGKILL this process if ``name`` is armed and reached for the armed time."""
    if due(name):
        kill()


async def die_after_sending(redis: Any, commands: Iterable[tuple[Any, ...]]) -> None:
    """For the ``*-in-flight`` points: put ``commands`` on the wire, then SIGKILL before the
    reply is read - the server runs them, the process never learns the outcome."""
    pool: Any = redis.connection_pool
    conn: Any = await pool.get_connection()
    await conn.send_packed_command(conn.pack_commands(list(commands)))
    kill()
