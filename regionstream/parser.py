"""The command line's grammar: every command, its flags and the checks of their values.

Building the parser imports nothing but argparse: ``regionstream --help`` (and a bad flag) is
answered without loading redis, rich, prometheus_client, msgspec or the services. What a flag's
value needs beyond that (the settings' bounds) is imported only when the flag is given. The
commands themselves run from ``regionstream.cli``.
"""

from __future__ import annotations

import argparse
import math
import re

# Not typing.TYPE_CHECKING: importing typing costs ``--help`` a few ms (mypy and ruff treat a
# module's own TYPE_CHECKING = False the same way; see regionstream/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

PROG = "regionstream"
# Faster redraws than this only add load on Redis (three round trips a frame) and flicker.
MIN_REFRESH_S = 0.1

# The exit codes, the one table of them: ``regionstream --help`` lists it (its epilog), the
# README's "Exit codes:" paragraph must name the same codes (tests/test_cli.py), and
# ``regionstream.runtime`` defines its EXIT_* constants to match.
EXIT_CODES: tuple[tuple[int, str], ...] = (
    (0, "ok"),
    (1, "runtime failure: Redis unreachable, a stream or group that does not exist, nothing "
        "to show, standard output that cannot be written"),
    (2, "bad usage: a bad flag, setting, URL or file (one line naming it, never a password)"),
    (3, "Redis refused what no retry fixes: the credentials, a missing ACL permission, a key "
        "of another type, an evicting maxmemory-policy; fix it, then restart (a supervisor "
        "should not restart-loop on 3)"),
    (4, "some source lines were rejected (the rest was published)"),
    (130, "interrupted: Ctrl-C, or a second SIGINT or SIGTERM while stopping"),
)

# ``demo`` on a Redis given by --redis-url or REGIONSTREAM_REDIS_URL (maybe a real one) writes
# under names of its own unless told otherwise: it never mixes synthetic data into production
# keys. Its private server uses them too, so that ``demo --help`` has one default to show.
DEMO_NAMES = {"stream": "regionstream-demo", "group": "demo-persisters",
              "prefix": "regionstream-demo"}


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage dump) and exit code 2, a
    misspelled flag or choice gets a suggestion, and a command may check its flags together
    (``check``: what one mode of ``replay`` would silently ignore)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the top-level parser's subcommands, by name
        self.check: Callable[[argparse.Namespace], None] | None = None

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}{_choice_hint(message)}")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: None = None) -> argparse.Namespace:
        """As argparse's, with an unknown flag said by the command it was given to, with the
        nearest flag it has ("did you mean --batch?"), then the command's own check."""
        parsed, extras = self.parse_known_args(args, namespace)
        command = self.commands.get(getattr(parsed, "command", None) or "")
        at = command or self
        if extras:
            raise UsageError(f"{at.prog}: unrecognized arguments: {' '.join(extras)}"
                             f"{at.flag_hint(extras)}")
        if at.check is not None:
            at.check(parsed)
        return parsed

    def _parse_optional(self, arg_string: str) -> Any:
        # A relative time (--range -1h +) is a value, not a flag.
        if _RELATIVE_TIME.fullmatch(arg_string):
            return None
        return super()._parse_optional(arg_string)

    def options(self) -> dict[str, str]:
        """Each option string of this parser (``--grace``) -> the attribute it sets
        (``grace_s``)."""
        return {opt: action.dest for action in self._actions for opt in action.option_strings}

    def offered(self) -> list[argparse.Action]:
        """The arguments ``--help`` shows (hidden ones left out)."""
        return [a for a in self._actions if a.help != argparse.SUPPRESS]

    def flag_hint(self, unknown: Sequence[str]) -> str:
        """"; did you mean --batch?" for the flags among ``unknown`` close to one of this
        command's (difflib, imported only here: on the error path)."""
        import difflib

        offered = [o for a in self.offered() for o in a.option_strings]
        hints = []
        for arg in unknown:
            flag = arg.split("=", 1)[0]
            if not flag.startswith("-") or self._negative_number_matcher.match(flag):
                continue
            near = difflib.get_close_matches(flag, offered, n=1)
            if near:
                hints.append((flag, near[0]))
        if not hints:
            return ""
        if len(hints) == 1:
            return f"; did you mean {hints[0][1]}?"
        return "; did you mean " + ", ".join(f"{near} for {flag}" for flag, near in hints) + "?"


