"""Where snapshots come from: the synthetic generator, or JSON lines from a file or stdin.

Reading is pulled by publishing: lines are read at most a chunk ahead of what is published, so
while Redis is slow the producer holds a few chunks (``--chunk`` lines each), the rest waits in
the file or the pipe, and a writer feeding the pipe blocks (back-pressure). A line
is never held whole when it is longer than ``--max-bytes`` allows: it is skipped in pieces and
rejected.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from shared.schema import REGIONS, Snapshot, SnapshotInvalid, parse
from shared.settings import MAX_BYTES

# A line read from a pipe is published at most this long after it arrived, even when fewer
# than a chunk of lines came: `tail -f log | regionstream produce --source -` stays live.
STDIN_FLUSH_S = 0.2
# --max-bytes limits the payload, the line without its surrounding whitespace; a line is read
# whole up to this much more than that, and one longer still is rejected unread (its size is
# counted while its rest is skipped in SKIP_PIECE_BYTES pieces).
LINE_SLACK_BYTES = 4096
SKIP_PIECE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str


@dataclass(slots=True)
class Chunk:
    snapshots: list[Snapshot]
    payloads: list[bytes]
    rejected: list[Rejected]


@dataclass(frozen=True, slots=True)
class Overlong:
    """A line too long to read whole; ``size`` is its length without the line ending."""

    size: int


Line = bytes | Overlong


@dataclass(frozen=True, slots=True)
class Limits:
    """What a source line must respect to be published."""

    max_bytes: int = MAX_BYTES
    regions: Collection[str] = REGIONS


def _too_big(size: int, max_bytes: int) -> str:
    return (f"{size} bytes, more than --max-bytes {max_bytes}: the consumer would dead-letter "
            "it")


def _check(lineno: int, raw: Line, now_ms: int, limits: Limits, chunk: Chunk) -> None:
    if isinstance(raw, Overlong):
        chunk.rejected.append(Rejected(lineno, _too_big(raw.size, limits.max_bytes)))
        return
    text = raw.strip()
    if not text or text.startswith(b"#"):
        return
    if len(text) > limits.max_bytes:  # the consumer's own test: dead-lettered above it
        chunk.rejected.append(Rejected(lineno, _too_big(len(text), limits.max_bytes)))
        return
    try:
        snap = parse(text, now_ms=now_ms, regions=limits.regions)
    except SnapshotInvalid as exc:
        chunk.rejected.append(Rejected(lineno, str(exc)))
        return
    except Exception as exc:  # whatever one line holds, it costs that line, not the run
        chunk.rejected.append(Rejected(lineno, f"{type(exc).__name__}: {exc}"))
        return
    chunk.snapshots.append(snap)
    chunk.payloads.append(text)  # published as given: the bytes the consumer will store


def bounded_lines(stream: IO[bytes], max_bytes: int) -> Iterator[Line]:
    """The lines of ``stream``, each read whole only when it is at most ``max_bytes`` plus
    LINE_SLACK_BYTES long: a longer one is an Overlong, its bytes skipped, never held."""
    limit = max_bytes + LINE_SLACK_BYTES
    while raw := stream.readline(limit + 1):
        if len(raw) <= limit or raw.endswith(b"\n"):
            yield raw
        else:
            yield Overlong(_skip_rest(stream, len(raw)))


def _skip_rest(stream: IO[bytes], size: int) -> int:
    while piece := stream.readline(SKIP_PIECE_BYTES):
        if piece.endswith(b"\n"):
            return size + len(piece) - 1
        size += len(piece)
    return size


def _full(chunk: Chunk, size: int) -> bool:
    # Rejected lines count too: a flood of bad lines must not grow one chunk without bound.
    return len(chunk.snapshots) + len(chunk.rejected) >= size


def read_lines(lines: Iterable[Line], *, size: int, now_ms: int,
               limits: Limits = Limits()) -> Iterator[Chunk]:
    """Validated chunks of at most ``size`` lines; bad lines reported with their number.
    Lines are taken from ``lines`` only as chunks are taken from this generator."""
    chunk = Chunk([], [], [])
    for lineno, raw in enumerate(lines, start=1):
        _check(lineno, raw, now_ms, limits, chunk)
        if _full(chunk, size):
            yield chunk
            chunk = Chunk([], [], [])
    if chunk.snapshots or chunk.rejected:
        yield chunk


class _Nothing:
    """No line: the source was stopped, or a flush deadline passed, with none waiting."""


NOTHING = _Nothing()


class _LineReader:
    """Reads a blocking stream (a pipe, a terminal, a file) in a daemon thread, at most
    ``ahead`` lines ahead of what was taken: then it waits, and the rest stays in the stream.

    A daemon thread, not the default executor: a read blocked on a silent pipe must not keep
    the process from exiting (asyncio.run waits for the executor's threads). The thread reads
    on while it has credit, so a busy pipe costs no thread hand-over per line."""

    def __init__(self, stream: IO[bytes], max_bytes: int, ahead: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Line | Exception | None] = asyncio.Queue()
        self._credit = threading.Semaphore(ahead)
        self._closed = False
        self._lines = bounded_lines(stream, max_bytes)
        threading.Thread(target=self._serve, daemon=True, name="stdin-reader").start()

    async def take(self, stopped: asyncio.Future[Any], within: float | None = None
                   ) -> Line | _Nothing | None:
        """The next line already read, else the next one read within ``within`` s; None at the
        end of the stream; NOTHING when none came in time or ``stopped`` is done."""
        if self._queue.empty():
            if stopped.done():
                return NOTHING
            getter = asyncio.ensure_future(self._queue.get())
            await asyncio.wait(_either(getter, stopped), timeout=within,
                               return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()  # asyncio.Queue keeps an item a cancelled get() was woken for
                return NOTHING
            item = getter.result()
        else:
            item = self._queue.get_nowait()
        self._credit.release()
        if isinstance(item, Exception):
            raise item
        return item

    def close(self) -> None:
        """No more lines are wanted: the thread ends once a read in progress returns."""
        self._closed = True
        self._credit.release()

    def _serve(self) -> None:
        item: Line | Exception | None = None
        while self._credit.acquire() and not self._closed:
            try:
                item = next(self._lines, None)
            except Exception as exc:  # a failed read: raised where the line is taken
                item = exc
            try:
                self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: the process is stopping
                return
            if item is None or isinstance(item, Exception):
                return


async def read_stream(stream: IO[bytes], *, size: int, now: Callable[[], int],
                      limits: Limits = Limits(), stop: asyncio.Event | None = None
                      ) -> AsyncIterator[Chunk]:
    """Like read_lines, for a live pipe: a chunk is flushed when it is full or STDIN_FLUSH_S
    after its first line. At most ``size`` lines are read ahead of the chunk being filled:
    while no chunk is asked for, the rest stays in the pipe. Ends at the end of the stream, or
    once ``stop`` is set, after yielding every line already read."""
    loop = asyncio.get_running_loop()
    reader = _LineReader(stream, limits.max_bytes, ahead=size)
    stopped: asyncio.Future[Any] = asyncio.ensure_future((stop or asyncio.Event()).wait())
    lineno = 0
    try:
        while not isinstance(raw := await reader.take(stopped), _Nothing):
            chunk = Chunk([], [], [])
            deadline = loop.time() + STDIN_FLUSH_S
            while raw is not None and not isinstance(raw, _Nothing):
                lineno += 1
                _check(lineno, raw, now(), limits, chunk)
                if _full(chunk, size):
                    break
                raw = await reader.take(stopped, max(0.0, deadline - loop.time()))
            if chunk.snapshots or chunk.rejected:
                yield chunk
            if raw is None:
                return  # the end of the stream
    finally:
        stopped.cancel()
        reader.close()


def _either(*futures: asyncio.Future[Any]) -> set[asyncio.Future[Any]]:
    return set(futures)


def stdin_bytes() -> IO[bytes]:
    """Standard input, through a reader of its own: the reader thread may be blocked in a read
    on it when the process exits, and the interpreter's shutdown closes ``sys.stdin``, which
    would wait for that read's lock and abort ("could not acquire lock ... at interpreter
    shutdown")."""
    return open(sys.stdin.fileno(), "rb", closefd=False)
