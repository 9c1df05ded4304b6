"""One contender in its own process (``python -m bench.runner ROLE ...``), so its CPU time and
memory are its own and a scenario can run several side by side.

Protocol, one JSON object or word per line: the runner connects and prepares, prints
``{"event": "ready"}``; the parent writes ``go``; the runner works until the parent writes
``stop`` (or closes stdin, or ``--max-seconds`` pass), then prints ``{"event": "done", ...}``
with its ack count, wall times, CPU seconds and RSS. Roles: ``consumer`` (the real
``consumer.service.Consumer``), ``baseline``, ``batched`` and ``ceiling``
(``bench.contenders``), and ``unchecked``, a diagnostic: the real consumer without its payload
check.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from bench.contenders import BATCHED_LUA, Baseline, Batched, Ceiling, Tracker, unchecked_entry
from consumer import scripts
from consumer.message import check_entry
from consumer.service import Consumer, tune_gc
from consumer.settle import Fate, Settled
from shared.connection import connect
from shared.group import ensure_group
from shared.keys import Keys
from shared.settings import Settings

CONTENDERS: dict[str, type[Baseline | Batched | Ceiling]] = {
    "baseline": Baseline, "batched": Batched, "ceiling": Ceiling}
ROLES = ("consumer", "unchecked", *CONTENDERS)
DEFAULT_MAX_SECONDS = 900.0  # a runner never outlives a forgotten parent by much
PROFILE_INTERVAL_S = 0.0005
MS_PER_S = 1000


def rss_kib(pid: int | str = "self") -> int:
    """Current resident set size from /proc (ru_maxrss would only give the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}), flush=True)


def count_acks(tracker: Tracker) -> Callable[[Settled], None]:
    """The consumer's seam (``Consumer.on_settled``): count its acks where they are confirmed,
    after a batch's persist+ack pipeline came back. (Counted here instead of from the metrics,
    so the measurement does not depend on how the consumer reports.)"""
    not_acked_here = {Fate.FAILED, Fate.SETTLED_ELSEWHERE, Fate.INVALID}

    def on_settled(settled: Settled) -> None:
        tracker.acked(o.entry_id for o in settled.outcomes if o.fate not in not_acked_here)

    return on_settled


async def prepare(role: str, redis: aioredis.Redis, keys: Keys) -> None:
    """The group, and the role's scripts loaded before ``go``: no load in what is measured."""
    await ensure_group(redis, keys)
    if role in ("consumer", "unchecked"):
        for name in scripts.ALL:
            await redis.script_load(scripts.script(name).body)
    elif role == "batched":
        await redis.script_load(BATCHED_LUA)


def make_work(role: str, redis: aioredis.Redis, keys: Keys, settings: Settings,
              tracker: Tracker) -> tuple[Callable[[], Coroutine[Any, Any, None]], asyncio.Event]:
    """The contender's main coroutine, and the event that stops it gracefully."""
    if role in ("consumer", "unchecked"):
        # The diagnostic "unchecked": no payload decode + validation.
        consumer = Consumer(settings, registry=CollectorRegistry(),
                            check=unchecked_entry if role == "unchecked" else check_entry,
                            on_settled=count_acks(tracker))
        tune_gc()  # as `regionstream consume` does
        return consumer.run, consumer.stop
    contender = CONTENDERS[role](redis, keys, settings, settings.name, tracker)
    return contender.run, contender.stop


async def stdin_lines() -> asyncio.StreamReader:
    """stdin as an asyncio stream (no reader thread: a pending read must be cancellable)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def read_command(stdin: asyncio.StreamReader) -> str:
    line = await stdin.readline()
    return line.decode().strip() or "stop"  # EOF: the parent is gone


def settings_of(args: argparse.Namespace, **more: object) -> Settings:
    """A runner's settings from its command line (no environment)."""
    return Settings.load({
        "redis_url": args.url, "stream": args.stream, "group": args.group,
        "prefix": args.prefix, "name": args.name, "workers": args.workers,
        "batch": args.batch, "block_ms": args.block_ms, "grace_s": args.grace_s, **more,
    }, env={})


