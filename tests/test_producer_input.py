"""What ``produce`` reads and refuses: flags that would be ignored, lines the consumer would
dead-letter for size, and stdin read with back-pressure while Redis is slow (issue 17, items
5, 11 and 12)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import functools
import io
import itertools
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import tracemalloc
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
from producer import sources
from producer.sources import (
    LINE_SLACK_BYTES,
    READ_BYTES,
    SKIP_PIECE_BYTES,
    Chunk,
    FdLines,
    Limits,
    Line,
    Overlong,
    bounded_lines,
    read_lines,
    read_stream,
)
from regionstream.cli import main
from shared import wire
from shared.connection import connect
from shared.schema import decode, parse
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import drain, load_payloads, now_ms
from tests.proc import Proc, cli_env, common_flags, one_line, run_cli


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
    consumer = await drain(Settings.load({**_flags(settings), "max_bytes": limit},
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

def _pipe_holds(fd: int) -> int:
    """The bytes waiting in the pipe ``fd`` (either end), not yet read by anyone."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


async def _readers_ended() -> None:
    """The stdin reader threads end by themselves once their source is stopped or closed."""
    for thread in threading.enumerate():
        if thread.name == "stdin-reader":
            await asyncio.to_thread(thread.join, 10)
            assert not thread.is_alive(), "a stdin reader thread did not end"


async def test_reading_stays_at_most_a_chunk_ahead_of_what_is_taken() -> None:
    """The reader reads at most a chunk (``size`` lines, and then at most READ_BYTES) ahead of
    the lines taken: while the publisher takes no chunk, reading stops and the pipe stays full,
    however much is waiting to be written."""
    size, line = 5, _ONE + b"\n"
    data, written = line * 1_000, 0  # ~9 MB offered
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)

    def full() -> bool:
        """Write what the pipe takes; True when it took all it could."""
        nonlocal written
        try:
            while written < len(data):
                written += os.write(write_fd, data[written:written + 65536])
        except BlockingIOError:
            return True
        return False

    def consumed() -> int:  # what the reader took out of the pipe
        return written - _pipe_holds(read_fd)

    async def read(upto: int) -> bool:
        return full() and consumed() >= upto

    chunks = read_stream(read_fd, size=size, now=now_ms)
    checked = 0
    try:
        full()
        for _ in range(4):
            chunk: Chunk = await asyncio.wait_for(anext(chunks), 10)
            checked += len(chunk.snapshots)  # 5, or fewer when STDIN_FLUSH_S ran out first
            ahead = (checked + size) * len(line)
            await wait_until(functools.partial(read, ahead), 10, "a chunk read ahead")
            assert consumed() < ahead + READ_BYTES  # and not a line more
        await chunks.aclose()
        await _readers_ended()
    finally:
        os.close(write_fd)
        os.close(read_fd)


@pytest.fixture
def pipe() -> Iterator[tuple[int, BinaryIO]]:
    read_fd, write_fd = os.pipe()
    with open(write_fd, "wb") as writer:
        yield read_fd, writer
    os.close(read_fd)


async def test_stop_ends_reading_a_silent_pipe(pipe: tuple[int, BinaryIO]) -> None:
    """SIGTERM (the stop event) ends `--source -` while nothing comes down the pipe; it used
    to wait for the next line for ever. The reader thread ends too, with the pipe still open."""
    read_fd, writer = pipe
    stop = asyncio.Event()
    chunks = read_stream(read_fd, size=10, now=now_ms, stop=stop)
    waiting = asyncio.ensure_future(anext(chunks, None))
    writer.write(_ONE + b"\n")
    writer.flush()
    assert len((await asyncio.wait_for(waiting, 10)).snapshots) == 1  # type: ignore[union-attr]
    waiting = asyncio.ensure_future(anext(chunks, None))
    stop.set()
    assert await asyncio.wait_for(waiting, 10) is None
    await _readers_ended()


