"""The ``regionstream`` command: produce, consume, show, demo.

Exit codes: 0 ok; 1 runtime failure (Redis unreachable, nothing to show); 2 bad usage or a bad
setting (one line naming it); 3 Redis refused what no retry fixes (a missing ACL permission, a
key of the wrong type): entries stay pending, fix the cause and restart - a supervisor should
not restart in a loop on it; 4 some source lines were rejected (the rest was published).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import math
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from redis.exceptions import AuthenticationError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from regionstream import __version__
from regionstream.output import OutputLost, guard_stdout, unguard_stdout
from shared import failpoints
from shared.connection import (
    ErrorKind,
    PermanentError,
    classify,
    describe_url,
    url_password,
)
from shared.memory import EvictionRisk, check_eviction
from shared.settings import Settings, SettingsError, flag_fields, parse_regions
from shared.shards import LayoutError

if TYPE_CHECKING:
    from shared.shards import Deployment

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PERMANENT, EXIT_REJECTED = 0, 1, 2, 3, 4
DEMO_NAMES = {"stream": "regionstream-demo", "group": "demo-persisters",
              "prefix": "regionstream-demo"}
PROG = "regionstream"
# Faster redraws than this only add load on Redis (three round trips a frame) and flicker.
MIN_REFRESH_S = 0.1


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line naming it (no usage dump) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


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
    p.add_argument("--shards", type=parse_regions, metavar="REGION[,REGION...]",
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
    from regionstream.opscli import add_parsers

    parser = Parser(prog=PROG, description="Regional snapshots through Redis Streams.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_produce(sub)
    _add_consume(sub)
    _add_views(sub)
    add_parsers(sub, _common, _sharded, _int, _positive_int)
    return parser


def _add_produce(sub: Any) -> None:
    p = sub.add_parser("produce", help="publish snapshots to the stream")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="publish one cycle and exit")
    mode.add_argument("--interval", type=_number, dest="interval_s",
                      help="seconds between cycles (default 21600, upstream's 6 hours)")
    mode.add_argument("--count", type=_positive_int,
                      help="load generator: N snapshots over the regions, all distinct")
    p.add_argument("--regions", type=parse_regions, help="comma-separated region ids")
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


def _add_consume(sub: Any) -> None:
    c = sub.add_parser("consume", help="run a group of workers persisting snapshots")
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
    c.add_argument("--regions", type=parse_regions, help="accepted region ids")
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


def _add_views(sub: Any) -> None:
    s = sub.add_parser("show", help="print the latest persisted snapshot of a region")
    s.add_argument("region")
    s.add_argument("--json", action="store_true", help="print the stored JSON")
    _common(s)

    t = sub.add_parser("top", help="live view of the stream, group, DLQ and regions (Redis only)")
    t.add_argument("--once", action="store_true", help="print one frame and exit")
    t.add_argument("--plain", action="store_true", help="a summary line per refresh, no table")
    t.add_argument("--refresh", type=_refresh, default=1.0,
                   help=f"seconds between frames (default 1, at least {MIN_REFRESH_S})")
    t.add_argument("--regions", type=parse_regions, help="regions to show")
    _sharded(t)

    d = sub.add_parser("demo", help="producer + consumer group + live view, self-contained")
    d.add_argument("--duration", type=_positive_number,
                   help="stop after S seconds (default: Ctrl-C)")
    d.add_argument("--interval", type=_number, dest="interval_s", default=2.0,
                   help="seconds between producer cycles (default 2)")
    d.add_argument("--workers", type=_int, default=4)
    d.add_argument("--plain", action="store_true", help="no live view: a line per cycle")
    _common(d)


SETTING_FLAGS = flag_fields()


def settings_from(args: argparse.Namespace) -> Settings:
    flags = {k: getattr(args, k) for k in SETTING_FLAGS if hasattr(args, k)}
    return Settings.load(flags)


def _run(coro: Coroutine[Any, Any, int]) -> int:
    return asyncio.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command and return its exit code (see the module docstring).

    Whatever the command, standard output that cannot be written (a reader that went away:
    ``regionstream pending --json | head -1``; a full disk; stdout closed) ends it with at
    most one line, exit 1, never a traceback: this is the one place that handles it
    (``regionstream.output``)."""
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
    except (OutputLost, BrokenPipeError) as exc:
        lost = exc if isinstance(exc, OutputLost) else OutputLost(exc)
        _stdout_to_devnull()
        if not lost.reader_left:  # a reader that left needs no word; anything else does
            print(f"{PROG}: cannot write to standard output: {lost.reason()}",
                  file=sys.stderr)
        # Exit 1, a runtime failure: the output was not all delivered (0 would tell a
        # `set -o pipefail` script it was). Python's recipe exits 1 too.
        return EXIT_FAILURE
    finally:
        unguard_stdout()
    return code


