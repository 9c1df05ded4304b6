"""``regionstream pending`` and ``regionstream replay``: output as a table, or JSON; and
``regionstream acl``: the Redis ACL file for the configured names."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from rich.console import Console
from rich.table import Table

from consumer.ops import PendingReport, pending_report, replay_dlq, replay_pending, replay_range
from regionstream.view import age_text
from shared.keys import is_sharded
from shared.settings import Settings
from shared.shards import Deployment

# A stream id as XRANGE takes it: -, +, <ms> or <ms>-<seq>, the numbers after an optional "("
# (exclusive). Each part is a 64-bit unsigned integer.
_STREAM_ID = re.compile(r"\(?(\d+)(?:-(\d+))?")


def is_stream_id(text: str) -> bool:
    if text in ("-", "+"):
        return True
    m = _STREAM_ID.fullmatch(text)
    return m is not None and all(int(g) < 2**64 for g in m.groups() if g is not None)


class _RangeAction(argparse.Action):
    """--range START END, each checked before anything connects: Redis's own complaint
    ("Invalid stream ID") says neither which argument was wrong nor what it was."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        assert isinstance(values, list)  # nargs=2
        for label, value in zip(("START", "END"), values, strict=True):
            if not is_stream_id(value):
                parser.error(f"--range {label}: not a stream id: {value!r} (expected -, +, "
                             "<ms> or <ms>-<seq>, a number optionally after '(' to exclude it)")
        setattr(namespace, self.dest, values)


def add_parsers(sub: Any, common: Any, sharded: Any, integer: Any, positive_int: Any) -> None:
    p = sub.add_parser("pending", help="who holds what: per-consumer pending, lag, DLQ")
    p.add_argument("--json", action="store_true")
    sharded(p)

    r = sub.add_parser("replay", help="re-drive dead letters, a dead consumer's pending "
                       "entries, or a range of history")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--dlq", action="store_true", help="move dead letters back onto the stream")
    what.add_argument("--pending", action="store_true",
                      help="claim and process now what a (dead) consumer holds")
    what.add_argument("--range", nargs=2, metavar=("START", "END"), action=_RangeAction,
                      help="re-drive stream entries START..END through dedup (idempotent)")
    r.add_argument("--region", help="--dlq: only this region")
    r.add_argument("--reason", help="--dlq: only dead letters whose reason contains TEXT")
    r.add_argument("--limit", type=positive_int, help="--dlq: at most N entries (N > 0)")
    r.add_argument("--consumer", help="--pending: only this consumer's entries")
    r.add_argument("--min-idle-ms", type=integer, default=None, dest="replay_min_idle_ms",
                   help="--pending: only entries idle at least this long (default: the "
                   "consumer's --min-idle-ms, 60000; 0 for a consumer known to be dead)")
    r.add_argument("--dry-run", action="store_true", help="list what would be done, do nothing")
    r.add_argument("--json", action="store_true")
    sharded(r)

    a = sub.add_parser("acl", help="print the Redis ACL users (producer, consumer, read-only "
                       "operator) for --stream and --prefix; connects to nothing")
    common(a)


def _console() -> Console:
    return Console(file=sys.stdout, width=max(100, Console().width))


def print_pending(report: PendingReport) -> None:
    c = _console()
    if not report.shards or not any(r.group_exists for r in report.shards):
        c.print(f"stream {report.stream!r} has no group {report.group!r}")
        return
    lag = "?" if report.lag is None else str(report.lag)
    c.print(f"stream [bold]{report.stream}[/] length {report.stream_length}  group "
            f"[bold]{report.group}[/] lag {lag} pending {report.pending}  dead letters "
            f"{report.dlq_length}")
    sharded = is_sharded(r.shard for r in report.shards)
    if sharded:
        c.print(shard_table(report))
    if not report.consumers:
        c.print("no consumers")
        return
    t = Table(*(("shard",) if sharded else ()), "consumer", "pending", "idle", "oldest pending",
              "max deliveries")
    for row in report.consumers:
        most = f"{row.max_deliveries}" + ("" if row.scanned_all else "+")
        t.add_row(*((row.shard,) if sharded else ()), row.name, str(row.pending),
                  age_text(row.idle_s), age_text(row.oldest_age_s),
                  most if row.pending else "-")
    c.print(t)


