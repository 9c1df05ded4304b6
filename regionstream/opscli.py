"""``regionstream pending`` and ``regionstream replay``: output as a table, or JSON; and
``regionstream acl``: the Redis ACL file for the configured names."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from consumer.ops import (
    DELETED,
    Moved,
    PendingReport,
    Replayed,
    pending_report,
    replay_dlq,
    replay_pending,
    replay_range,
)
from regionstream.output import OutputLost
from regionstream.runtime import EXIT_OK, EXIT_USAGE
from regionstream.view import age_text, plain, shard_table
from shared.ids import text
from shared.keys import Keys, is_sharded
from shared.settings import Settings
from shared.shards import Deployment


def _console() -> Console:
    return Console(file=sys.stdout, width=max(100, Console().width))


def print_pending(report: PendingReport) -> None:
    c = _console()
    if report.layout_warning:
        c.print(plain(f"warning: {report.layout_warning}", "bold red"), soft_wrap=True)
    if not report.shards or not any(r.group_exists for r in report.shards):
        c.print(plain(f"stream {report.stream!r} has no group {report.group!r}"))
        return
    lag = "?" if report.lag is None else str(report.lag)
    c.print(Text.assemble("stream ", plain(report.stream, "bold"),
                          f" length {report.stream_length}  group ", plain(report.group, "bold"),
                          f" lag {lag} pending {report.pending}  dead letters "
                          f"{report.dlq_length}"))
    sharded = is_sharded(r.shard for r in report.shards)
    if sharded:
        c.print(shard_table(report.shards, streams=True))
    if not report.consumers:
        c.print("no consumers")
        return
    t = Table(*(("shard",) if sharded else ()), "consumer", "pending", "idle", "oldest pending",
              "max deliveries")
    for row in report.consumers:
        most = f"{row.max_deliveries}" + ("" if row.scanned_all else "+")
        t.add_row(*((plain(row.shard),) if sharded else ()), plain(row.name), str(row.pending),
                  age_text(row.idle_s), age_text(row.oldest_age_s),
                  most if row.pending else "-")
    c.print(t)


async def cmd_pending(args: argparse.Namespace, settings: Settings, deployment: Deployment
                      ) -> int:
    report = await pending_report(deployment, settings.keys, settings.regions)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print_pending(report)
    return EXIT_OK


@dataclass
class _Report:
    """What a replay prints: the JSON document, or a table and a summary line. Built from
    plain values only, so printing it cannot fail on what Redis held."""

    out: dict[str, Any]
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    summary: str

    def show(self, as_json: bool) -> None:
        """The report on stdout; when stdout cannot take it (closed, full, its reader gone),
        on stderr as JSON instead, then the failure goes up: a replay that moved entries
        must say what it moved somewhere."""
        try:
            self._show(as_json)
        except OutputLost:
            print(f"regionstream: standard output failed; the report follows here:\n"
                  f"{json.dumps(self.out, indent=2)}", file=sys.stderr)
            raise

    def _show(self, as_json: bool) -> None:
        if as_json:
            print(json.dumps(self.out, indent=2))
            return
        c = _console()
        if self.rows:
            t = Table(*self.header)
            for row in self.rows:
                t.add_row(*(plain(cell) for cell in row))
            c.print(t)
        c.print(plain(self.summary))


def _dlq_report(moved: list[Moved], keys: Keys, redis: Deployment, dry_run: bool,
                stopped: bool = False) -> _Report:
    verb = "would move" if dry_run else "moved"
    onto = (keys.stream if redis.layout == "none"
            else f"their shards of {keys.stream} ({len(redis.shards)} shards)")
    summary = f"{verb} {len(moved)} dead letter(s) back onto {onto}"
    if stopped:
        summary += ", then the replay stopped on the error below"
    return _Report({"dry_run": dry_run, "complete": not stopped,
                    "entries": [asdict(m) for m in moved]},
                   ("shard", "dead letter", "region", "reason", "new stream id"),
                   [(m.shard, m.id, m.region, m.reason, m.new_id or m.skipped or "-")
                    for m in moved], summary)


def _deleted_note(done: Replayed) -> str:
    gone = done.outcomes.get(DELETED, 0)
    return (f" ({gone} of them deleted from the stream: dropped from the pending list, "
            "nothing to settle)") if gone else ""


def _replayed_report(done: Replayed, what: str, dry_run: bool, stopped: bool = False
                     ) -> _Report:
    header: tuple[str, ...] = ("entry",) if dry_run else ("outcome", "entries")
    rows: list[tuple[str, ...]] = ([(i,) for i in done.ids] if dry_run else
                                   [(k, str(v)) for k, v in sorted(done.outcomes.items())])
    settled = sum(done.outcomes.values())
    summary = (f"would replay {len(done.ids)} {what}" if dry_run
               else f"replayed {len(done.ids)} {what}" + _deleted_note(done) if not stopped
               else f"settled {settled} {what}, then the replay stopped on the error below")
    return _Report({"dry_run": dry_run, "complete": not stopped, "ids": done.ids,
                    "outcomes": done.outcomes}, header, rows, summary)


async def cmd_replay(args: argparse.Namespace, settings: Settings, redis: Deployment
                     ) -> int:
    """Replay, then report. When a step fails half-way (Redis refuses a move, the connection
    drops, Ctrl-C), what was already done is reported before the error goes up to ``main``
    for its one line: an operator never has to guess what a failed replay changed."""
    keys, dry_run = settings.keys, args.dry_run
    if args.dlq:
        moved: list[Moved] = []
        try:
            await replay_dlq(redis, keys, region=args.region, reason=args.reason,
                             limit=args.limit, dry_run=dry_run, moved=moved)
        except BaseException:
            if not dry_run:
                _dlq_report(moved, keys, redis, dry_run, stopped=True).show(args.json)
            raise
        _dlq_report(moved, keys, redis, dry_run).show(args.json)
        return EXIT_OK
    done = Replayed()
    if args.pending:
        # As typed: argv that is not UTF-8 arrives as surrogate escapes; shown as \x escapes.
        named = args.consumer and text(args.consumer.encode("utf-8", "surrogateescape"))
        what = f"pending entries of {named or 'any consumer'}"
        min_idle = (settings.min_idle_ms if args.replay_min_idle_ms is None
                    else args.replay_min_idle_ms)
        replay = replay_pending(redis, keys, settings, consumer=args.consumer,
                                min_idle_ms=min_idle, dry_run=dry_run, result=done,
                                as_name=keys.consumer_name(settings.name, "replay"))
    else:
        start, end = args.range
        given = getattr(args, "range_given", args.range)  # a time, as typed, beside its id
        what = f"stream entries {start}..{end}" + (
            f" ({given[0]}..{given[1]})" if list(given) != [start, end] else "")
        replay = replay_range(redis, keys, settings, start=start, end=end, dry_run=dry_run,
                              result=done)
    try:
        await replay
    except BaseException:
        if not dry_run:
            _replayed_report(done, what, dry_run, stopped=True).show(args.json)
        raise
    _replayed_report(done, what, dry_run).show(args.json)
    return EXIT_OK


async def cmd_acl(args: argparse.Namespace, settings: Settings) -> int:
    """The ACL file on stdout (``regionstream acl > users.acl``), what it cannot say in
    comments on stderr. Async only to fit the CLI's command table: it connects to nothing."""
    from shared.acl import notes, render

    try:
        text = render(settings.keys)
    except ValueError as exc:
        print(f"regionstream acl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    sys.stdout.write(text)
    sys.stderr.write(notes(settings.keys))
    return EXIT_OK
