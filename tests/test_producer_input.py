"""What ``produce`` reads and refuses: flags that would be ignored, lines the consumer would
dead-letter for size, and stdin read with back-pressure while Redis is slow (issue 17, items
5, 11 and 12)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from consumer.message import Poison, Reason, Valid, check_entry
from producer.sources import (
    LINE_SLACK_BYTES,
    SKIP_PIECE_BYTES,
    Chunk,
    Limits,
    Overlong,
    bounded_lines,
    read_lines,
    read_stream,
)
from regionstream.cli import main
from shared import wire
from shared.connection import connect
from shared.schema import decode
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import drain, load_payloads
from tests.proc import Proc, common_flags, one_line, run_cli


def now_ms() -> int:
    return int(time.time() * 1000)


def padded(payload: bytes, size: int) -> bytes:
    """``payload`` (a snapshot's JSON) grown to exactly ``size`` bytes by an unknown field,
    which the consumer ignores: still a valid snapshot, only larger."""
    head = payload[:-1] + b',"pad":"'
    fill = size - len(head) - 2
    assert fill >= 0, (size, len(payload))
    return head + b"x" * fill + b'"}'


_ONE = load_payloads(Settings.load({}, env={}), 1, seed=3)[0]  # a valid snapshot, ~9 KB


# -- item 5: flags the chosen source would ignore are refused ---------------------------------

# (flags, names the one line must contain). FILE stands for a readable JSON-lines file.
CONFLICTS = [
    (["--source", "FILE", "--count", "5"], ("--source", "--count")),
    (["--source", "-", "--count", "5"], ("--source", "--count")),
    (["--source", "FILE", "--once"], ("--source", "--once")),
    (["--source", "-", "--once"], ("--source", "--once")),
    (["--source", "FILE", "--interval", "5"], ("--source", "--interval")),
    (["--source", "FILE", "--seed", "3"], ("--source", "--seed")),
    (["--source", "-", "--seed", "0"], ("--source", "--seed")),  # 0 is given too
    (["--chunk", "5"], ("--chunk", "--count", "--source")),
    (["--once", "--chunk", "5"], ("--chunk", "--count", "--source")),
    (["--interval", "5", "--chunk", "5"], ("--chunk", "--count", "--source")),
    (["--once", "--max-bytes", "100000"], ("--max-bytes", "--source")),
    (["--count", "5", "--max-bytes", "100000"], ("--max-bytes", "--count")),
]


@pytest.fixture
def jsonl(tmp_path: Path, settings: Settings) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(load_payloads(settings, 3, seed=5)) + b"\n")
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("REGIONSTREAM_")]:
        monkeypatch.delenv(name)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(("flags", "names"), CONFLICTS,
                         ids=[" ".join(f) for f, _ in CONFLICTS])
def test_a_flag_the_source_would_ignore_is_refused_before_anything_is_written(
        flags: list[str], names: tuple[str, ...], settings: Settings, jsonl: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    args = [str(jsonl) if f == "FILE" else f for f in flags]
    code = main(["produce", *args, *common_flags(settings)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert all(name in err[0] + " " for name in names), err
    with redis.Redis.from_url(settings.redis_url) as r:
        assert r.exists(settings.stream) == 0  # nothing published, no group created


def test_source_file_with_count_publishes_nothing(settings: Settings, jsonl: Path) -> None:
    """The report: `--source FILE --count N` published N synthetic snapshots into the real
    stream and ignored FILE. Through the real command, as the user ran it."""
    line = one_line(run_cli(["produce", "--source", str(jsonl), "--count", "5",
                             *common_flags(settings)]), 2)
    assert "--source" in line and "--count" in line
    with redis.Redis.from_url(settings.redis_url) as r:
        assert r.exists(settings.stream) == 0


@pytest.mark.usefixtures("clean_env")
def test_synthetic_source_refuses_a_max_bytes_its_snapshots_exceed(
        settings: Settings, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("REGIONSTREAM_MAX_BYTES", "4096")
    assert main(["produce", "--once", *common_flags(settings)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "REGIONSTREAM_MAX_BYTES 4096" in err[0], err
    with redis.Redis.from_url(settings.redis_url) as r:
        assert r.exists(settings.stream) == 0


# -- item 12: a line larger than --max-bytes is rejected, the rest published -------------------

async def test_line_over_max_bytes_is_rejected_and_the_rest_published(
        client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    limit = 20_000
    ok = load_payloads(settings, 4, seed=9)
    lines = [ok[0], padded(ok[1], limit + 1), ok[2], padded(ok[3], limit),
             b'{"pad":"' + b"x" * (50 << 20) + b'"}']  # 50 MB: the report's case
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = run_cli(["produce", "--source", str(path), "--max-bytes", str(limit),
                    *common_flags(settings)])
    assert done.returncode == 4, done.stderr
    err = done.stderr.decode()
    assert f"line 2: {limit + 1} bytes, more than --max-bytes {limit}" in err, err
    assert f"line 5: {(50 << 20) + 10} bytes, more than --max-bytes {limit}" in err, err
    assert "rejected 2 line(s)" in err and "Traceback" not in err
    entries = await client.xrange(settings.stream)
    assert [fields[wire.F_PAYLOAD] for _, fields in entries] == [lines[0], lines[2], lines[3]]
    # and the consumer, with the same limit, stores every one: nothing is dead-lettered
    consumer = await drain(client, Settings.load({**_flags(settings), "max_bytes": limit},
                                                 env={}))
    assert consumer.totals()["persisted"] == 3
    assert await client.xlen(settings.keys.dlq) == 0


def _flags(s: Settings) -> dict[str, object]:
    return {"redis_url": s.redis_url, "stream": s.stream, "group": s.group, "prefix": s.prefix,
            "name": s.name, "block_ms": 100}


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grow=st.integers(0, 64), lead=st.sampled_from([b"", b" ", b"\t  "]),
       trail=st.sampled_from([b"", b" ", b"\r", b" \t"]), room=st.integers(0, 64))
def test_producer_rejects_exactly_what_the_consumer_dead_letters_for_size(
        grow: int, lead: bytes, trail: bytes, room: int) -> None:
    """Around the limit, with whitespace around the line: the producer publishes a line
    exactly when the consumer, with the same --max-bytes, would not dead-letter it for size."""
    payload, limit = padded(_ONE, len(_ONE) + 16 + grow), len(_ONE) + 16 + room
    chunks = list(read_lines(bounded_lines(io.BytesIO(lead + payload + trail + b"\n"), limit),
                             size=10, now_ms=now_ms(), limits=Limits(max_bytes=limit)))
    published = [p for c in chunks for p in c.payloads]
    verdict = check_entry(b"1-1", wire.entry_fields(decode(payload), payload),
                          max_bytes=limit, now_ms=now_ms())
    if isinstance(verdict, Poison):
        assert verdict.reason is Reason.TOO_LARGE
        assert published == []
        assert "--max-bytes" in chunks[0].rejected[0].reason
    else:
        assert isinstance(verdict, Valid)
        assert published == [payload]


class Recording(io.BytesIO):
    """A stream that remembers the longest piece it handed out."""

    longest = 0

    def readline(self, size: int | None = -1, /) -> bytes:
        piece = super().readline(size)
        self.longest = max(self.longest, len(piece))
        return piece


def test_an_overlong_line_is_never_held_whole() -> None:
    limit = 10_000
    huge = b"y" * (8 << 20)
    stream = Recording(_ONE + b"\n" + huge + b"\n" + _ONE)
    assert list(bounded_lines(stream, limit)) == [_ONE + b"\n", Overlong(len(huge)), _ONE]
    assert stream.longest <= max(limit + LINE_SLACK_BYTES + 1, SKIP_PIECE_BYTES)  # not 8 MB


def test_a_flood_of_bad_lines_is_reported_a_chunk_at_a_time() -> None:
    """Rejected lines count towards a chunk: a million bad lines are not held in one."""
    lines = iter([b"{broken"] * 10_000 + [_ONE])
    chunks = read_lines(lines, size=50, now_ms=now_ms())
    sizes = [len(c.snapshots) + len(c.rejected) for c in chunks]
    assert max(sizes) == 50 and sum(sizes) == 10_001


# -- item 11: stdin is read with back-pressure --------------------------------------------------

class Endless:
    """A pipe that always has another line (up to ``limit``), counting the lines taken."""

    def __init__(self, line: bytes, limit: int) -> None:
        self.line, self.limit, self.taken = line, limit, 0

    def readline(self, size: int | None = -1, /) -> bytes:
        if self.taken >= self.limit:
            return b""
        self.taken += 1
        return self.line

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


async def test_reading_stays_at_most_a_chunk_ahead_of_what_is_taken() -> None:
    """The reader reads at most a chunk (``size`` lines) ahead of the lines taken: while the
    publisher takes no chunk, reading stops, however much is waiting in the pipe."""
    size = 5
    stream = Endless(_ONE + b"\n", limit=100_000)
    chunks = read_stream(stream, size=size, now=now_ms)  # type: ignore[arg-type]
    checked = 0

    async def read_ahead() -> bool:
        return stream.taken >= checked + size

    for _ in range(4):
        chunk: Chunk = await asyncio.wait_for(anext(chunks), 10)
        checked += len(chunk.snapshots)  # 5, or fewer when STDIN_FLUSH_S ran out first
        await wait_until(read_ahead, 10, "a chunk read ahead")
        assert stream.taken == checked + size  # and not one line more
    await chunks.aclose()


@pytest.fixture
def pipe() -> Iterator[tuple[BinaryIO, BinaryIO]]:
    read_fd, write_fd = os.pipe()
    with open(read_fd, "rb") as stream, open(write_fd, "wb") as writer:
        yield stream, writer


async def test_stop_ends_reading_a_silent_pipe(pipe: tuple[BinaryIO, BinaryIO]) -> None:
    """SIGTERM (the stop event) ends `--source -` while nothing comes down the pipe; it used
    to wait for the next line for ever."""
    stream, writer = pipe
    stop = asyncio.Event()
    chunks = read_stream(stream, size=10, now=now_ms, stop=stop)
    waiting = asyncio.ensure_future(anext(chunks, None))
    writer.write(_ONE + b"\n")
    writer.flush()
    assert len((await asyncio.wait_for(waiting, 10)).snapshots) == 1  # type: ignore[union-attr]
    waiting = asyncio.ensure_future(anext(chunks, None))
    stop.set()
    assert await asyncio.wait_for(waiting, 10) is None
    writer.close()  # ends the reader thread's blocked read, then the thread
    for thread in threading.enumerate():
        if thread.name == "stdin-reader":
            await asyncio.to_thread(thread.join, 10)


LINE_BYTES = 64 * 1024
LINES = 800  # ~52 MB of input
CHUNK = 20
PAUSE_MS = 2_000
RSS_BOUND_KIB = 24 * 1024  # the producer's growth allowed: a chunk is ~1.3 MB


def _status_kib(pid: int, field: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(field + ":"):
            return int(row.split()[1])
    raise AssertionError(f"no {field} for {pid}")


async def test_stdin_is_read_with_back_pressure_while_redis_is_paused(
        client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    lines = [padded(p, LINE_BYTES) for p in load_payloads(settings, LINES, seed=21)]
    producer = Proc(["produce", "--source", "-", "--chunk", str(CHUNK),
                     *common_flags(settings)], tmp_path / "producer.log", stdin=True)
    stdin = producer.proc.stdin
    assert stdin is not None
    pauser = connect(settings.redis_url)
    done_at: list[float] = []

    def feed(part: list[bytes]) -> None:
        for line in part:
            stdin.write(line + b"\n")
        stdin.flush()
        done_at.append(time.monotonic())

    async def published(n: int) -> bool:
        return bool(await client.xlen(settings.stream) >= n)

    try:
        await asyncio.to_thread(feed, lines[:CHUNK])
        await wait_until(lambda: published(CHUNK), what="the first chunk published")
        base = _status_kib(producer.proc.pid, "VmRSS")
        await pauser.execute_command("CLIENT", "PAUSE", PAUSE_MS, "WRITE")
        paused_at = time.monotonic()
        feeder = threading.Thread(target=feed, args=(lines[CHUNK:],))
        feeder.start()
        await wait_until(lambda: published(LINES), 60, "every line published")
        await asyncio.to_thread(feeder.join, 30)
        peak = _status_kib(producer.proc.pid, "VmHWM")
        stdin.close()
        assert await asyncio.to_thread(producer.proc.wait, 30) == 0, producer.output()
    finally:
        await pauser.aclose()
        producer.kill()
    # While Redis was paused the producer read about a chunk, not the ~52 MB offered: the
    # feeder could not finish before writes resumed, and the producer's memory stayed flat.
    assert done_at[-1] - paused_at > PAUSE_MS / 1000 - 0.1, "the producer swallowed stdin"
    assert peak - base < RSS_BOUND_KIB, (base, peak)
    entries = await client.xrange(settings.stream)
    assert [fields[wire.F_PAYLOAD] for _, fields in entries] == lines  # each once, in order


async def test_sigterm_stops_produce_from_a_silent_stdin(
        client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    """`tail -f log | regionstream produce --source -` stops on SIGTERM with nothing coming
    down the pipe, having published what it read (it waited for a next line for ever)."""
    producer = Proc(["produce", "--source", "-", *common_flags(settings)],
                    tmp_path / "producer.log", stdin=True)
    stdin = producer.proc.stdin
    assert stdin is not None
    try:
        stdin.write(_ONE + b"\n")
        stdin.flush()

        async def published() -> bool:
            return bool(await client.xlen(settings.stream) == 1)

        await wait_until(published, what="the line published")
        producer.proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(producer.proc.wait, 15) == 0, producer.output()
        assert "published 1 snapshot(s)" in producer.output()
    finally:
        producer.kill()
