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
    from collections.abc import Sequence
    from typing import Any, NoReturn

PROG = "regionstream"
# Faster redraws than this only add load on Redis (three round trips a frame) and flicker.
MIN_REFRESH_S = 0.1


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage dump) and exit code 2."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: dict[str, Parser] = {}  # the top-level parser's subcommands, by name

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")

    def options(self) -> dict[str, str]:
        """Each option string of this parser (``--grace``) -> the attribute it sets
        (``grace_s``)."""
        return {opt: action.dest for action in self._actions for opt in action.option_strings}


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
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
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


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (flags override REGIONSTREAM_* variables)")
    g.add_argument("--redis-url", help="redis://, rediss:// (TLS), unix:// or "
                   "redis+sentinel://host:port[,host:port...]/<master>[/<db>]; "
                   "env REGIONSTREAM_REDIS_URL, default redis://localhost:6379/0")
    g.add_argument("--tls-ca", help="CA file that signed the server's certificate (rediss://); "
                   "env REGIONSTREAM_TLS_CA")
    g.add_argument("--tls-cert", help="client certificate, for servers that ask for one; "
                   "env REGIONSTREAM_TLS_CERT")
    g.add_argument("--tls-key", help="client certificate's key; env REGIONSTREAM_TLS_KEY")
    g.add_argument("--stream", help="env REGIONSTREAM_STREAM, default snapshots")
    g.add_argument("--group", help="env REGIONSTREAM_GROUP, default persisters")
    g.add_argument("--prefix", help="key prefix; env REGIONSTREAM_PREFIX, default intelligence")
    g.add_argument("--allow-eviction", action="store_true", default=None,
                   help="run even when Redis's maxmemory-policy may evict keys (data loss: "
                   "see Guarantees); env REGIONSTREAM_ALLOW_EVICTION (1/0, true/false, yes/no)")
    g.add_argument("--log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"])


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
    _common(p)


def _metrics_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=_int, help="Prometheus port (0 = off, the default)")
    p.add_argument("--metrics-host", help="address to bind metrics to (default 127.0.0.1)")


def build_parser() -> Parser:
    """The whole command line; ``.commands`` holds each command's own parser."""
    parser = Parser(prog=PROG, description="Regional snapshots through Redis Streams.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_produce, _add_consume, _add_show, _add_top, _add_demo, _add_pending,
                _add_replay, _add_acl):
        add(sub, parser.commands)
    return parser


def commands() -> dict[str, Parser]:
    """Each command's parser, by name (``commands()["consume"].options()``)."""
    return build_parser().commands


def _command(sub: Any, into: dict[str, Parser], name: str, **kwargs: Any) -> Parser:
    p: Parser = sub.add_parser(name, **kwargs)
    into[name] = p
    return p


def _add_produce(sub: Any, into: dict[str, Parser]) -> None:
    p = _command(sub, into, "produce", help="publish snapshots to the stream")
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
    _common(p)


def _add_consume(sub: Any, into: dict[str, Parser]) -> None:
    c = _command(sub, into, "consume", help="run a group of workers persisting snapshots")
    c.add_argument("--workers", type=_int, help="concurrent workers (default 4)")
    c.add_argument("--batch", type=_int, help="entries per read (default 200)")
    c.add_argument("--block-ms", type=_int, help="how long a read waits for entries (default 2000)")
    c.add_argument("--drain", action="store_true",
                   help="exit 0 once the group has no undelivered and no pending entries")
    c.add_argument("--name", help="consumer name prefix (default: the hostname); workers are "
                   "NAME-0..NAME-(N-1), stable across restarts")
    c.add_argument("--grace", type=_number, dest="grace_s",
                   help="seconds in-flight work gets after SIGTERM (default 10)")
    c.add_argument("--max-bytes", type=_int, help="larger payloads are dead-lettered")
    c.add_argument("--regions", type=_regions, help="accepted region ids")
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
    _common(c)


def _add_show(sub: Any, into: dict[str, Parser]) -> None:
    s = _command(sub, into, "show", help="print the latest persisted snapshot of a region")
    s.add_argument("region")
    s.add_argument("--json", action="store_true", help="print the stored JSON")
    _common(s)


def _add_top(sub: Any, into: dict[str, Parser]) -> None:
    t = _command(sub, into, "top",
                 help="live view of the stream, group, DLQ and regions (Redis only)")
    t.add_argument("--once", action="store_true", help="print one frame and exit")
    t.add_argument("--plain", action="store_true", help="a summary line per refresh, no table")
    t.add_argument("--refresh", type=_refresh, default=1.0,
                   help=f"seconds between frames (default 1, at least {MIN_REFRESH_S})")
    t.add_argument("--regions", type=_regions, help="regions to show")
    _sharded(t)


def _add_demo(sub: Any, into: dict[str, Parser]) -> None:
    d = _command(sub, into, "demo",
                 help="producer + consumer group + live view, self-contained")
    d.add_argument("--duration", type=_positive_number,
                   help="stop after S seconds (default: Ctrl-C)")
    d.add_argument("--interval", type=_number, dest="interval_s", default=2.0,
                   help="seconds between producer cycles (default 2)")
    d.add_argument("--workers", type=_int, default=4)
    d.add_argument("--plain", action="store_true", help="no live view: a line per cycle")
    _common(d)


def _add_pending(sub: Any, into: dict[str, Parser]) -> None:
    p = _command(sub, into, "pending", help="who holds what: per-consumer pending, lag, DLQ")
    p.add_argument("--json", action="store_true")
    _sharded(p)


def _add_replay(sub: Any, into: dict[str, Parser]) -> None:
    r = _command(sub, into, "replay", help="re-drive dead letters, a dead consumer's pending "
                 "entries, or a range of history")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("--dlq", action="store_true", help="move dead letters back onto the stream")
    what.add_argument("--pending", action="store_true",
                      help="claim and process now what a (dead) consumer holds")
    what.add_argument("--range", nargs=2, metavar=("START", "END"), action=_RangeAction,
                      help="re-drive stream entries START..END through dedup (idempotent)")
    r.add_argument("--region", help="--dlq: only this region")
    r.add_argument("--reason", help="--dlq: only dead letters whose reason contains TEXT")
    r.add_argument("--limit", type=_positive_int, help="--dlq: at most N entries (N > 0)")
    r.add_argument("--consumer", help="--pending: only this consumer's entries")
    r.add_argument("--min-idle-ms", type=_idle_ms, default=None, dest="replay_min_idle_ms",
                   help="--pending: only entries idle at least this long (default: the "
                   "consumer's --min-idle-ms, 60000; 0 for a consumer known to be dead)")
    r.add_argument("--dry-run", action="store_true", help="list what would be done, do nothing")
    r.add_argument("--json", action="store_true")
    _sharded(r)


def _add_acl(sub: Any, into: dict[str, Parser]) -> None:
    a = _command(sub, into, "acl", help="print the Redis ACL users (producer, consumer, "
                 "read-only operator) for --stream and --prefix; connects to nothing")
    _common(a)