def _lines_of_pipe(data: bytes, limit: int) -> list[Line]:
    """FdLines over a pipe holding ``data`` (at most a pipe's capacity), then its end."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, data)
        os.close(write_fd)
        return list(FdLines(read_fd, limit))
    finally:
        os.close(read_fd)


LENGTHS = st.sampled_from([0, 1, 2, LINE_SLACK_BYTES - 1, LINE_SLACK_BYTES,
                           LINE_SLACK_BYTES + 1, LINE_SLACK_BYTES + 2, READ_BYTES,
                           READ_BYTES + 1, 3 * LINE_SLACK_BYTES])


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.tuples(LENGTHS, st.sampled_from([b"\n", b"\r\n"])), max_size=4),
       last=st.sampled_from([0, 1, LINE_SLACK_BYTES, LINE_SLACK_BYTES + 1]))
def test_stdin_is_split_into_lines_as_a_file_is(lines: list[tuple[int, bytes]],
                                                 last: int) -> None:
    """Stdin, read through the producer's own buffer, gives the lines a file gives: CRLF kept
    for _check to strip, an overlong line an Overlong with its size, a last line without a
    newline still a line."""
    data = b"".join(b"a" * n + end for n, end in lines) + b"z" * last
    assert len(data) < 64 * 1024  # fits in the pipe: written before it is read
    assert _lines_of_pipe(data, 0) == list(bounded_lines(io.BytesIO(data), 0))


def test_an_overlong_line_from_stdin_is_never_held_whole() -> None:
    limit, huge = 10_000, b"y" * (8 << 20)
    data = _ONE + b"\n" + huge + b"\n" + _ONE
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        os.write(write_fd, data)
        os.close(write_fd)

    writer = threading.Thread(target=feed)
    tracemalloc.start()
    try:
        writer.start()
        got = list(FdLines(read_fd, limit))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.join(30)
        os.close(read_fd)
    assert got == [_ONE + b"\n", Overlong(len(huge)), _ONE]
    assert peak < 1 << 20, peak  # not 8 MB


@pytest.mark.parametrize("begun", [b"{", b"z" * (LINE_SLACK_BYTES + 100)],
                         ids=["a-line", "an-overlong-line"])
def test_stopped_with_a_line_begun_it_is_read_on_to_its_end_and_no_further(begun: bytes
                                                                          ) -> None:
    """After finish(), the line begun in the buffer is read up to its newline, and not a byte
    past it: the next line stays in the pipe, whole."""
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, b"first\n" + begun)
        lines = FdLines(read_fd, 0)  # lines whole up to LINE_SLACK_BYTES
        assert next(lines) == b"first\n"
        assert _pipe_holds(read_fd) == 0  # ``begun`` is in the buffer
        lines.finish()
        os.write(write_fd, b"rest\n" + _ONE + b"\n")
        expected = (begun + b"rest\n" if len(begun) < LINE_SLACK_BYTES
                    else Overlong(len(begun) + 4))
        assert list(lines) == [expected]
        os.close(write_fd)
        assert os.read(read_fd, 1 << 20) == _ONE + b"\n"
    finally:
        os.close(read_fd)


def test_a_line_a_steady_writer_is_still_writing_at_stop_is_read_to_its_end(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The deadline is one of silence: a line whose rest keeps coming for longer than FINISH_S
    in all is read on to its end (a fixed 2 s dropped a long line from a steady writer)."""
    monkeypatch.setattr(sources, "FINISH_S", 0.3)
    read_fd, write_fd = os.pipe()
    pieces = [_ONE[i:i + len(_ONE) // 10] for i in range(0, len(_ONE), len(_ONE) // 10)]

    def steady() -> None:  # the rest of the line over ~1 s: longer than FINISH_S in all
        for piece in pieces[1:]:
            time.sleep(0.1)  # wait-ok: the pace of a slow writer is what is tested
            os.write(write_fd, piece)
        os.write(write_fd, b"\n" + b"next\n")

    try:
        os.write(write_fd, b"first\n" + pieces[0])
        lines = FdLines(read_fd, len(_ONE))
        assert next(lines) == b"first\n"  # the begun line is in the buffer
        lines.finish()
        writer = threading.Thread(target=steady)
        writer.start()
        got = list(lines)
        writer.join(10)
        assert got == [_ONE + b"\n"]
        os.close(write_fd)
        assert os.read(read_fd, 1 << 20) == b"next\n"  # nothing past the line was taken
    finally:
        with contextlib.suppress(OSError):
            os.close(write_fd)
        os.close(read_fd)


def test_stopped_with_a_line_a_silent_writer_never_ends_it_is_dropped_and_said(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sources, "FINISH_S", 0.3)
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, _ONE + b"\n" + _ONE[:100])
        lines = FdLines(read_fd, len(_ONE))
        assert next(lines) == _ONE + b"\n"
        lines.finish()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, "regionstream.producer"):
            assert list(lines) == []
        assert time.monotonic() - started < 5
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert "100 byte(s) read are dropped" in caplog.text
    finally:
        os.close(write_fd)
        os.close(read_fd)


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


