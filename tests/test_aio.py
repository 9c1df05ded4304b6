"""The asyncio helpers every long-running loop uses."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from shared.aio import abandon


async def _closed_under_it(waiting: asyncio.Event) -> None:
    """A read whose cancellation arrives as the error of a connection closed under it."""
    try:
        waiting.set()
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        raise ConnectionError("Connection closed by server.") from None


@pytest.mark.parametrize("how", ["abandon", "cancel"])
async def test_an_abandoned_read_ending_in_an_error_is_never_reported(how: str) -> None:
    """A consumer stopped by a permanent error cancels its workers' reads; one ended with a
    ConnectionError instead, and asyncio printed its traceback after the one-line reason
    (the last line of stderr was the traceback's). ``cancel`` shows the report is real."""
    reported: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        waiting = asyncio.Event()
        task = asyncio.ensure_future(_closed_under_it(waiting))
        await waiting.wait()
        if how == "abandon":
            abandon(task)
        else:
            task.cancel()
        await asyncio.wait([task])  # ended, its outcome not taken by this test
        del task
        gc.collect()
    finally:
        loop.set_exception_handler(previous)
    if how == "abandon":
        assert reported == []
    else:
        assert [c["message"] for c in reported] == ["Task exception was never retrieved"]