async def run(args: argparse.Namespace) -> None:
    settings = settings_of(args, retention_s=args.retention_s)
    keys = settings.keys
    # redis-py's default 5 s socket timeout would cut a longer blocking read short.
    redis = (connect(settings.redis_url, socket_timeout=None) if args.long_reads
             else connect(settings.redis_url))
    tracker = Tracker(keep_latency=args.latency_file is not None)
    await prepare(args.role, redis, keys)
    work, stop_event = make_work(args.role, redis, keys, settings, tracker)
    stdin = await stdin_lines()
    emit("ready", pid=os.getpid())
    if await read_command(stdin) != "go":
        return
    profiler = _start_profiler() if args.profile else None
    t_go, cpu_go = time.time(), cpu_s()
    task = asyncio.create_task(work())
    await run_until_stopped(task, stdin, stop_event, args.max_seconds,
                            settings.block_ms / MS_PER_S + settings.grace_s)
    cpu_done = cpu_s()
    if profiler is not None:
        _write_profile(profiler, args.profile)
    if args.latency_file:
        await asyncio.to_thread(Path(args.latency_file).write_text,
                                json.dumps(tracker.latencies_s))
    emit("done", acked=tracker.count, t_go=t_go, t_first=tracker.t_first,
         t_last=tracker.t_last, cpu_s=cpu_done - cpu_go, rss_kib=rss_kib(),
         maxrss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    await redis.aclose()


async def run_until_stopped(task: asyncio.Task[None], stdin: asyncio.StreamReader,
                            stop_event: asyncio.Event, max_seconds: float, within_s: float
                            ) -> None:
    """Until the parent says ``stop`` (or ``max_seconds``, or the contender dies), then a
    graceful stop within ``within_s`` (the consumer runners share this protocol)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_until_stop(task, stdin), max_seconds)
    await _finish(task, stop_event, within_s)


async def _until_stop(task: asyncio.Task[None], stdin: asyncio.StreamReader) -> None:
    """Wait for ``stop`` from the parent; a contender that dies meanwhile ends the wait."""
    command = asyncio.ensure_future(read_command(stdin))
    try:
        await asyncio.wait({task, command}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        command.cancel()
    if task.done():
        task.result()  # re-raise a contender's crash


async def _finish(task: asyncio.Task[None], stop_event: asyncio.Event, within_s: float
                  ) -> None:
    """Graceful stop: the contender finishes what it holds (a blocking read returns within
    block_ms); past ``within_s`` it is cancelled."""
    stop_event.set()
    done, _ = await asyncio.wait({task}, timeout=within_s)
    if not done:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _start_profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("--profile needs pyinstrument, of the locked bench set: run it "
                         "through `make bench` (requirements/bench.txt)") from None
    profiler = Profiler(interval=PROFILE_INTERVAL_S, async_mode="disabled")
    profiler.start()
    return profiler


def _write_profile(profiler: Any, path: str) -> None:
    profiler.stop()
    Path(path).with_suffix(".txt").write_text(
        profiler.output_text(unicode=False, color=False, show_all=False))
    Path(path).with_suffix(".html").write_text(profiler.output_html())


def contender_parser(prog: str, roles: Sequence[str]) -> argparse.ArgumentParser:
    """The arguments every runner takes (the parent's Spec writes them)."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("role", choices=roles)
    for name in ("--url", "--stream", "--group", "--prefix", "--name"):
        p.add_argument(name, required=True)
    for name in ("--workers", "--batch", "--block-ms"):
        p.add_argument(name, type=int, default=None)
    p.add_argument("--grace-s", type=float, default=None)
    p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = contender_parser("python -m bench.runner", ROLES)
    p.add_argument("--retention-s", type=int, default=None)
    p.add_argument("--long-reads", action="store_true",
                   help="no socket timeout, for a --block-ms over 5 s")
    p.add_argument("--latency-file", default=None)
    p.add_argument("--profile", default=None, help="write a pyinstrument profile here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