def _choice_hint(message: str) -> str:
    """"; did you mean produce?" after argparse's "invalid choice: 'prodcue' (choose from
    ...)" when one choice is close."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if found is None:
        return ""
    import difflib

    near = difflib.get_close_matches(found.group(1), re.findall(r"'([^']*)'", found.group(2)),
                                     n=1)
    return f"; did you mean {near[0]}?" if near else ""


class _Formatter(argparse.HelpFormatter):
    """The top-level help: its epilog keeps its lines (the exit codes, one per line), each
    wrapped under its own text."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import textwrap

        lines = []
        for line in text.splitlines():
            found = re.match(r"(\s*\d+\s+)", line)
            hang = " " * len(found.group(1)) if found else ""
            lines.append(textwrap.fill(line, width, initial_indent=indent,
                                       subsequent_indent=indent + hang) if line else "")
        return "\n".join(lines)


def exit_codes_text() -> str:
    """The epilog of ``regionstream --help``: every exit code, one per line."""
    return "exit codes:\n" + "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES)


class _Version(argparse.Action):
    """``--version``: the installed version, read (importlib.metadata, ~25 ms) only when asked."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS,
                 help: str = "show program's version number and exit") -> None:
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        import sys

        from regionstream import __version__

        print(f"{PROG} {__version__}", file=sys.stdout)  # on stdout, as argparse's own
        parser.exit()


def _positive_int(text: str) -> int:
    value = _int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (got {value})")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_number(text: str) -> float:
    value = _number(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0 (got {text})")
    return value


def _refresh(text: str) -> float:
    value = _positive_number(text)
    if value < MIN_REFRESH_S:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_REFRESH_S} s (got {text})")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _regions(text: str) -> tuple[str, ...]:
    """A comma-separated region list, as the settings read one (checked by them)."""
    from shared.settings import parse_regions

    return parse_regions(text)


def _idle_ms(text: str) -> int:
    """``replay --pending --min-idle-ms``: the consumer setting's range, and 0 (a consumer known
    to be dead). A value Redis refuses was an exit 1 after the replay had begun."""
    from shared.settings import MAX_MIN_IDLE_MS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 0 <= value <= MAX_MIN_IDLE_MS:
        raise argparse.ArgumentTypeError(
            f"must be 0..{MAX_MIN_IDLE_MS} ms (a week) (got {text})")
    return value


# A stream id as XRANGE takes it: -, +, <ms> or <ms>-<seq>, the numbers after an optional "("
# (exclusive). Each part is a 64-bit unsigned integer.
_STREAM_ID = re.compile(r"\(?([0-9]+)(?:-([0-9]+))?")


def is_stream_id(text: str) -> bool:
    if text in ("-", "+"):
        return True
    m = _STREAM_ID.fullmatch(text)
    return m is not None and all(int(g) < 2**64 for g in m.groups() if g is not None)


# A relative time, "that long ago": -30s, -15m, -1h, -1.5h, -2d, -1w.
_RELATIVE_TIME = re.compile(r"-([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m|h|d|w)")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000}
RANGE_HELP = ("re-drive stream entries START..END through dedup (idempotent); each a stream id "
              "(-, +, <ms> or <ms>-<seq>, '(' before one to exclude it), an ISO 8601 time "
              "(2026-12-06T10:00:00Z; UTC without an offset) or a time that long ago (-30m, "
              "-1h, -2d; units ms s m h d w): a time means the entries added from (START) or "
              "up to (END) that millisecond")


def range_bound(text: str, now_ms: int | None = None) -> str | None:
    """A --range bound as XRANGE takes it: a stream id as given, a time as its millisecond
    (the ids' first part); None when it is neither. ``now_ms``: for relative times."""
    if is_stream_id(text):
        return text
    relative = _RELATIVE_TIME.fullmatch(text)
    if relative:
        import time

        now = int(time.time() * 1000) if now_ms is None else now_ms
        ms = now - round(float(relative.group(1)) * _UNIT_MS[relative.group(2)])
    else:
        from datetime import UTC, datetime, timedelta

        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            return None
        if at.tzinfo is None:
            at = at.replace(tzinfo=UTC)
        ms = (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
    return str(ms) if 0 <= ms < 2**64 else None


class _RangeAction(argparse.Action):
    """--range START END, each checked before anything connects (Redis's own complaint,
    "Invalid stream ID", says neither which argument was wrong nor what it was), a time made
    the id of its millisecond. ``range_given``: the bounds as typed, for the report."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: str | Sequence[Any] | None, option_string: str | None = None) -> None:
        assert isinstance(values, list)  # nargs=2
        bounds = []
        for label, value in zip(("START", "END"), values, strict=True):
            bound = range_bound(value)
            if bound is None:
                parser.error(f"--range {label}: not a stream id or a time: {value!r} (expected "
                             "-, +, <ms> or <ms>-<seq> optionally after '(' to exclude it, an "
                             "ISO 8601 time such as 2026-12-06T10:00:00Z, or -30m, -1h, -2d)")
            bounds.append(bound)
        setattr(namespace, self.dest, bounds)
        namespace.range_given = list(values)


CONNECTION_GROUP = "connection (flags override REGIONSTREAM_* variables)"


def _connection(p: argparse.ArgumentParser, *, demo: bool = False, hidden: bool = False) -> None:
    """The connection flags and the names (stream, group, prefix). ``demo``: its defaults
    (its own server, ``DEMO_NAMES``). ``hidden``: accepted (a script may give every command
    the same flags) but not offered: ``acl`` connects to nothing."""
    g = p.add_argument_group(CONNECTION_GROUP)
    say: Callable[[str], str] = (lambda _: argparse.SUPPRESS) if hidden else (lambda h: h)
    if demo:
        url = ("default: a private redis-server on a free port, stopped on exit (in-process "
               "fakeredis without redis-server); a URL here or in REGIONSTREAM_REDIS_URL runs "
               "the demo on that Redis, under the names below unless given")
    else:
        url = ("redis://, rediss:// (TLS), unix:// or "
               "redis+sentinel://host:port[,host:port...]/<master>[/<db>]; "
               "env REGIONSTREAM_REDIS_URL, default redis://localhost:6379/0")
    g.add_argument("--redis-url", help=say(url))
    g.add_argument("--tls-ca", help=say("CA file that signed the server's certificate "
                                        "(rediss://); env REGIONSTREAM_TLS_CA"))
    g.add_argument("--tls-cert", help=say("client certificate, for servers that ask for one; "
                                          "env REGIONSTREAM_TLS_CERT"))
    g.add_argument("--tls-key", help=say("client certificate's key; env REGIONSTREAM_TLS_KEY"))
    if not hidden:
        _names(g, demo=demo)
    g.add_argument("--allow-eviction", action="store_true", default=None,
                   help=say("run even when Redis's maxmemory-policy may evict keys (data loss: "
                            "see Guarantees); env REGIONSTREAM_ALLOW_EVICTION (1/0, true/false, "
                            "yes/no)"))
    _log_level(p, hidden=hidden)


def _names(g: Any, *, demo: bool = False) -> None:
    if demo:
        g.add_argument("--stream", help=f"default {DEMO_NAMES['stream']}; env "
                       "REGIONSTREAM_STREAM")
        g.add_argument("--group", help=f"default {DEMO_NAMES['group']}; env REGIONSTREAM_GROUP")
        g.add_argument("--prefix", help=f"key prefix; default {DEMO_NAMES['prefix']}; env "
                       "REGIONSTREAM_PREFIX")
        return
    g.add_argument("--stream", help="env REGIONSTREAM_STREAM, default snapshots")
    g.add_argument("--group", help="env REGIONSTREAM_GROUP, default persisters")
    g.add_argument("--prefix", help="key prefix; env REGIONSTREAM_PREFIX, default intelligence")


def _log_level(p: argparse.ArgumentParser, *, hidden: bool = False) -> None:
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help=argparse.SUPPRESS if hidden else
                   "what is logged on stderr: DEBUG, INFO (the default), WARNING or ERROR")


def _shard_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard-by", choices=["auto", "none", "region"],
                   help="one stream (none) or one stream per region (region); default auto: "
                   "region on a Redis Cluster, none on a single server; env "
                   "REGIONSTREAM_SHARD_BY. Change it only on a drained deployment")


def _shards_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shards", type=_regions, metavar="REGION[,REGION...]",
                   help="only these regions' shards (--shard-by region); default all; env "
                   "REGIONSTREAM_SHARDS")


def _sharded(p: argparse.ArgumentParser) -> None:
    """Connection flags plus the shard selection: the operator commands."""
    _shard_flag(p)
    _shards_flag(p)
    _connection(p)


def _metrics_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=_int, help="Prometheus port (0 = off, the default)")
    p.add_argument("--metrics-host", help="address to bind metrics to (default 127.0.0.1)")


def build_parser() -> Parser:
    """The whole command line; ``.commands`` holds each command's own parser."""
    parser = Parser(prog=PROG, description="Regional snapshots through Redis Streams.",
                    epilog=exit_codes_text(), formatter_class=_Formatter)
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_produce, _add_consume, _add_show, _add_top, _add_demo, _add_pending,
                _add_replay, _add_acl, _add_schema):
        add(sub, parser.commands)
    return parser


def commands() -> dict[str, Parser]:
    """Each command's parser, by name (``commands()["consume"].options()``)."""
    return build_parser().commands


def _command(sub: Any, into: dict[str, Parser], name: str, help: str, description: str
             ) -> Parser:
    """A command: ``help`` is its line in ``regionstream --help``, ``description`` opens its
    own --help."""
    p: Parser = sub.add_parser(name, help=help, description=description)
    into[name] = p
    return p


def _add_produce(sub: Any, into: dict[str, Parser]) -> None:
    p = _command(sub, into, "produce", "publish snapshots to the stream",
                 "Publish regional snapshots to the stream: one cycle of every region "
                 "(--once), a cycle every --interval seconds (the default, upstream's 6 hours), "
                 "a load of --count distinct snapshots, or the JSON lines of --source FILE|- "
                 "once. Exit 4 when some source lines were rejected (the rest is published).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="publish one cycle and exit")
    mode.add_argument("--interval", type=_number, dest="interval_s",
                      help="seconds between cycles (default 21600, upstream's 6 hours)")
    mode.add_argument("--count", type=_positive_int,
                      help="load generator: N snapshots over the regions, all distinct")
    p.add_argument("--regions", type=_regions, help="comma-separated region ids")
    p.add_argument("--source", default="synthetic",
                   help="synthetic (default), a JSON-lines FILE, or - for stdin (a FILE or - "
                   "is published once: not with --once, --interval, --count or --seed)")
    p.add_argument("--chunk", type=_int, help="entries per pipelined round trip, with --count "
                   "or --source FILE|- (default 500)")
    p.add_argument("--max-bytes", type=_int, help="reject --source lines larger than this, which "
                   "the consumer would dead-letter (default 262144)")
    p.add_argument("--stream-retention", type=_int, dest="stream_retention_s",
                   help="seconds of acknowledged history to keep on the stream (default 86400)")
    p.add_argument("--seed", type=_int, help="seed of the synthetic source")
    _shard_flag(p)
    p.add_argument("--min-replicas", type=_int,
                   help="count a publish only once N replicas confirmed it (WAIT), publish it "
                   "again otherwise (default 0: no wait)")
    p.add_argument("--min-replicas-timeout-ms", type=_int,
                   help="how long a publish waits for --min-replicas (default 1000)")
    _metrics_flags(p)
    _connection(p)


def _add_consume(sub: Any, into: dict[str, Parser]) -> None:
    c = _command(sub, into, "consume", "run a group of workers persisting snapshots",
                 "Run a group of workers that read the stream through the consumer group, check "
                 "each snapshot and store it once: one per region, trigger and 15-minute bucket, "
                 "later ones are acknowledged as duplicates. What fails its check is "
                 "dead-lettered; what a dead worker held is reclaimed after --min-idle-ms. "
                 "SIGTERM lets in-flight work finish within --grace.")
    c.add_argument("--workers", type=_int, help="concurrent workers (default 4)")
    c.add_argument("--batch", type=_int, help="entries per read (default 200)")
    c.add_argument("--block-ms", type=_int, help="how long a read waits for entries (default 2000)")
    c.add_argument("--drain", action="store_true",
                   help="exit 0 once the group has no undelivered and no pending entries")
    c.add_argument("--name", help="consumer name prefix (default: the hostname); workers are "
                   "NAME-0..NAME-(N-1), stable across restarts")
    c.add_argument("--grace", type=_number, dest="grace_s",
                   help="seconds in-flight work gets after SIGTERM (default 10)")
    c.add_argument("--max-bytes", type=_int,
                   help="larger payloads are dead-lettered (default 262144)")
    c.add_argument("--regions", type=_regions, help="accepted region ids (default all)")
    c.add_argument("--min-idle-ms", type=_int,
                   help="reclaim entries idle this long from any consumer (default 60000)")
    c.add_argument("--claim-interval-ms", type=_int,
                   help="how often the reclaimer sweeps the pending list (default 10000)")
    c.add_argument("--max-deliveries", type=_int,
                   help="failed deliveries before an entry is dead-lettered (default 5)")
    c.add_argument("--retry-backoff-ms", type=_int,
                   help="pause before retrying entries whose persist failed (default 1000)")
    _shard_flag(c)
    _shards_flag(c)
    c.add_argument("--consumer-timeout", type=_number, dest="consumer_timeout_s",
                   help="forget consumers idle this many seconds with nothing pending "
                   "(default 3600)")
    _metrics_flags(c)
    _connection(c)


def _add_show(sub: Any, into: dict[str, Parser]) -> None:
    s = _command(sub, into, "show", "print the latest persisted snapshot of a region",
                 "Print the latest snapshot stored for REGION: a summary, or the stored JSON "
                 "(--json). Exit 1 when none is stored under --prefix.")
    s.add_argument("region", help="one of mena, east-asia, europe, north-america, south-asia, "
                   "latam, sub-saharan-africa, global")
    s.add_argument("--json", action="store_true", help="print the stored JSON")
    _connection(s)


# ``top``'s rates are over this window (regionstream.top): a producer's bursts every few
# seconds read as a steady rate, not 8.0/s, 0.0, 0.0, 8.0.
RATES_WINDOW_S = 10.0


def _add_top(sub: Any, into: dict[str, Parser]) -> None:
    t = _command(sub, into, "top",
                 "live view of the stream, group, DLQ and regions (Redis only)",
                 "A live view of the deployment, read from Redis alone (no metrics port): "
                 "stream length, lag, pending entries per consumer, dead letters, each region's "
                 f"latest snapshot, and rates over the last {RATES_WINDOW_S:.0f} s (at least "
                 "two frames): published, delivered, acked, persisted, duplicates and "
                 "dead-lettered. Duplicates are entries acked but neither persisted nor "
                 "dead-lettered (the dedup rule: one snapshot per region, trigger and "
                 "15-minute bucket), derived as acked - persisted - dead-lettered (persisted: "
                 "the growth of the regions' stored counts), never below 0. "
                 "Laid out for 80x24: the consumers come before the regions. Exit 1 when the "
                 "stream or its group does not exist.")
    t.add_argument("--once", action="store_true", help="print one frame and exit")
    t.add_argument("--plain", action="store_true", help="a summary line per refresh, no table")
    t.add_argument("--refresh", type=_refresh, default=1.0,
                   help=f"seconds between frames (default 1, at least {MIN_REFRESH_S})")
    t.add_argument("--regions", type=_regions, help="regions to show (default all)")
    _sharded(t)


def _add_demo(sub: Any, into: dict[str, Parser]) -> None:
    d = _command(sub, into, "demo", "producer + consumer group + live view, self-contained",
                 "A producer, a group of workers and the live view in one process, on a "
                 "private redis-server (or a Redis you name: --redis-url), until Ctrl-C or "
                 "--duration.")
    d.add_argument("--duration", type=_positive_number,
                   help="stop after S seconds (default: Ctrl-C)")
    d.add_argument("--interval", type=_number, dest="interval_s", default=2.0,
                   help="seconds between producer cycles (default 2)")
    d.add_argument("--workers", type=_int, default=4,
                   help="consumer workers (default 4)")
    d.add_argument("--plain", action="store_true", help="no live view: a line per cycle")
    _connection(d, demo=True)


def _add_pending(sub: Any, into: dict[str, Parser]) -> None:
    p = _command(sub, into, "pending", "who holds what: per-consumer pending, lag, DLQ",
                 "Who holds what: the group's lag, each consumer's pending entries (idle time, "
                 "oldest entry, most deliveries) and the dead letters, over every shard. Exit 1 "
                 "when the stream or group does not exist.")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    _sharded(p)


# Flags of one replay mode: given with another mode they would be ignored, so they are refused.
REPLAY_MODE_FLAGS = {"--region": "--dlq", "--reason": "--dlq", "--limit": "--dlq",
                     "--consumer": "--pending", "--min-idle-ms": "--pending"}


def _check_replay(args: argparse.Namespace, dests: dict[str, str]) -> None:
    """A flag of another mode than the one chosen: refused, not silently ignored."""
    mode = "--dlq" if args.dlq else "--pending" if args.pending else "--range"
    for flag, owner in REPLAY_MODE_FLAGS.items():
        if owner != mode and getattr(args, dests[flag]) is not None:
            raise UsageError(f"{PROG} replay: {flag} applies to replay {owner}, not to "
                             f"replay {mode}: leave it out")


def _add_replay(sub: Any, into: dict[str, Parser]) -> None:
    r = _command(sub, into, "replay", "re-drive dead letters, a dead consumer's pending "
                 "entries, or a range of history",
                 "Re-drive entries through the consumer's pipeline, one mode at a time: --dlq "
                 "moves dead letters back onto the stream (with --region, --reason, --limit); "
                 "--pending claims what a (dead) consumer holds and settles it now (with "
                 "--consumer, --min-idle-ms); --range re-drives history through dedup. A flag "
                 "of another mode is refused (exit 2). Exit 1 when the stream or its group "
                 "does not exist (--dlq: neither the stream nor its dead-letter stream; "
                 "--range: the stream).")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--dlq", action="store_true", help="move dead letters back onto the stream")
    what.add_argument("--pending", action="store_true",
                      help="claim and process now what a (dead) consumer holds")
    what.add_argument("--range", nargs=2, metavar=("START", "END"), action=_RangeAction,
                      help=RANGE_HELP)
    r.add_argument("--region", help="--dlq: only this region")
    r.add_argument("--reason", metavar="TEXT",
                   help="--dlq: only dead letters whose reason contains TEXT")
    r.add_argument("--limit", type=_positive_int, metavar="N",
                   help="--dlq: at most N entries (N > 0)")
    r.add_argument("--consumer", help="--pending: only this consumer's entries")
    r.add_argument("--min-idle-ms", type=_idle_ms, default=None, dest="replay_min_idle_ms",
                   metavar="MS",
                   help="--pending: only entries idle at least this long (default: the "
                   "consumer's --min-idle-ms, 60000; 0 for a consumer known to be dead)")
    r.add_argument("--dry-run", action="store_true", help="list what would be done, do nothing")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    _sharded(r)
    r.check = lambda args: _check_replay(args, r.options())


def _add_acl(sub: Any, into: dict[str, Parser]) -> None:
    a = _command(sub, into, "acl", "print the Redis ACL users (producer, consumer, "
                 "read-only operator) for --stream and --prefix; connects to nothing",
                 "Print the Redis ACL users (producer, consumer, read-only operator), each "
                 "allowed only the commands and keys of --stream, --group and --prefix, as an "
                 "ACL file (regionstream acl > users.acl); what it cannot say goes to stderr. "
                 "Connects to nothing.")
    _names(a.add_argument_group("names (flags override REGIONSTREAM_* variables)"))
    _connection(a, hidden=True)


def _add_schema(sub: Any, into: dict[str, Parser]) -> None:
    _command(sub, into, "schema", "print the snapshot's JSON Schema; connects to nothing",
             "Print the JSON Schema (draft 2020-12) of a snapshot, generated from the structs "
             "that validate every snapshot the producer publishes and the consumer stores. "
             "Connects to nothing.")
