"""One frozen settings object, built from flags and ``REGIONSTREAM_*`` environment variables.

Precedence: an explicit flag, then the environment, then the named default below. Every bad
value is reported at once (a user fixing a deployment wants the whole list, not one per run),
each naming the flag or variable it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.connection import ConnectionPool
from redis.exceptions import RedisError

from shared import failpoints
from shared.connection import (
    SENTINEL_SCHEMES,
    SOCKET_TIMEOUT_S,
    Tls,
    describe_url,
    is_sentinel_url,
    parse_sentinel_url,
)
from shared.keys import Keys
from shared.schema import REGIONS

DEFAULT_REDIS_URL = "redis://localhost:6379/0"
DEFAULT_STREAM = "snapshots"
DEFAULT_GROUP = "persisters"
DEFAULT_PREFIX = "intelligence"
DEDUP_WINDOW_S = 15 * 60  # upstream's 15-minute bucket and marker TTL
RETENTION_S = 90 * 24 * 3600  # upstream keeps snapshots and index entries 90 days
PRODUCE_INTERVAL_S = 6 * 3600.0  # upstream's cron cadence
# Stream entries older than this may be trimmed, but never before every group acknowledged them.
STREAM_RETENTION_S = 24 * 3600
PRODUCE_CHUNK = 500  # entries per pipelined round trip in --count mode
# With --min-replicas N, a publish waits this long (WAIT) for N replicas to confirm it, and is
# published again when they do not.
MIN_REPLICAS_TIMEOUT_MS = 1_000
WORKERS = 4
BATCH = 200
BLOCK_MS = 2_000
GRACE_S = 10.0  # in-flight work gets this long to finish and ack after SIGTERM
MAX_BYTES = 256 * 1024  # upstream snapshots are 3-20 KB; far beyond that is a broken producer
MIN_IDLE_MS = 60_000
CLAIM_INTERVAL_MS = 10_000
MAX_DELIVERIES = 5
# After a failed persist a worker waits this long before retrying its own pending entries: a
# write that failed (a wrong-type key, OOM) rarely heals within milliseconds.
RETRY_BACKOFF_MS = 1_000
CONSUMER_TIMEOUT_S = 3_600.0
# Off: a Redis whose maxmemory-policy may evict keys can drop stored snapshots, dedup markers
# or pending entries without an error (see Guarantees); running there anyway is a choice.
ALLOW_EVICTION = False
ENV_PREFIX = "REGIONSTREAM_"
# REGIONSTREAM_* variables read elsewhere, not settings: not warned about as unknown.
OTHER_VARIABLES = (
    failpoints.ENV,  # shared/failpoints.py: crash tests' fail points
    "REGIONSTREAM_UNLOCKED",  # `make test-latest`: tests/test_lock.py allows drift from the lock
)

# Upper bounds, checked at start: every value Redis receives stays valid, and a typo is refused
# instead of crashing later (a timeout of inf made the reclaimer's int(s * 1000) raise; a
# retention of 1e17 s made every persist's SET EX overflow Redis's ms clock). The binding limit
# is Lua's: persist.lua adds generated_at and retention_ms in doubles, exact below 2**53 ms
# (~285,000 years), under Redis's own 2**63 ms limit on an expiry time.
DAY_S = 24 * 3600
WEEK_S = 7 * DAY_S
HOUR_MS = 3600 * 1000
# A century: far past any retention anyone means, and ~3e12 ms, far below 2**53 ms.
MAX_RETENTION_S = 100 * 365 * DAY_S
# The dedup bucket folds snapshots of one region and reason into one; upstream's is 15 min for
# a 6-hour cadence. A week already folds 28 upstream cycles into one snapshot.
MAX_DEDUP_WINDOW_S = WEEK_S
MAX_INTERVAL_S = float(WEEK_S)  # a producer cadence beyond a week is a typo (upstream: 6 h)
# Entries per read (XREADGROUP and XAUTOCLAIM COUNT), and per pipelined publish: a larger
# batch is one pipeline holding single-threaded Redis (and the worker's memory) for seconds.
MAX_BATCH = 10_000
MAX_CHUNK = 10_000
# Each worker keeps a blocking read open per shard: 1024 workers x 8 region shards is 8192
# connections, within Redis's default maxclients (10000). Past that, add processes.
MAX_WORKERS = 1024
# The socket timeout of a blocking read is the block plus SOCKET_TIMEOUT_S: a dead connection
# goes unnoticed that long. An hour is plenty (a shutdown never waits out a read).
MAX_BLOCK_MS = HOUR_MS
# Supervisors kill a process long before (systemd's default stop timeout is 90 s, Kubernetes'
# grace 30 s): an hour-long grace is already only a promise.
MAX_GRACE_S = 3600.0
MAX_BYTES_LIMIT = 512 * 1024 * 1024  # Redis refuses a longer string (proto-max-bulk-len)
# An entry idle a week is long past any restart; so is a consumer idle a week.
MAX_MIN_IDLE_MS = WEEK_S * 1000
MAX_CONSUMER_TIMEOUT_S = float(WEEK_S)
MAX_CLAIM_INTERVAL_MS = DAY_S * 1000  # the reclaimer sweeps at least daily
MAX_RETRY_BACKOFF_MS = HOUR_MS  # a worker holding failed entries retries at least hourly
MAX_DELIVERIES_LIMIT = 1_000  # an entry failing a thousand times is poison: dead-letter it
# More replicas than any primary has: asking for more than there are makes every publish
# wait out its timeout and be published again, forever.
MAX_MIN_REPLICAS = 100
# The producer's connection gives up after SOCKET_TIMEOUT_S without a reply: a WAIT as long
# would look like a lost connection. Half of it leaves the rest of the round trip its time.
MAX_MIN_REPLICAS_TIMEOUT_MS = int(SOCKET_TIMEOUT_S * 1000) // 2

log = logging.getLogger("regionstream.settings")
Check = Callable[[Any], str | None]


class SettingsError(ValueError):
    """One or more bad settings; ``problems`` lists each, naming its flag or variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _shown(v: Any) -> str:
    """A value as a message quotes it: short, and never an error (Python refuses to print an
    int of more than 4300 digits)."""
    try:
        text = repr(v) if isinstance(v, str) else str(v)
    except ValueError:
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _bound(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def _within(low: float, high: float, *, integer: bool, above: bool = False, unit: str = "",
            note: str = "") -> Check:
    """A check: a finite number (an int if ``integer``) in low..high, or above low when
    ``above``. Its message states the range allowed."""
    kind = "an integer" if integer else "a finite number"
    span = (f"> {_bound(low)} and <= {_bound(high)}" if above
            else f"in {_bound(low)}..{_bound(high)}")
    wanted = f"must be {kind} {span}{unit}{f' ({note})' if note else ''}"

    def check(v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, int | float) or (
                integer and not isinstance(v, int)) or not math.isfinite(v):
            return f"{wanted} (got {_shown(v)})"
        ok = (low < v if above else low <= v) and v <= high
        return None if ok else f"{wanted} (got {_shown(v)})"
    return check


def _count(low: int, high: int, note: str = "") -> Check:
    return _within(low, high, integer=True, note=note)


def _seconds(high: float, *, above: bool, note: str) -> Check:
    return _within(0, high, integer=False, above=above, unit=" s", note=note)


def _ms(low: int, high: int, note: str) -> Check:
    return _within(low, high, integer=True, unit=" ms", note=note)


def _boolean(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"must be true or false (got {_shown(v)})"


def _name(v: Any) -> str | None:
    if not v or any(c.isspace() for c in v):
        return f"must be a non-empty name without spaces (got {v!r})"
    try:
        v.encode()
    except UnicodeEncodeError:  # argv or environment bytes that are not UTF-8
        return f"must be UTF-8 text (got {v!r})"
    if not v.isprintable():  # a control character would reach logs, top and pending as is
        return f"must be printable text (got {v!r})"
    return None


def _key_name(v: Any) -> str | None:
    """A stream name or key prefix: a name, and no braces. A ``{...}`` in it would be the
    cluster hash tag of every key built from it, in place of the region's: a region's data
    and its shard stream would land in different slots, and every persist would be refused."""
    if (problem := _name(v)) is not None:
        return problem
    if "{" in v or "}" in v:
        return (f"must not contain '{{' or '}}' (got {v!r}): Redis Cluster would hash the "
                "braces' content instead of the region's")
    return None


def _redis_url(v: Any) -> str | None:
    """Everything redis-py would refuse only at connect time (or never: a path like /abc
    silently meant db 0), refused now. Messages show the URL through describe_url only."""
    shown = describe_url(v)
    if is_sentinel_url(v):
        try:
            parse_sentinel_url(v)
        except ValueError as exc:
            return f"not a valid Sentinel URL ({exc}): {shown}"
        return None
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:  # its text may quote a piece of a mis-encoded password: not shown
        return f"not a valid Redis URL (bad host or port): {shown}"
    if parts.scheme not in ("redis", "rediss", "unix"):
        return (f"scheme must be redis://, rediss://, unix://, {SENTINEL_SCHEMES[0]}:// or "
                f"{SENTINEL_SCHEMES[1]}:// (got {shown})")
    if parts.scheme != "unix" and not parts.hostname:
        return f"has no host: {shown}"
    if parts.scheme != "unix" and not re.fullmatch(r"/?|/\d+", parts.path):
        return f"path must be empty or /<db number>: {shown}"
    return _url_options(v, shown)


def _url_options(v: str, shown: str) -> str | None:
    """Query options as redis-py takes them: it parses known ones (ValueError on a bad value)
    and hands the rest to the connection class, which refuses an unknown one (TypeError).
    Making a connection object does not connect."""
    try:
        pool = ConnectionPool.from_url(v)
        pool.connection_class(**pool.connection_kwargs)
    except TypeError as exc:
        unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        what = f"unknown option {unknown.group(1)!r}" if unknown else str(exc)
        return f"{what}: {shown}"
    except (ValueError, RedisError) as exc:
        return f"{str(exc).rstrip('.')}: {shown}"
    db = pool.connection_kwargs.get("db", 0)
    return None if db >= 0 else f"db must be >= 0 (got {db}): {shown}"


def _readable_file(v: Any) -> str | None:
    if not v:
        return None
    try:
        with open(v, "rb"):
            return None
    except OSError as exc:
        return f"cannot read {v!r}: {exc.strerror or exc}"


SHARD_LAYOUTS = ("auto", "none", "region")


def _shard_by(v: Any) -> str | None:
    return None if v in SHARD_LAYOUTS else f"must be one of {', '.join(SHARD_LAYOUTS)} (got {v!r})"


def _regions(v: Any) -> str | None:
    unknown = [r for r in v if r not in REGIONS]
    if not v:
        return "must name at least one region"
    if unknown:
        return f"unknown region(s) {', '.join(unknown)}; known: {', '.join(REGIONS)}"
    if len(set(v)) != len(v):
        return "lists a region twice"
    return None


def _shards(v: Any) -> str | None:
    return None if not v else _regions(v)  # empty: every shard


@dataclass(frozen=True, slots=True)
class Settings:
    """Each field's metadata: "check" validates a value, "flag" is the command-line option
    that sets it, named in messages (None: only REGIONSTREAM_* or code set it). The flag is
    spelled out, not derived from the field name: --grace sets grace_s."""

    redis_url: str = field(default=DEFAULT_REDIS_URL,
                           metadata={"check": _redis_url, "flag": "--redis-url"})
    stream: str = field(default=DEFAULT_STREAM,
                        metadata={"check": _key_name, "flag": "--stream"})
    group: str = field(default=DEFAULT_GROUP,
                       metadata={"check": _name, "flag": "--group"})
    prefix: str = field(default=DEFAULT_PREFIX,
                        metadata={"check": _key_name, "flag": "--prefix"})
    # "auto": region on a Redis Cluster, none on a single server (see shared/shards.py)
    shard_by: str = field(default="auto", metadata={"check": _shard_by, "flag": "--shard-by"})
    # consume/top/pending/replay: only these regions' shards (empty: all of --regions)
    shards: tuple[str, ...] = field(default=(), metadata={"check": _shards, "flag": "--shards"})
    tls_ca: str = field(default="", metadata={"check": _readable_file, "flag": "--tls-ca"})
    tls_cert: str = field(default="", metadata={"check": _readable_file, "flag": "--tls-cert"})
    tls_key: str = field(default="", metadata={"check": _readable_file, "flag": "--tls-key"})
    dedup_window_s: int = field(
        default=DEDUP_WINDOW_S,
        metadata={"check": _within(1, MAX_DEDUP_WINDOW_S, integer=True, unit=" s",
                                   note="a week"), "flag": None})
    retention_s: int = field(
        default=RETENTION_S,
        metadata={"check": _within(1, MAX_RETENTION_S, integer=True, unit=" s",
                                   note="100 years"), "flag": None})
    # every command that connects: refuse (False) or accept (True) a Redis that may evict keys
    allow_eviction: bool = field(default=ALLOW_EVICTION,
                                 metadata={"check": _boolean, "flag": "--allow-eviction"})
    # producer
    regions: tuple[str, ...] = field(default=REGIONS,
                                     metadata={"check": _regions, "flag": "--regions"})
    interval_s: float = field(
        default=PRODUCE_INTERVAL_S,
        metadata={"check": _seconds(MAX_INTERVAL_S, above=True, note="a week"),
                  "flag": "--interval"})
    stream_retention_s: int = field(
        default=STREAM_RETENTION_S,
        metadata={"check": _within(0, MAX_RETENTION_S, integer=True, unit=" s",
                                   note="100 years"), "flag": "--stream-retention"})
    chunk: int = field(default=PRODUCE_CHUNK,
                       metadata={"check": _count(1, MAX_CHUNK), "flag": "--chunk"})
    min_replicas: int = field(default=0,
                              metadata={"check": _count(0, MAX_MIN_REPLICAS),
                                        "flag": "--min-replicas"})
    min_replicas_timeout_ms: int = field(
        default=MIN_REPLICAS_TIMEOUT_MS,
        metadata={"check": _ms(1, MAX_MIN_REPLICAS_TIMEOUT_MS,
                               "half the producer's socket timeout"),
                  "flag": "--min-replicas-timeout-ms"})
    # consumer
    workers: int = field(default=WORKERS,
                         metadata={"check": _count(1, MAX_WORKERS), "flag": "--workers"})
    batch: int = field(default=BATCH,
                       metadata={"check": _count(1, MAX_BATCH, "entries per read"),
                                 "flag": "--batch"})
    block_ms: int = field(default=BLOCK_MS,
                          metadata={"check": _ms(1, MAX_BLOCK_MS, "an hour"),
                                    "flag": "--block-ms"})
    name: str = field(default_factory=socket.gethostname,
                      metadata={"check": _name, "flag": "--name"})
    grace_s: float = field(default=GRACE_S,
                           metadata={"check": _seconds(MAX_GRACE_S, above=False, note="an hour"),
                                     "flag": "--grace"})
    max_bytes: int = field(default=MAX_BYTES,
                           metadata={"check": _count(1, MAX_BYTES_LIMIT, "512 MiB"),
                                     "flag": "--max-bytes"})
    min_idle_ms: int = field(default=MIN_IDLE_MS,
                             metadata={"check": _ms(1, MAX_MIN_IDLE_MS, "a week"),
                                       "flag": "--min-idle-ms"})
    claim_interval_ms: int = field(default=CLAIM_INTERVAL_MS,
                                   metadata={"check": _ms(1, MAX_CLAIM_INTERVAL_MS, "a day"),
                                             "flag": "--claim-interval-ms"})
    max_deliveries: int = field(default=MAX_DELIVERIES,
                                metadata={"check": _count(1, MAX_DELIVERIES_LIMIT),
                                          "flag": "--max-deliveries"})
    retry_backoff_ms: int = field(default=RETRY_BACKOFF_MS,
                                  metadata={"check": _ms(0, MAX_RETRY_BACKOFF_MS, "an hour"),
                                            "flag": "--retry-backoff-ms"})
    consumer_timeout_s: float = field(
        default=CONSUMER_TIMEOUT_S,
        metadata={"check": _seconds(MAX_CONSUMER_TIMEOUT_S, above=True, note="a week"),
                  "flag": "--consumer-timeout"})
    metrics_host: str = field(default="127.0.0.1",
                              metadata={"check": _name, "flag": "--metrics-host"})
    metrics_port: int = field(default=0,
                              metadata={"check": _count(0, 65535, "a port; 0: off"),
                                        "flag": "--metrics-port"})

    @property
    def keys(self) -> Keys:
        """Every key, stream and group name of this deployment (see shared/keys.py)."""
        return Keys(prefix=self.prefix, stream=self.stream, group=self.group)

    @property
    def tls(self) -> Tls | None:
        """The TLS files for connect(), or None when none was given."""
        if not (self.tls_ca or self.tls_cert or self.tls_key):
            return None
        return Tls(self.tls_ca or None, self.tls_cert or None, self.tls_key or None)

    @property
    def dedup_window_ms(self) -> int:
        return self.dedup_window_s * 1000

    @property
    def retention_ms(self) -> int:
        return self.retention_s * 1000

    @classmethod
    def load(
        cls,
        flags: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build from ``flags`` (None means "not given") over ``env`` over the defaults, then
        validate. Raises SettingsError listing every bad value."""
        flags = flags or {}
        env = os.environ if env is None else env
        for warning in unknown_variables(env):
            log.warning("%s", warning)
        values: dict[str, Any] = {}
        origin: dict[str, str] = {}
        problems: list[str] = []
        for f in dataclasses.fields(cls):
            flag = f.metadata["flag"] or f.name
            var = ENV_PREFIX + f.name.upper()
            if flags.get(f.name) is not None:
                values[f.name], origin[f.name] = flags[f.name], flag
            elif var in env:
                origin[f.name] = var
                try:
                    values[f.name] = _parse(f, env[var])
                except ValueError as exc:
                    problems.append(f"{var}: {exc}")
        for name, value in values.items():
            check = cls.__dataclass_fields__[name].metadata.get("check")
            if check is not None and (msg := check(value)):
                problems.append(f"{origin[name]}: {msg}")
        if problems:
            raise SettingsError(problems)
        settings = cls(**values)
        for f in dataclasses.fields(cls):
            check = f.metadata.get("check")
            if f.name not in values and check is not None and (msg := check(getattr(settings, f.name))):
                problems.append(f"{f.name} default: {msg}")
        problems += _tls_problems(settings, origin)
        outside = [r for r in settings.shards if r not in settings.regions]
        if outside:
            problems.append(f"{origin.get('shards', 'shards')}: not among --regions: "
                            f"{', '.join(outside)}")
        if problems:  # a bad hostname, or TLS files that do not fit the URL
            raise SettingsError(problems)
        return settings


def _tls_problems(s: Settings, origin: Mapping[str, str]) -> list[str]:
    def name(f: str) -> str:
        return origin.get(f, f)

    given = [f for f in ("tls_ca", "tls_cert", "tls_key") if getattr(s, f)]
    problems = []
    if given and not s.redis_url.lower().startswith(("rediss://", "rediss+sentinel://")):
        problems.append(f"{name(given[0])}: TLS files need a rediss:// (or rediss+sentinel://) "
                        f"URL, not {describe_url(s.redis_url)}")
    if bool(s.tls_cert) != bool(s.tls_key):
        missing = "--tls-key" if s.tls_cert else "--tls-cert"
        problems.append(f"{name(given[0])}: a client certificate needs both --tls-cert and "
                        f"--tls-key (missing {missing})")
    return problems


def unknown_variables(env: Mapping[str, str]) -> list[str]:
    """One line per ``REGIONSTREAM_*`` variable in ``env`` that nothing reads (a typo, or a
    name like REGIONSTREAM_GRACE for REGIONSTREAM_GRACE_S), naming the closest real one: such
    a variable would otherwise be ignored without a word. Never quotes a value."""
    known = [ENV_PREFIX + f.name.upper() for f in dataclasses.fields(Settings)]
    known += OTHER_VARIABLES
    lines = []
    for var in sorted(v for v in env if v.startswith(ENV_PREFIX) and v not in known):
        # Compared without the prefix every name shares, which would make any two look alike.
        close = difflib.get_close_matches(var.removeprefix(ENV_PREFIX),
                                          [k.removeprefix(ENV_PREFIX) for k in known], n=1)
        hint = (f"did you mean {ENV_PREFIX}{close[0]}?" if close
                else "no setting is named like it; see docs/configuration.md")
        lines.append(f"ignoring {var}: not a regionstream variable ({hint})")
    return lines


def flag_fields() -> tuple[str, ...]:
    """The settings a command-line flag can set (the rest: environment or code only)."""
    return tuple(f.name for f in dataclasses.fields(Settings) if f.metadata["flag"])


def parse_regions(text: str) -> tuple[str, ...]:
    return tuple(r.strip() for r in text.split(",") if r.strip())


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"not an integer: {raw!r}") from None
    if kind == "float":
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"not a number: {raw!r}") from None
    if kind == "bool":
        try:
            return BOOLEANS[raw.strip().lower()]
        except KeyError:
            raise ValueError(f"not a boolean: {raw!r} (expected one of "
                             f"{'/'.join(BOOLEANS)})") from None
    if kind.startswith("tuple"):
        return parse_regions(raw)
    return raw


BOOLEANS = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False}
