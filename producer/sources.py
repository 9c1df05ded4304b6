"""Where snapshots come from: the synthetic generator, or JSON lines from a file or stdin.

Reading is pulled by publishing: lines are read at most a chunk ahead of what is published, so
while Redis is slow the producer holds a few chunks (``--chunk`` lines each), the rest waits in
the file or the pipe, and a writer feeding the pipe blocks (back-pressure). A line
is never held whole when it is longer than ``--max-bytes`` allows: it is skipped in pieces and
rejected.

Stdin is read through a buffer of our own (FdLines), not Python's buffered reader, which takes
up to 8 KiB past the lines it hands out: on SIGTERM those bytes were gone from the pipe without
being published, and the pipe was left in the middle of a line. FdLines knows every byte it
took, so a stop publishes each line read and leaves the pipe at a line boundary.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import select
import struct
import termios
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import IO

from shared.schema import REGIONS, Snapshot, SnapshotInvalid, parse
from shared.settings import MAX_BYTES

log = logging.getLogger("regionstream.producer")

# A line read from a pipe is published at most this long after it arrived, even when fewer
# than a chunk of lines came: `tail -f log | regionstream produce --source -` stays live.
STDIN_FLUSH_S = 0.2
# --max-bytes limits the payload, the line without its surrounding whitespace; a line is read
# whole up to this much more than that, and one longer still is rejected unread (its size is
# counted while its rest is skipped in SKIP_PIECE_BYTES pieces).
LINE_SLACK_BYTES = 4096
SKIP_PIECE_BYTES = 64 * 1024
# Stdin is read READ_BYTES at a time (what Python's buffered reader took), and only once every
# line already read was handed out: at most this much is read past the lines handed out.
READ_BYTES = 8 * 1024
# The stdin reader waits at most this long for input before it looks whether it was stopped.
POLL_S = 0.05
# Once stopped, a line whose start was read is read on (a byte at a time: nothing past its
# newline) while bytes keep coming: a writer silent this long in the middle of it loses that
# line. A deadline of silence, not of reading: a byte at a time runs at ~1.4 MB/s here, and a
# long line from a steady writer outlasted a fixed 2 s.
FINISH_S = 2.0
# ... and at most this long in all, however steadily a (very long) line keeps coming.
FINISH_MAX_S = 30.0


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


class FdLines(Iterator[Line]):
    """The lines of file descriptor ``fd`` (stdin: a pipe, a terminal, a file), split like
    bounded_lines splits a stream: each whole up to ``max_bytes`` + LINE_SLACK_BYTES, a longer
    one an Overlong (skipped, never held), a last line without a newline still a line.

    Read through a buffer of our own: ``os.read`` of at most READ_BYTES, only when no line is
    left in the buffer and only once ``poll`` says it will not block, so the reading thread
    never sits in a read and sees ``finish()`` or ``close()`` within POLL_S.

    After ``finish()`` nothing past the current line is read: the lines in the buffer are
    handed out, a line begun in it is read on a byte at a time up to its newline (for FINISH_S
    at most: a silent writer's half line is dropped, with a warning), and then the iterator
    ends, the rest left in the pipe from a line boundary."""

    def __init__(self, fd: int, max_bytes: int) -> None:
        self._fd = fd
        self._limit = max_bytes + LINE_SLACK_BYTES
        self._buf = bytearray()
        self._seen = 0  # the first bytes of _buf known to hold no newline
        self._skipped: int | None = None  # the bytes of an Overlong line skipped so far
        self._eof = False
        self._finishing = False
        self._finish_by: float | None = None
        self._give_up_at = 0.0
        self._closed = False
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def finish(self) -> None:
        """Read no line past the current one (thread-safe)."""
        self._finishing = True

    def close(self) -> None:
        """Read nothing more: the iterator ends within POLL_S (thread-safe)."""
        self._closed = True

    def __next__(self) -> Line:
        while True:
            if (line := self._split()) is not None:
                return line
            if self._eof:
                return self._tail()
            if self._closed:
                raise StopIteration
            if not self._finishing:
                if self._readable(POLL_S) and not self._finishing:
                    self._read(READ_BYTES)
            elif not self._buf and self._skipped is None:
                raise StopIteration  # at a line boundary: the rest stays in the pipe
            else:
                self._read_on()

    def _split(self) -> Line | None:
        """The next line complete in the buffer, if any."""
        buf = self._buf
        if self._skipped is not None:
            end = buf.find(b"\n")
            if end < 0:
                self._skipped += len(buf)
                buf.clear()
                return None
            size = self._skipped + end
            del buf[:end + 1]
            self._skipped = None
            return Overlong(size)
        end = buf.find(b"\n", self._seen)
        if end < 0:
            if len(buf) > self._limit:  # too long to hold: counted from here on, not kept
                self._skipped = len(buf)
                buf.clear()
            self._seen = len(buf)
            return None
        self._seen = 0
        line: Line = bytes(buf[:end + 1]) if end <= self._limit else Overlong(end)
        del buf[:end + 1]
        return line

    def _tail(self) -> Line:
        """At the end of the input: its last line when it has no newline."""
        size, line = len(self._buf), bytes(self._buf)
        self._buf.clear()
        if self._skipped is not None:
            size, self._skipped = size + self._skipped, None
            return Overlong(size)
        if line:
            return line
        raise StopIteration

    def _readable(self, timeout_s: float) -> bool:
        return bool(self._poll.poll(timeout_s * 1000))

    def _read(self, size: int) -> None:
        data = os.read(self._fd, size)
        if data:
            self._buf += data
        else:
            self._eof = True

    def _read_on(self) -> None:
        """Stopped with a line begun: read it on, a byte at a time so that no byte past its
        newline is taken, until FINISH_S after the first try."""
        now = time.monotonic()
        if self._finish_by is None:
            self._finish_by, self._give_up_at = now + FINISH_S, now + FINISH_MAX_S
        if now >= self._finish_by:
            size = len(self._buf) + (self._skipped or 0)
            log.warning("stopping: the last line read from stdin had no end (%s); its %d "
                        "byte(s) read are dropped (the rest of it stays in the pipe)",
                        f"{FINISH_MAX_S:.0f} s in all" if now >= self._give_up_at
                        else f"no byte for {FINISH_S:.1f} s", size)
            self._buf.clear()
            self._skipped, self._seen = None, 0
            return
        if not self._readable(min(POLL_S, self._finish_by - now)):
            return
        # Bytes are coming: the writer is not silent.
        self._finish_by = min(time.monotonic() + FINISH_S, self._give_up_at)
        for _ in range(self._waiting()):
            byte = os.read(self._fd, 1)
            if not byte:
                self._eof = True
                return
            self._buf += byte
            if byte == b"\n":
                return

    def _waiting(self) -> int:
        """How many bytes may be read a byte at a time without blocking (at least one: poll
        said the fd is readable), READ_BYTES at most: the buffer stays bounded."""
        try:
            got = fcntl.ioctl(self._fd, termios.FIONREAD, b"\0\0\0\0")
            waiting = int(struct.unpack("i", got)[0])
        except OSError:  # not a pipe, terminal or file: one byte per poll
            waiting = 1
        return max(1, min(waiting, READ_BYTES))


class _Nothing:
    """No line: a flush deadline passed with none waiting."""


NOTHING = _Nothing()


class _LineReader:
    """Reads ``lines`` in a daemon thread, at most ``ahead`` lines ahead of what was taken:
    then it waits, and the rest stays in the pipe. The thread reads on while it has credit, so
    a busy pipe costs no thread hand-over per line.

    A daemon thread, not the default executor: asyncio.run waits for the executor's threads,
    and this one may be waiting for credit that nobody will give."""

    def __init__(self, lines: FdLines, ahead: int) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Line | Exception | None] = asyncio.Queue()
        self._credit = threading.Semaphore(ahead)
        self._closed = False
        self._lines = lines
        threading.Thread(target=self._serve, daemon=True, name="stdin-reader").start()

    async def take(self, within: float | None = None) -> Line | _Nothing | None:
        """The next line already read, else the next one read within ``within`` s; None at the
        end of the lines; NOTHING when none came in time."""
        if self._queue.empty():
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter}, timeout=within)
            except asyncio.CancelledError:
                getter.cancel()  # the lines are given up: read_stream closes the reader
                raise
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

    def finish(self) -> None:
        """Stopped: the lines already read are still taken, then None (see FdLines.finish)."""
        self._lines.finish()

    def close(self) -> None:
        """No more lines are wanted: the thread ends within POLL_S."""
        self._closed = True
        self._lines.close()
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


async def read_stream(fd: int, *, size: int, now: Callable[[], int],
                      limits: Limits = Limits(), stop: asyncio.Event | None = None
                      ) -> AsyncIterator[Chunk]:
    """Like read_lines, for the lines of a live pipe ``fd`` (see FdLines): a chunk is flushed
    when it is full or STDIN_FLUSH_S after its first line. At most ``size`` lines are read
    ahead of the chunk being filled (and READ_BYTES past the last of them): while no chunk is
    asked for, the rest stays in the pipe. Ends at the end of the input, or once ``stop`` is
    set, after yielding every line already read (and the one begun, see FdLines.finish)."""
    loop = asyncio.get_running_loop()
    reader = _LineReader(FdLines(fd, limits.max_bytes), ahead=size)
    stopped = asyncio.ensure_future((stop or asyncio.Event()).wait())
    stopped.add_done_callback(lambda done: None if done.cancelled() else reader.finish())
    lineno = 0
    raw: Line | _Nothing | None = NOTHING
    try:
        while raw is not None:
            raw = await reader.take()
            chunk = Chunk([], [], [])
            deadline = loop.time() + STDIN_FLUSH_S
            while raw is not None and not isinstance(raw, _Nothing):
                lineno += 1
                _check(lineno, raw, now(), limits, chunk)
                if _full(chunk, size):
                    break
                raw = await reader.take(max(0.0, deadline - loop.time()))
            if chunk.snapshots or chunk.rejected:
                yield chunk
    finally:
        stopped.cancel()
        reader.close()