# -- SIGTERM leaves stdin at a line boundary, every line read published -------------------------

BALANCE = ["coercive_pressure", "domestic_fragility", "capital_stress", "energy_vulnerability",
           "alliance_cohesion", "maritime_access", "energy_leverage", "net_balance"]
NARRATIVE = ["situation", "balance_assessment", "outlook_24h", "outlook_7d", "outlook_30d"]


def _short_lines(settings: Settings, n: int) -> list[bytes]:
    """``n`` distinct valid snapshots of ~560 bytes (only the fields without a default): a
    dozen or more to a read buffer of 8 KiB."""
    now = now_ms()
    lines = [json.dumps({
        "region_id": settings.regions[0], "generated_at": now,
        "meta": {"snapshot_id": f"{i:012x}-{i:012x}", "model_version": "m",
                 "scoring_version": "s", "geography_version": "g", "snapshot_confidence": 0.5,
                 "valid_until": now + 3_600_000, "trigger_reason": "scheduled_6h",
                 "narrative_provider": "p", "narrative_model": "n"},
        "regime": {"label": "coercive_stalemate"},
        "balance": dict.fromkeys(BALANCE, 0.5),
        "narrative": dict.fromkeys(NARRATIVE, ""),
    }, separators=(",", ":")).encode() for i in range(n)]
    parse(lines[0], now_ms=now, regions=settings.regions)  # valid: published, not rejected
    return lines


class _Feeder:
    """A writer that keeps the pipe full, from the event loop: ``data`` written as the pipe
    takes it, ``written`` bytes so far."""

    def __init__(self, fd: int, data: bytes) -> None:
        self.fd, self.data, self.written = fd, memoryview(data), 0
        os.set_blocking(fd, False)
        self.loop = asyncio.get_running_loop()
        self.loop.add_writer(fd, self._write)

    def _write(self) -> None:
        try:
            while self.written < len(self.data):
                self.written += os.write(self.fd, self.data[self.written:self.written + 65536])
        except BlockingIOError:
            return
        self.stop()

    def stop(self) -> None:
        self.loop.remove_writer(self.fd)


