"""Small asyncio helpers used by every long-running loop."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True if stopped. Loops use this instead
    of ``asyncio.sleep`` so a shutdown never waits out a back-off or an interval."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


def abandon(task: asyncio.Future[Any]) -> None:
    """Cancel ``task`` without waiting for it, and take whatever it ends with.

    A cancelled read may still end with the error of a connection closed under it (redis-py
    turns a cancellation inside a read into a disconnect); nobody awaits it any more, so asyncio
    would log that error as "Task exception was never retrieved" after the process had
    already said why it stopped (seen as the last line of a consumer refused a permission)."""
    task.cancel()
    task.add_done_callback(_take_outcome)


def _take_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
