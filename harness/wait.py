"""Waiting on a condition, bounded: the one poll loop of the tests and the harness.

A condition is a function returning what is still missing (a short text), or None once it
holds: the timeout then says what was last seen, not only that time ran out. ``holds`` turns a
yes/no predicate into one. Errors listed in ``ignoring`` (a server restarting, a node not yet
answering) count as "not yet"; any other error ends the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

POLL_S = 0.01

Missing = Callable[[], str | None]
AsyncMissing = Callable[[], Awaitable[str | None]]


class WaitTimeout(TimeoutError, AssertionError):
    """A condition that did not hold in time (an AssertionError too: in a test it is a
    failed expectation, not an error of the test itself)."""


def holds(predicate: Callable[[], bool], what: str) -> Missing:
    return lambda: None if predicate() else what


def holds_async(predicate: Callable[[], Awaitable[bool]], what: str) -> AsyncMissing:
    async def missing() -> str | None:
        return None if await predicate() else what

    return missing


def until(missing: Missing, within: float, what: str, *,
          ignoring: tuple[type[BaseException], ...] = (), poll_s: float = POLL_S) -> None:
    """Poll ``missing()`` until it returns None; WaitTimeout after ``within`` seconds."""
    deadline = time.monotonic() + within
    last: str | None = "not checked yet"
    while True:
        with contextlib.suppress(*ignoring):
            last = missing()
            if last is None:
                return
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {within}s waiting for {what}: {last}")
        time.sleep(poll_s)  # wait-ok: the polling interval of a bounded condition wait


async def until_async(missing: AsyncMissing, within: float, what: str, *,
                      ignoring: tuple[type[BaseException], ...] = (),
                      poll_s: float = POLL_S) -> None:
    """``until`` for a coroutine condition."""
    deadline = time.monotonic() + within
    last: str | None = "not checked yet"
    while True:
        with contextlib.suppress(*ignoring):
            last = await missing()
            if last is None:
                return
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"timed out after {within}s waiting for {what}: {last}")
        await asyncio.sleep(poll_s)  # wait-ok: the polling interval of a bounded wait


def remaining(deadline: float) -> float:
    """Seconds left until ``deadline`` (monotonic), never negative: for a wait that is one
    step of a longer one."""
    return max(0.0, deadline - time.monotonic())
