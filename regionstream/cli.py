"""The ``regionstream`` command: produce, consume, show, top, demo, pending, replay, acl, schema.

Exit codes: ``regionstream.parser.EXIT_CODES``, the one table of them (``regionstream --help``
lists it). A long-running command (produce, consume, top, demo) stops gracefully on SIGINT or
SIGTERM and exits at once, 130, on a second one (``regionstream.runtime``).

The grammar is ``regionstream.parser`` (it imports nothing heavy: ``--help`` stays fast); what
every command runs in (its deployment, metrics, signals, and the one table from a failure to
an exit code) is ``regionstream.runtime``; each command below imports what it needs when it
runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine, Sequence

from regionstream.output import guard_stdout, unguard_stdout
from regionstream.parser import DEMO_NAMES, PROG, UsageError, build_parser
from regionstream.runtime import (
    EXIT_OK,
    EXIT_REJECTED,
    LOG_FORMAT,
    exit_code,
    require_existing,
    session,
)

# Not typing.TYPE_CHECKING: importing typing costs ``--help`` a few ms (mypy and ruff treat a
# module's own TYPE_CHECKING = False the same way; see regionstream/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from shared.settings import Settings

__all__ = ["DEMO_NAMES", "build_parser", "main", "settings_from"]


def settings_from(args: argparse.Namespace) -> Settings:
    from shared.settings import Settings, flag_fields

    flags = {k: getattr(args, k) for k in flag_fields() if hasattr(args, k)}
    return Settings.load(flags)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (see the module docstring).

    Whatever the command, standard output that cannot be written (a reader that went away:
    ``regionstream pending --json | head -1``; a full disk; stdout closed) ends it with at
    most one line, exit 1, never a traceback: this is the one place that handles it
    (``regionstream.output``, and its entry in ``runtime``'s table)."""
    if sys.stderr is None:  # started with stderr closed: messages go nowhere, not to stdout
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
    guard_stdout()
    try:
        try:
            code = _main(argv)
        except SystemExit:  # --help, --version
            sys.stdout.flush()
            raise
        sys.stdout.flush()  # a block-buffered pipe's closed reader shows here, not at print
    except Exception as exc:  # the flushes: standard output lost
        lost = exit_code(exc, None)
        if lost is None:
            raise
        return lost
    finally:
        unguard_stdout()
    return code


def _main(argv: Sequence[str] | None) -> int:
    settings: Settings | None = None
    try:
        args = build_parser().parse_args(argv)
        if args.command == "schema":  # needs no settings: a bad REGIONSTREAM_* cannot stop it
            return cmd_schema()
        settings = settings_from(args)
        _check_source(args)
        _check_count(args, settings)
        from shared import failpoints

        failpoints.arm()
        import logging

        logging.basicConfig(level=getattr(args, "log_level", "INFO"), stream=sys.stderr,
                            format=LOG_FORMAT)
        import asyncio

        return asyncio.run(COMMANDS[args.command](args, settings))
    except SystemExit:  # --help, --version: not a failure (nor a reason to load the table)
        raise
    except BaseException as exc:  # the table says which are failures
        code = exit_code(exc, settings)
        if code is None:
            raise
        return code


def _check_source(args: argparse.Namespace) -> None:
    """Refuse produce flags the chosen source would ignore, and open a --source FILE, before
    anything connects: a missing file or a directory must be one line, and must not leave a
    stream and group created behind it."""
    if getattr(args, "command", None) != "produce":
        return
    source = args.source
    if source != "synthetic":  # a FILE or stdin is published once, line by line
        given = {"--count": args.count is not None, "--once": args.once,
                 "--interval": args.interval_s is not None, "--seed": args.seed is not None}
        flag = next((f for f, on in given.items() if on), None)
        if flag is not None:
            raise UsageError(f"{PROG} produce: --source {source!r} conflicts with {flag}: "
                             f"{flag} drives the synthetic source; give one or the other")
    elif args.chunk is not None and args.count is None:
        raise UsageError(f"{PROG} produce: --chunk does nothing without --count or --source "
                         "FILE|-: a synthetic cycle is one snapshot per region, one round trip")
    elif args.max_bytes is not None:
        from producer.synthetic import MAX_ENCODED_BYTES

        mode = "--count" if args.count is not None else "synthetic cycles"
        raise UsageError(f"{PROG} produce: --max-bytes does nothing with {mode}: it limits "
                         f"--source FILE|- lines (synthetic snapshots are at most "
                         f"{MAX_ENCODED_BYTES} bytes)")
    if source == "-":
        # fd 0 itself, not sys.stdin (None when closed): once Redis is connected, a closed
        # fd 0 could be a reused socket.
        try:
            os.fstat(0)
        except OSError:
            raise UsageError(f"{PROG} produce: --source -: standard input is closed") from None
        return
    if source == "synthetic":
        return
    try:
        with open(source, "rb"):
            pass
    except OSError as exc:
        raise UsageError(f"{PROG} produce: --source {source!r}: {exc.strerror or exc}") from None