def _stdout_to_devnull() -> None:
    """Python's recipe (docs of the signal module, "Note on SIGPIPE"): stdout to devnull, so
    the flush at interpreter exit does not fail again ("Exception ignored ...")."""
    import os

    with contextlib.suppress(OSError, ValueError, AttributeError, OutputLost):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(argv: Sequence[str] | None) -> int:
    try:
        args = build_parser().parse_args(argv)
        settings = settings_from(args)
        _check_source(args)
        _check_count(args, settings)
        failpoints.arm()
    except failpoints.FailpointError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"{PROG}: bad setting {problem}", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    commands: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
        "produce": cmd_produce, "consume": cmd_consume, "show": cmd_show, "demo": cmd_demo,
        "top": cmd_top, "pending": cmd_pending, "replay": cmd_replay, "acl": cmd_acl,
    }
    try:
        return _run(commands[args.command](args, settings))
    except UsageError as exc:  # a bad setting only running finds: a metrics port in use
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    except LayoutError as exc:  # --shard-by that does not fit the server (the demo's own)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except EvictionRisk as exc:  # a Redis setting to fix: a restart would refuse again
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_PERMANENT
    except PermanentError as exc:
        print(f"{PROG}: stopped, not retrying: {exc} (entries stay pending; fix the "
              "permission or key, then restart)", file=sys.stderr)
        return EXIT_PERMANENT
    except (RedisError, ConnectionRefusedError, FileNotFoundError) as exc:
        print(f"{PROG}: {_failure(exc, settings)}", file=sys.stderr)
        if _is_tls_refusal(exc, settings):  # a certificate or TLS setting to fix, like a flag
            return EXIT_USAGE
        permanent = (isinstance(exc, RedisError) and classify(exc) is ErrorKind.PERMANENT
                     and not isinstance(exc, AuthenticationError))
        return EXIT_PERMANENT if permanent else EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


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
    from producer.synthetic import count_reach_ms

    count = getattr(args, "count", None)
    if not count:
        return
    reach = count_reach_ms(count, len(settings.regions), settings.dedup_window_ms)
    if reach >= settings.retention_ms:
        day = 86_400_000
        raise UsageError(
            f"{PROG} produce: --count {count} reaches back {reach / day:.0f} days with a "
            f"{settings.dedup_window_s} s dedup window, past the {settings.retention_ms / day:.0f}"
            "-day retention: lower --count or raise REGIONSTREAM_RETENTION_S")


def _failure(exc: Exception, settings: Settings) -> str:
    """One line for a runtime failure; the URL only ever through describe_url."""
    url = describe_url(settings.redis_url)
    if isinstance(exc, FileNotFoundError):
        return f"{exc.strerror}: {exc.filename}"
    # Before ConnectionError, of which redis-py makes it a subclass.
    if isinstance(exc, AuthenticationError) or str(exc).startswith(("NOAUTH", "WRONGPASS")):
        if url_password(settings.redis_url) is None:
            return f"Redis at {url} requires a password (AUTH failed / NOAUTH)"
        return (f"Redis at {url} refused the credentials in the URL (WRONGPASS: wrong "
                "username or password, or the user is disabled)")
    if isinstance(exc, RedisConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = _ssl_reason(exc)
        if "mismatch" in reason:
            return (f"Redis at {url}: its TLS certificate is not for this host ({reason}); "
                    "connect by a name or address the certificate lists")
        return (f"Redis at {url}: TLS certificate not trusted ({reason}); "
                "pass the CA that signed it with --tls-ca")
    if _is_tls_refusal(exc, settings):
        reason = _ssl_reason(exc) if "SSL" in str(exc) else (
            "connection reset right after the handshake: certificate required?")
        hint = ("; the server wants a client certificate: pass --tls-cert and --tls-key"
                if "certificate required" in reason else "")
        return f"Redis at {url}: TLS handshake failed ({reason}){hint}"
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ConnectionRefusedError):
        return f"cannot reach Redis at {url}: {exc}"
    if classify(exc) is ErrorKind.NOGROUP:
        return f"stream {settings.stream!r} has no group {settings.group!r}"
    return f"Redis error: {exc}"


def _ssl_reason(exc: Exception) -> str:
    """The OpenSSL reason inside redis-py's connection error text, without its file:line."""
    import re

    text = str(exc)
    found = re.search(r"\[SSL[^\]]*\]\s*([^(]+)", text)
    return found.group(1).strip() if found else text


def _is_tls_refusal(exc: BaseException, settings: Settings) -> bool:
    """A TLS error, or (TLS 1.3) a reset on the first read of a TLS connection made without a
    client certificate: the server's "certificate required" alert and its close race, and the
    client sometimes sees only the reset."""
    if not isinstance(exc, RedisConnectionError):
        return False
    if "SSL" in str(exc):
        return True
    return (settings.redis_url.lower().startswith("rediss") and not settings.tls_cert
            and "Connection reset by peer" in str(exc))


