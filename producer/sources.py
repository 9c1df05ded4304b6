"""Where snapshots come from: the synthetic generator, or JSON lines from a file or stdin."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import IO

from shared.schema import REGIONS, Snapshot, SnapshotInvalid, parse

# A line read from a pipe is published at most this long after it arrived, even when fewer
# than a chunk of lines came: `tail -f log | regionstream produce --source -` stays live.
STDIN_FLUSH_S = 0.2


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str


@dataclass(slots=True)
class Chunk:
    snapshots: list[Snapshot]
    payloads: list[bytes]
    rejected: list[Rejected]


def _check(lineno: int, raw: bytes, now_ms: int, regions: Collection[str],
           chunk: Chunk) -> None:
    text = raw.strip()
    if not text or text.startswith(b"#"):
        return
    try:
        snap = parse(text, now_ms=now_ms, regions=regions)
    except SnapshotInvalid as exc:
        chunk.rejected.append(Rejected(lineno, str(exc)))
        return
    except Exception as exc:  # whatever one line holds, it costs that line, not the run
        chunk.rejected.append(Rejected(lineno, f"{type(exc).__name__}: {exc}"))
        return
    chunk.snapshots.append(snap)
    chunk.payloads.append(text)  # published as given: the bytes the consumer will store


def read_lines(lines: Iterable[bytes], *, size: int, now_ms: int,
               regions: Collection[str] = REGIONS) -> Iterable[Chunk]:
    """Validated chunks of at most ``size`` snapshots; bad lines reported with their number."""
    chunk = Chunk([], [], [])
    for lineno, raw in enumerate(lines, start=1):
        _check(lineno, raw, now_ms, regions, chunk)
        if len(chunk.snapshots) >= size:
            yield chunk
            chunk = Chunk([], [], [])
    if chunk.snapshots or chunk.rejected:
        yield chunk


async def read_stream(stream: IO[bytes], *, size: int, now: Callable[[], int],
                      regions: Collection[str] = REGIONS) -> AsyncIterator[Chunk]:
    """Like read_lines, for a live pipe: a thread reads lines, and a chunk is flushed when it is
    full or STDIN_FLUSH_S after its first line."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    def pump() -> None:
        for raw in stream:
            loop.call_soon_threadsafe(queue.put_nowait, raw)
        loop.call_soon_threadsafe(queue.put_nowait, None)

    threading.Thread(target=pump, daemon=True, name="stdin-reader").start()
    lineno, eof = 0, False
    while not eof:
        chunk = Chunk([], [], [])
        raw = await queue.get()
        deadline = loop.time() + STDIN_FLUSH_S
        while True:
            if raw is None:
                eof = True
                break
            lineno += 1
            _check(lineno, raw, now(), regions, chunk)
            if len(chunk.snapshots) >= size:
                break
            try:
                raw = await asyncio.wait_for(queue.get(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                break
        if chunk.snapshots or chunk.rejected:
            yield chunk


def stdin_bytes() -> IO[bytes]:
    return sys.stdin.buffer
