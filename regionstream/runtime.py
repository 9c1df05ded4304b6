"""What every command runs in: its exit codes, the one table from a failure to an exit code
and its line, the deployment it is handed (opened once), its metrics and its signals.

- ``exit_code(exc, settings)``: prints a failure's line(s) and returns its exit code (the codes
  are documented in ``regionstream.parser.EXIT_CODES``, which ``--help`` lists); None for an
  exception that is no failure of ours (a bug: its traceback goes up).
- ``session(settings, ...)``: an async context that connects once (cluster or not found out,
  ``--shard-by`` resolved, pinged, the eviction policy checked for a writer), serves the
  metrics when asked (their group gauges read through the same deployment), installs the
  signal handling (``stop_on_signals``), yields the deployment, and undoes all of it on leaving.
- ``require_existing(deployment, settings, ...)``: an operator command's stream and group that
  exist on no shard are a one-line failure (``NotFound``, exit 1), not an empty report.
- ``stop_on_signals(stop)``: one semantics for every long-running command: the first SIGINT or
  SIGTERM is a graceful stop (``stop`` is set); another one while stopping exits at once.

Importing this module imports nothing beyond the standard library's basics: ``cli`` does, for
``--help`` too; what a command needs is imported when it runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator

from regionstream.parser import PROG, UsageError

# Not typing.TYPE_CHECKING: importing typing costs ``--help`` a few ms (mypy and ruff treat a
# module's own TYPE_CHECKING = False the same way; see regionstream/__init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from typing import Any

    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from shared.keys import Keys
    from shared.settings import Settings
    from shared.shards import Deployment, Shard

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PERMANENT, EXIT_REJECTED = 0, 1, 2, 3, 4
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # every command's log lines
EXIT_INTERRUPTED = 130  # Ctrl-C (KeyboardInterrupt), or a second signal while stopping


class NotFound(Exception):
    """The stream or the group an operator command reads exists on no shard: a runtime
    failure (exit 1), said in one line naming both (``require_existing``)."""

Lines = tuple[int, list[str]]  # an exit code and the lines that say why, for stderr


def exit_code(exc: BaseException, settings: Settings | None) -> int | None:
    """``exc`` as the command's exit code, its line(s) printed on stderr: the one table of
    failures (``_table``). ``settings``: the command's, None before they are loaded. None:
    ``exc`` is not in the table (or cannot be said without the settings), the caller re-raises
    it."""
    for kinds, say in _table():
        if isinstance(exc, kinds):
            said = say(exc, settings)
            if said is None:
                return None
            code, lines = said
            for line in lines:
                print(line, file=sys.stderr)
            return code
    return None


def _table() -> Iterator[tuple[tuple[type[BaseException], ...],
                               Callable[[Any, Settings | None], Lines | None]]]:
    """The failures a command may end with, in order, each with its exit code and line. A
    generator: a bad flag, the first entry, is said without importing what the others name
    (the exception classes of redis and of the services)."""
    yield (UsageError,), lambda e, _: (EXIT_USAGE, [str(e)])  # a bad flag, or a bad value
    from redis.exceptions import RedisError

    from regionstream.output import OutputLost
    from shared.connection import PermanentError
    from shared.failpoints import FailpointError
    from shared.memory import EvictionRisk
    from shared.settings import SettingsError
    from shared.shards import LayoutError

    yield (FailpointError,), lambda e, _: (EXIT_USAGE, [f"{PROG}: {e}"])
    yield (SettingsError,), lambda e, _: (EXIT_USAGE,
                                          [f"{PROG}: bad setting {p}" for p in e.problems])
    # --shard-by that does not fit the server
    yield (LayoutError,), lambda e, _: (EXIT_USAGE, [f"{PROG}: {e}"])
    # a Redis setting to fix: a restart would refuse again
    yield (EvictionRisk,), lambda e, _: (EXIT_PERMANENT, [f"{PROG}: {e}"])
    yield (PermanentError,), lambda e, _: (EXIT_PERMANENT, [
        f"{PROG}: stopped, not retrying: {e} (entries stay pending; fix the permission or key, "
        "then restart)"])
    yield (NotFound,), lambda e, _: (EXIT_FAILURE, [f"{PROG}: {e}"])
    yield (RedisError, ConnectionRefusedError, FileNotFoundError), _redis_failure
    yield (OutputLost, BrokenPipeError), lambda e, _: _output_lost(e)
    yield (KeyboardInterrupt,), lambda e, _: (EXIT_INTERRUPTED, [])


def _redis_failure(exc: Exception, settings: Settings | None) -> Lines | None:
    """One line for a runtime failure; the URL only ever through describe_url. A certificate
    or TLS setting to fix is a bad setting (exit 2); what Redis refuses for good, exit 3: a
    permission, a key of another type, and the credentials (WRONGPASS, or NOAUTH: none given
    where one is required), which no retry fixes either."""
    from redis.exceptions import AuthenticationError, RedisError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from shared.connection import ErrorKind, classify, describe_url, diagnose

    if settings is None:
        return None
    refusal = diagnose(exc, settings.redis_url, client_cert=bool(settings.tls_cert))
    if isinstance(exc, FileNotFoundError):
        line = f"{exc.strerror}: {exc.filename}"
    elif refusal is not None:  # a password, a certificate or TLS
        line = refusal.reason
    elif isinstance(exc, RedisConnectionError | RedisTimeoutError | ConnectionRefusedError):
        line = f"cannot reach Redis at {describe_url(settings.redis_url)}: {exc}"
    elif classify(exc) is ErrorKind.NOGROUP:
        line = f"stream {settings.stream!r} has no group {settings.group!r}"
    else:
        line = f"Redis error: {exc}"
    refused_credentials = (isinstance(exc, AuthenticationError)
                           or str(exc).startswith(("NOAUTH", "WRONGPASS")))
    if refusal is not None and refusal.usage:
        code = EXIT_USAGE
    elif refused_credentials or (isinstance(exc, RedisError) and classify(exc) in (
            ErrorKind.PERMANENT, ErrorKind.WRONGTYPE)):  # a key of ours holding another type
        code = EXIT_PERMANENT
    else:
        code = EXIT_FAILURE
    return code, [f"{PROG}: {line}"]


def _output_lost(exc: BaseException) -> Lines:
    """Standard output could not be written (``regionstream.output``): exit 1, a runtime
    failure (0 would tell a ``set -o pipefail`` script it was all delivered; Python's recipe
    exits 1 too), one line unless the reader went away (``| head``: normal, said by nobody)."""
    from regionstream.output import OutputLost

    lost = exc if isinstance(exc, OutputLost) else OutputLost(exc)
    _stdout_to_devnull()
    return EXIT_FAILURE, ([] if lost.reader_left else
                          [f"{PROG}: cannot write to standard output: {lost.reason()}"])


def _stdout_to_devnull() -> None:
    """Python's recipe (docs of the signal module, "Note on SIGPIPE"): stdout to devnull, so
    the flush at interpreter exit does not fail again ("Exception ignored ...")."""
    from regionstream.output import OutputLost

    with contextlib.suppress(OSError, ValueError, AttributeError, OutputLost):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


SIGNALS = ("SIGINT", "SIGTERM")


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event, *, on_first: Callable[[str], None] | None = None,
                    before_exit: Callable[[], None] | None = None) -> Iterator[None]:
    """Within: the first SIGINT or SIGTERM sets ``stop`` (``on_first`` is told its name): the
    command finishes what it holds and returns. Another one while ``stop`` is set (a second
    signal, or one after the command began stopping by itself) exits at once, with
    EXIT_INTERRUPTED, after ``before_exit`` (what must not outlive the process: the demo's
    private redis-server); what was not acknowledged stays pending for the next start.
    On leaving, the handlers are removed: the signals do again what they do by default."""
    import asyncio
    import logging
    import signal

    loop = asyncio.get_running_loop()
    signums = [signal.Signals[name] for name in SIGNALS]

    def on_signal(signum: signal.Signals) -> None:
        if stop.is_set():
            logging.getLogger("regionstream").warning("second %s: exiting now", signum.name)
            if before_exit is not None:
                before_exit()
            os._exit(EXIT_INTERRUPTED)
        if on_first is not None:
            on_first(signum.name)
        stop.set()

    for signum in signums:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum in signums:
            loop.remove_signal_handler(signum)


@contextlib.asynccontextmanager
async def session(settings: Settings, *, subset: bool = True, writes: bool = False,
                  stop: asyncio.Event | None = None, registry: CollectorRegistry | None = None,
                  cadence_s: float | None = None, on_first: Callable[[str], None] | None = None,
                  before_exit: Callable[[], None] | None = None) -> AsyncIterator[Deployment]:
    """The command's deployment, opened once, closed after; ``subset``: only the --shards (the
    producer always publishes every region's); ``writes``: the command writes, and refuses a
    Redis that may evict what it writes (``shared.memory``). ``registry``: served on
    --metrics-port, if one is set, with the group gauges (``cadence_s``: the producer's). ``stop``:
    set by the first signal (``stop_on_signals``, with ``on_first`` and ``before_exit``); without
    it, no handler is installed (a short command: Ctrl-C is exit 130)."""
    async with (_deployed(settings, subset=subset, writes=writes) as deployment,
                _metrics(settings, registry, deployment, cadence_s)):
        if stop is None:
            yield deployment
            return
        with stop_on_signals(stop, on_first=on_first, before_exit=before_exit):
            yield deployment


@contextlib.asynccontextmanager
async def _deployed(settings: Settings, *, subset: bool, writes: bool
                    ) -> AsyncIterator[Deployment]:
    """Connected, cluster or not found out, --shard-by resolved (a misfit is a LayoutError: a
    bad setting), closed after."""
    from shared.memory import check_eviction
    from shared.shards import open_deployment

    deployment = await open_deployment(settings.redis_url, settings.keys, settings.regions,
                                       settings.shard_by, tls=settings.tls,
                                       only=settings.shards if subset else ())
    try:
        await deployment.base.ping()
        if writes:  # what writes refuses a Redis that may evict what it wrote (shared.memory)
            await check_eviction(deployment.node_clients(), settings.redis_url,
                                 allow=settings.allow_eviction)
        yield deployment
    finally:
        await deployment.aclose()


@contextlib.asynccontextmanager
async def _metrics(settings: Settings, registry: CollectorRegistry | None,
                   deployment: Deployment, cadence_s: float | None) -> AsyncIterator[None]:
    """Metrics on --metrics-port while within, if a port is set: the build info, the
    producer's cadence, and the group gauges (lag, pending, DLQ...), which every process that
    serves metrics exports, producer included: they stay visible when every consumer is
    down. They are read through ``deployment`` (every shard of its layout), and stopped before
    it closes."""
    if registry is None or not settings.metrics_port:
        yield
        return
    import asyncio

    from regionstream import __version__
    from shared.group_metrics import start_group_gauges
    from shared.metrics import build_info, producer_cadence

    build_info(registry, __version__)
    if cadence_s is not None:
        producer_cadence(registry, cadence_s)
    _listen(settings, registry)  # first: nothing is left running if it fails
    stop = asyncio.Event()
    gauges = start_group_gauges(settings, registry, stop, deployment=deployment)
    try:
        yield
    finally:
        stop.set()
        gauges.cancel()
        await asyncio.gather(gauges, return_exceptions=True)


def _listen(settings: Settings, registry: CollectorRegistry) -> None:
    """Serve metrics; a port in use or a host that does not resolve is a bad setting (exit 2,
    naming the flag), not a traceback."""
    import errno
    import socket

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


async def require_existing(deployment: Deployment, settings: Settings, *, dlq: bool = False,
                           group: bool = True) -> None:
    """Raise ``NotFound`` when what an operator command reads exists on no shard of
    ``deployment`` (``top``, ``pending`` and ``replay`` showed an empty deployment, "moved 0"
    or "no group" and exited 0 on a misspelled --stream or --group): the stream and its group;
    with ``dlq`` (``replay --dlq``, which needs no group), the stream or its dead-letter stream;
    without ``group`` (``replay --range``, which acknowledges nothing), the stream alone.
    One XINFO GROUPS per shard (and XINFO STREAM of its DLQ), which every ACL role may run.

    Not a failure: a deployment whose streams do not exist in this layout but do in the other
    ``--shard-by`` layout (``shared.layout``): a change of layout under way, or a mismatch,
    which ``top`` and ``pending`` then warn about."""
    from shared.connection import describe_url
    from shared.shards import read_each

    keys = settings.keys
    found = await read_each(deployment, lambda shard, client: _probe(client, shard.keys, dlq))
    if dlq and any(p.stream or p.dlq for p in found):
        return
    if not dlq and any(p.group or (not group and p.stream) for p in found):
        return
    for p in found:  # a key of ours holding another type: that is the failure (exit 3)
        if p.wrong_type is not None:
            raise p.wrong_type
    sharded = deployment.layout == "region"
    on = (f" on any of its {len(deployment.shards)} region shards "
          f"({keys.stream}:{{<region>}})" if sharded else "")
    if not dlq and any(p.stream for p in found):
        raise NotFound(f"stream {keys.stream!r} has no group {keys.group!r}{on}: check --group")
    if await _exists_in_other_layout(deployment, settings):
        return
    where = describe_url(settings.redis_url)
    nor = (f", nor its dead-letter stream {keys.dlq!r}" if dlq
           else f", nor its group {keys.group!r}" if group else "")
    check = "--stream, --shard-by and --redis-url" if sharded else "--stream and --redis-url"
    raise NotFound(f"stream {keys.stream!r} does not exist{on} at {where}{nor}: check {check}")


class _Found:
    """What ``_probe`` found on one shard. (Not a dataclass: importing dataclasses would cost
    ``--help``, which imports this module, a few ms.)"""

    def __init__(self, stream: bool, group: bool, dlq: bool, wrong_type: Exception | None
                 ) -> None:
        self.stream = stream  # the stream (or a key of another type under its name) exists
        self.group = group  # the group exists on it
        self.dlq = dlq  # the dead-letter stream exists (asked only for ``replay --dlq``)
        self.wrong_type = wrong_type  # WRONGTYPE: the stream or DLQ is another type of key


async def _probe(client: aioredis.Redis, keys: Keys, dlq: bool) -> _Found:
    from redis.exceptions import ResponseError

    from shared.connection import ErrorKind, classify
    from shared.ids import text

    pipe = client.pipeline(transaction=False)
    pipe.xinfo_groups(keys.stream)
    if dlq:
        pipe.xinfo_stream(keys.dlq)
    replies = await pipe.execute(raise_on_error=False)
    wrong = None
    exists = []
    for reply in replies:
        if not isinstance(reply, ResponseError):
            exists.append(True)
        elif "no such key" in str(reply).lower():
            exists.append(False)
        elif classify(reply) is ErrorKind.WRONGTYPE:  # there, as another type
            wrong = wrong or reply
            exists.append(True)
        else:  # a failure (a refused command, a moved slot: read_each retries that)
            raise reply
    groups = replies[0]
    group = not isinstance(groups, ResponseError) and any(
        text(g["name"]) == keys.group for g in groups)
    return _Found(exists[0], group, dlq and exists[1], wrong)


async def _exists_in_other_layout(deployment: Deployment, settings: Settings) -> bool:
    """Any stream of the other ``--shard-by`` layout exists (``shared.layout``)."""
    import asyncio

    from shared.layout import other_layout
    from shared.shards import retrying, shards

    other = other_layout(deployment.layout)
    if deployment.cluster and other == "none":  # nothing runs one stream on a cluster
        return False
    streams = shards(settings.keys, settings.regions, other)

    async def exists(shard: Shard) -> bool:
        found = await retrying(deployment, lambda: _probe(
            deployment.client_for(shard), shard.keys, False))
        return found.stream

    return any(await asyncio.gather(*(exists(s) for s in streams)))