def _serve_metrics(settings: Settings, registry: Any, cadence_s: float | None = None) -> None:
    if settings.metrics_port:
        from shared.group_metrics import start_group_gauges
        from shared.metrics import build_info, producer_cadence

        build_info(registry, __version__)
        if cadence_s is not None:
            producer_cadence(registry, cadence_s)
        _listen(settings, registry)  # first: nothing is left running if it fails
        # Group gauges (lag, pending, DLQ...) come from every process that serves metrics,
        # producer included: they stay visible when every consumer is down.
        start_group_gauges(settings, registry)


def _listen(settings: Settings, registry: Any) -> None:
    """Serve metrics; a port in use or a host that does not resolve is a bad setting (exit 2,
    naming the flag), not a traceback."""
    from prometheus_client import start_http_server

    host, port = settings.metrics_host, settings.metrics_port
    try:
        start_http_server(port, host, registry=registry)
    except socket.gaierror as exc:
        raise UsageError(f"{PROG}: bad setting --metrics-host: cannot resolve {host!r}: "
                         f"{exc.strerror}") from None
    except OSError as exc:
        flag = "--metrics-host" if exc.errno == errno.EADDRNOTAVAIL else "--metrics-port"
        raise UsageError(f"{PROG}: bad setting {flag}: cannot listen on {host}:{port}: "
                         f"{exc.strerror}") from None


@contextlib.asynccontextmanager
async def _deployed(settings: Settings, *, subset: bool = True, writes: bool = False
                    ) -> AsyncIterator[Deployment]:
    """Connected, cluster or not found out, --shard-by resolved (a misfit is a bad setting),
    closed after. ``subset``: only the --shards (the producer always publishes every
    region's)."""
    from shared.shards import open_deployment

    try:
        deployment = await open_deployment(settings.redis_url, settings.keys, settings.regions,
                                           settings.shard_by, tls=settings.tls,
                                           only=settings.shards if subset else ())
    except LayoutError as exc:
        raise UsageError(f"{PROG}: {exc}") from None
    try:
        await deployment.base.ping()
        if writes:  # what writes refuses a Redis that may evict what it wrote (shared.memory)
            await check_eviction(deployment.node_clients(), settings.redis_url,
                                 allow=settings.allow_eviction)
        yield deployment
    finally:
        await deployment.aclose()


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
    async with _deployed(settings, subset=False, writes=True) as deployment:
        producer = Producer(settings, seed=args.seed)
        _serve_metrics(settings, producer.registry, cadence_s=settings.interval_s)
        _stop_on_signals(asyncio.get_running_loop(), producer.stop)
        report = await producer.run(deployment, once=args.once, count=args.count,
                                    source=args.source, progress=sys.stderr.isatty())
    print(f"published {report.published} snapshot(s)"
          + (f", rejected {report.rejected} line(s)" if report.rejected else ""),
          file=sys.stderr)
    return EXIT_REJECTED if report.rejected else EXIT_OK


async def cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    from consumer.service import Consumer

    # A clear message now if Redis is unreachable, or the layout does not fit the server.
    async with _deployed(settings, writes=True):
        pass
    consumer = Consumer(settings)
    _serve_metrics(settings, consumer.registry)
    consumer.install_signal_handlers(asyncio.get_running_loop())
    await consumer.run(drain=args.drain)  # its own client: see shared.connection.connect
    return EXIT_OK


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream.show import show

    async with _deployed(settings, subset=False) as deployment:
        # on a cluster, the node holding the region's keys
        client = deployment.client_for_region(settings.keys, args.region)
        return await show(client, settings, args.region, as_json=args.json)


async def cmd_pending(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream import opscli

    async with _deployed(settings) as deployment:
        return await opscli.cmd_pending(args, settings, deployment)


async def cmd_acl(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream import opscli

    return await opscli.cmd_acl(args, settings)


async def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream import opscli

    async with _deployed(settings, writes=not args.dry_run) as deployment:
        return await opscli.cmd_replay(args, settings, deployment)


async def cmd_top(args: argparse.Namespace, settings: Settings) -> int:
    from regionstream.top import run_top

    stop = asyncio.Event()
    _stop_on_signals(asyncio.get_running_loop(), stop)
    async with _deployed(settings) as deployment:
        return await run_top(deployment, settings, once=args.once, plain=args.plain,
                             every=args.refresh, stop=stop)


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from regionstream.demo import run_demo

    explicit = bool(args.redis_url or os.environ.get("REGIONSTREAM_REDIS_URL"))
    if explicit:
        # On a Redis the user pointed at (maybe a real one), the demo writes under names of its
        # own unless told otherwise: it never mixes synthetic data into production keys.
        def pick(name: str) -> str:
            given = (getattr(args, name) is not None
                     or "REGIONSTREAM_" + name.upper() in os.environ)
            return str(getattr(settings, name)) if given else DEMO_NAMES[name]

        settings = dataclasses.replace(settings, stream=pick("stream"), group=pick("group"),
                                       prefix=pick("prefix"))
    return await run_demo(settings, duration=args.duration, interval_s=args.interval_s,
                          workers=args.workers, plain=args.plain or not sys.stdout.isatty(),
                          explicit_url=explicit)


def _stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