def _produce_from(read_fd: int, settings: Settings, log: Path, *flags: str
                  ) -> subprocess.Popen[bytes]:
    """`regionstream produce --source -` with the pipe ``read_fd`` as its stdin (a copy: the
    test keeps its own handle on the pipe, to read what the producer left in it)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "regionstream", "produce", "--source", "-", *flags,
             *common_flags(settings)], stdin=read_fd, stdout=out, stderr=subprocess.STDOUT,
            env=cli_env())


def _read_all(fd: int) -> bytes:
    """What is left in a pipe whose every writer is closed."""
    pieces = []
    while piece := os.read(fd, 1 << 16):
        pieces.append(piece)
    return b"".join(pieces)


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(30)


@pytest.mark.parametrize("kind", ["snapshots", "short-lines"])
async def test_sigterm_publishes_every_line_read_and_leaves_the_rest_whole_in_the_pipe(
        kind: str, client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    """The report: `produce --source - --chunk 1` SIGTERMed while lines kept coming published
    2,126 lines and left 1,073 whole in the pipe, of 3,200 written: the one between had gone
    into Python's read buffer, neither published nor left whole (with short lines, dozens).
    Now the bytes the producer took from the pipe are the lines it published, each once, and
    what it left starts with the next line, whole."""
    lines = (load_payloads(settings, 3_000, seed=8) if kind == "snapshots"
             else _short_lines(settings, 20_000))
    data = b"".join(line + b"\n" for line in lines)
    bounds = list(itertools.accumulate((len(line) + 1 for line in lines), initial=0))
    read_fd, write_fd = os.pipe()
    feeder = _Feeder(write_fd, data)
    log = tmp_path / "producer.log"
    producer = _produce_from(read_fd, settings, log, "--chunk", "1")

    async def some_published() -> bool:
        return bool(await client.xlen(settings.stream) >= 100)

    try:
        await wait_until(some_published, what="some lines published")
        producer.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(producer.wait, 30)
    finally:
        feeder.stop()
        _end(producer)
        os.close(write_fd)
        left = _read_all(read_fd)  # the test's own handle on the same pipe
        os.close(read_fd)
    out = log.read_text(errors="replace")
    assert code == 0, out
    assert feeder.written < len(data), "all was read: nothing left to check"
    taken = feeder.written - len(left)  # the bytes the producer took out of the pipe
    at = bisect.bisect_right(bounds, taken) - 1
    assert taken == bounds[at], (f"the pipe was left {taken - bounds[at]} bytes into line "
                                 f"{at + 1} ({len(lines[at]) + 1} bytes)")
    published = [fields[wire.F_PAYLOAD] for _, fields in await client.xrange(settings.stream)]
    assert published == lines[:at], (len(published), at)  # every line taken, once, in order
    rest = left + data[feeder.written:]  # left in the pipe, or not yet written to it
    assert rest.split(b"\n") == [*lines[at:], b""]  # whole lines, none published
    assert len(published) + len(rest.split(b"\n")) - 1 == len(lines)
    assert parse(left.split(b"\n", 1)[0], now_ms=now_ms(), regions=settings.regions)
    assert f"published {at} snapshot(s)" in out, out


async def test_sigterm_with_a_line_a_silent_writer_never_ends_says_what_it_dropped(
        client: aioredis.Redis, settings: Settings, tmp_path: Path) -> None:
    """The one loss left: stopped in the middle of a line whose writer then says nothing, the
    producer waits FINISH_S for its end, then exits 0 saying how many bytes it dropped."""
    lines = load_payloads(settings, 3, seed=12)
    half = lines[2][:len(lines[2]) // 2]
    read_fd, write_fd = os.pipe()
    log = tmp_path / "producer.log"
    producer = _produce_from(read_fd, settings, log)

    async def read_in() -> bool:  # two lines published, the half line taken from the pipe
        return bool(await client.xlen(settings.stream) == 2) and _pipe_holds(read_fd) == 0

    try:
        os.write(write_fd, lines[0] + b"\n" + lines[1] + b"\n" + half)  # fits in the pipe
        await wait_until(read_in, what="two lines published and the half line read")
        producer.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = await asyncio.to_thread(producer.wait, 30)
        took = time.monotonic() - started
    finally:
        _end(producer)
        os.close(write_fd)
        os.close(read_fd)
    out = log.read_text(errors="replace")
    assert code == 0, out
    assert took < sources.FINISH_S + 10, took
    warnings = [row for row in out.splitlines() if "WARNING" in row]
    assert len(warnings) == 1 and f"its {len(half)} byte(s) read are dropped" in warnings[0], out
    assert "published 2 snapshot(s)" in out, out