def shard_table(report: PendingReport) -> Table:
    """A row per shard, then the deployment's total."""
    t = Table("shard", "stream", "length", "lag", "pending", "oldest pending", "dead letters",
              title="shards", title_justify="left")
    for r in report.shards:
        t.add_row(r.shard, r.stream if r.group_exists else f"{r.stream} (no group)",
                  str(r.stream_length), "?" if r.lag is None else str(r.lag), str(r.pending),
                  age_text(r.oldest_pending_age_s), str(r.dlq_length))
    oldest = [r.oldest_pending_age_s for r in report.shards
              if r.oldest_pending_age_s is not None]
    t.add_row("total", f"{len(report.shards)} shards", str(report.stream_length),
              "?" if report.lag is None else str(report.lag), str(report.pending),
              age_text(max(oldest) if oldest else None), str(report.dlq_length),
              style="bold")
    return t


async def cmd_pending(args: argparse.Namespace, settings: Settings, deployment: Deployment
                      ) -> int:
    report = await pending_report(deployment, settings.keys)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_pending(report)
    return 0


async def cmd_replay(args: argparse.Namespace, settings: Settings, redis: Deployment
                     ) -> int:
    keys = settings.keys
    verb = "would move" if args.dry_run else "moved"
    if args.dlq:
        moved = await replay_dlq(redis, keys, region=args.region, reason=args.reason,
                                 limit=args.limit, dry_run=args.dry_run)
        out: dict[str, Any] = {"dry_run": args.dry_run, "entries": [asdict(m) for m in moved]}
        rows: list[tuple[str, ...]] = [(m.shard, m.id, m.region, m.reason, m.new_id or "-")
                                       for m in moved]
        header: tuple[str, ...] = ("shard", "dead letter", "region", "reason", "new stream id")
        onto = (keys.stream if redis.layout == "none"
                else f"their shards of {keys.stream} ({len(redis.shards)} shards)")
        summary = f"{verb} {len(moved)} dead letter(s) back onto {onto}"
    else:
        if args.pending:
            min_idle = (settings.min_idle_ms if args.replay_min_idle_ms is None
                        else args.replay_min_idle_ms)
            done = await replay_pending(redis, keys, settings, consumer=args.consumer,
                                        min_idle_ms=min_idle, dry_run=args.dry_run,
                                        as_name=keys.consumer_name(settings.name, "replay"))
            what = f"pending entries of {args.consumer or 'any consumer'}"
        else:
            start, end = args.range
            done = await replay_range(redis, keys, settings, start=start, end=end,
                                      dry_run=args.dry_run)
            what = f"stream entries {start}..{end}"
        out = {"dry_run": args.dry_run, "ids": done.ids, "outcomes": done.outcomes}
        rows = [(i,) for i in done.ids] if args.dry_run else [
            (k, str(v)) for k, v in sorted(done.outcomes.items())]
        header = ("entry",) if args.dry_run else ("outcome", "entries")
        verb = "would replay" if args.dry_run else "replayed"
        summary = f"{verb} {len(done.ids)} {what}"
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    c = _console()
    if rows:
        t = Table(*header)
        for row in rows:
            t.add_row(*row)
        c.print(t)
    c.print(summary)
    return 0


async def cmd_acl(args: argparse.Namespace, settings: Settings) -> int:
    """The ACL file on stdout (``regionstream acl > users.acl``), what it cannot say in
    comments on stderr. Async only to fit the CLI's command table: it connects to nothing."""
    from shared.acl import notes, render

    try:
        text = render(settings.keys)
    except ValueError as exc:
        print(f"regionstream acl: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    sys.stderr.write(notes(settings.keys))
    return 0
