"""Small asyncio helpers used by every long-running loop."""

from __future__ import annotations

import asyncio
import contextlib


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; True if stopped. Loops use this instead
    of ``asyncio.sleep`` so a shutdown never waits out a back-off or an interval."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