def _check_count(args: argparse.Namespace, settings: Settings) -> None:
    """A load run steps back one dedup bucket per round of regions and reasons: with a large
    window or count it would reach past the retention and be dead-lettered on arrival."""
    count = getattr(args, "count", None)
    if not count:
        return
    from producer.synthetic import count_reach_ms

    reach = count_reach_ms(count, len(settings.regions), settings.dedup_window_ms)
    if reach >= settings.retention_ms:
        day = 86_400_000
        raise UsageError(
            f"{PROG} produce: --count {count} reaches back {reach / day:.0f} days with a "
            f"{settings.dedup_window_s} s dedup window, past the {settings.retention_ms / day:.0f}"
            "-day retention: lower --count or raise REGIONSTREAM_RETENTION_S")


async def cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    from producer.service import Producer
    from producer.synthetic import MAX_ENCODED_BYTES

    # A limit from the environment that the synthetic source cannot meet: refused before
    # connecting. (A timeout or host for a feature switched off is moot, not a conflict: a
    # template that sets --min-replicas 0 with a timeout stays valid.)
    if args.source == "synthetic" and settings.max_bytes < MAX_ENCODED_BYTES:
        raise UsageError(f"{PROG} produce: REGIONSTREAM_MAX_BYTES {settings.max_bytes} is below "
                         f"the largest synthetic snapshot ({MAX_ENCODED_BYTES} bytes): the "
                         "consumer would dead-letter them")
    producer = Producer(settings, seed=args.seed)
    async with session(settings, subset=False, writes=True, stop=producer.stop,
                       registry=producer.registry, cadence_s=settings.interval_s) as deployment:
        report = await producer.run(deployment, once=args.once, count=args.count,
                                    source=args.source, progress=sys.stderr.isatty())
    print(f"published {report.published} snapshot(s)"
          + (f", rejected {report.rejected} line(s)" if report.rejected else ""),
          file=sys.stderr)
    return EXIT_REJECTED if report.rejected else EXIT_OK


async def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.service import Consumer, tune_gc
    from consumer.service import log as consumer_log

    def finishing(signal: str) -> None:
        consumer_log.info("%s: finishing in-flight work (grace %.1fs)", signal, settings.grace_s)

    consumer = Consumer(settings)
    tune_gc()
    async with session(settings, writes=True, stop=consumer.stop, registry=consumer.registry,
                       on_first=finishing) as deployment:
        # Its workers get clients of their own made from it: see Consumer.run.
        await consumer.run(deployment, drain=args.drain)
    return EXIT_OK


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream.show import show

    async with session(settings, subset=False) as deployment:
        # on a cluster, the node holding the region's keys
        client = deployment.client_for_region(settings.keys, args.region)
        return await show(client, settings, args.region, as_json=args.json)


async def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream import opscli

    async with session(settings) as deployment:
        await require_existing(deployment, settings)
        return await opscli.cmd_pending(args, settings, deployment)


async def cmd_acl(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream import opscli

    return await opscli.cmd_acl(args, settings)


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream import opscli

    async with session(settings, writes=not args.dry_run) as deployment:
        # --range re-drives the stream's history and acknowledges nothing: no group needed.
        await require_existing(deployment, settings, dlq=args.dlq, group=not args.range)
        return await opscli.cmd_replay(args, settings, deployment)


async def cmd_top(args: argparse.Namespace, settings: Settings) -> int:
    import asyncio

    from regionstream.top import run_top

    stop = asyncio.Event()
    async with session(settings, stop=stop) as deployment:
        await require_existing(deployment, settings)
        return await run_top(deployment, settings, once=args.once, plain=args.plain,
                             every=args.refresh, stop=stop)


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import dataclasses

    from regionstream.demo import run_demo

    explicit = bool(args.redis_url or os.environ.get("REGIONSTREAM_REDIS_URL"))

    # Names of its own unless told otherwise (DEMO_NAMES, what `demo --help` shows): on a Redis
    # the user pointed at (maybe a real one) it never mixes synthetic data into production keys.
    def pick(name: str) -> str:
        given = getattr(args, name) is not None or "REGIONSTREAM_" + name.upper() in os.environ
        return str(getattr(settings, name)) if given else DEMO_NAMES[name]

    settings = dataclasses.replace(settings, stream=pick("stream"), group=pick("group"),
                                   prefix=pick("prefix"))
    return await run_demo(settings, duration=args.duration, interval_s=args.interval_s,
                          workers=args.workers, plain=args.plain or not sys.stdout.isatty(),
                          explicit_url=explicit)


def cmd_schema() -> int:
    """The snapshot's JSON Schema on stdout; connects to nothing, reads no setting."""
    import json

    from shared.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "produce": cmd_produce, "consume": cmd_consume, "show": cmd_show, "demo": cmd_demo,
    "top": cmd_top, "pending": cmd_pending, "replay": cmd_replay, "acl": cmd_acl,
}
