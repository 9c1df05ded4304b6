"""Redis connections and the one place where Redis errors are classified."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import (
    AskError,
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    ConnectionError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from shared.wire import ENTRY_PARSERS

try:
    from hiredis import pack_command as _hiredis_pack_c

    _hiredis_pack: Callable[[tuple[Any, ...]], bytes] | None = _hiredis_pack_c
except ImportError:  # hiredis is a dependency, but a broken wheel should not break startup
    _hiredis_pack = None

# redis-py retries a command on a dropped connection itself: a few quick, jittered attempts
# hide a blip (server restart, failover) without hiding a Redis that is really gone.
CONNECT_RETRIES = 3
BACKOFF_CAP_S = 1.0
BACKOFF_BASE_S = 0.05
SOCKET_CONNECT_TIMEOUT_S = 5.0
# A reply slower than this means the connection is dead. A blocking read waits on top of it:
# connect(socket_timeout=...) with the block time added, or every idle read would time out.
SOCKET_TIMEOUT_S = 10.0
HEALTH_CHECK_INTERVAL_S = 30


# Redis's refusal at maxmemory (noeviction), after its "OOM" code.
OOM_TEXT = "command not allowed when used memory"


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # connection reset, timeout, LOADING, BUSY, READONLY after failover
    NOGROUP = "nogroup"  # the stream or group is gone: recreate it
    BUSYGROUP = "busygroup"  # group exists already: fine
    NOSCRIPT = "noscript"  # script cache flushed: load it again
    WRONGTYPE = "wrongtype"  # a key of ours holds the wrong type: a data fault, not transient
    # No retry can fix it: a missing ACL permission, a wrong password, a command the server
    # does not know. The process says once what is missing and exits (EXIT_PERMANENT).
    PERMANENT = "permanent"
    # Redis is full (maxmemory reached under noeviction, "OOM command not allowed"): no fault
    # of the entry being written, so, like TRANSIENT, it spends none of its deliveries; it is
    # told apart to be said once per episode, counted and alerted on (RegionstreamRedisFull).
    OOM = "oom"
    OTHER = "other"


class PermanentError(Exception):
    """Redis refused something no retry can fix (see ErrorKind.PERMANENT); ``what`` says what
    was being done."""

    def __init__(self, what: str, cause: BaseException | str) -> None:
        super().__init__(f"{what}: {cause}")
        self.what, self.cause = what, str(cause)


def classify(exc: BaseException | str) -> ErrorKind:
    """Classify a Redis exception (or an error string returned inside a script reply)."""
    if isinstance(exc, NoScriptError):
        return ErrorKind.NOSCRIPT
    # Before ConnectionError: redis-py makes a wrong password one of those.
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        return ErrorKind.PERMANENT
    if isinstance(exc, ConnectionError | TimeoutError | BusyLoadingError | ReadOnlyError):
        return ErrorKind.TRANSIENT
    # redis-py drops the OOM code from the text of the exception it makes of the reply.
    if isinstance(exc, OutOfMemoryError):
        return ErrorKind.OOM
    # A Redis Cluster moving a slot or failing over: re-read the slot map and retry (MOVED's
    # text is only "slot host:port": recognize the class, not the words).
    if isinstance(exc, AskError | TryAgainError | ClusterDownError | ClusterError):
        return ErrorKind.TRANSIENT
    if isinstance(exc, RedisClusterException):
        return ErrorKind.TRANSIENT
    if isinstance(exc, OSError):
        return ErrorKind.TRANSIENT
    text = str(exc) if isinstance(exc, ResponseError | str) else ""
    words = text.split(" ", 2)
    # Some servers (fakeredis, proxies) put a generic "ERR" before the specific code.
    head = (words[1] if words[0] == "ERR" and len(words) > 1 else words[0]).upper()
    if text.startswith(OOM_TEXT):  # as redis-py words an OutOfMemoryError: without its code
        return ErrorKind.OOM
    if text.lower().startswith(("err unknown command", "unknown command")):
        return ErrorKind.PERMANENT
    # An ACL refusal inside a script comes without the NOPERM code (Redis 7.0).
    if "user executing the script can't" in text:
        return ErrorKind.PERMANENT
    return {
        "NOGROUP": ErrorKind.NOGROUP,
        "BUSYGROUP": ErrorKind.BUSYGROUP,
        "NOSCRIPT": ErrorKind.NOSCRIPT,
        "WRONGTYPE": ErrorKind.WRONGTYPE,
        "BUSY": ErrorKind.TRANSIENT,
        "LOADING": ErrorKind.TRANSIENT,
        "READONLY": ErrorKind.TRANSIENT,
        "MASTERDOWN": ErrorKind.TRANSIENT,
        "NOREPLICAS": ErrorKind.TRANSIENT,  # min-replicas-to-write: until a replica is back
        "TRYAGAIN": ErrorKind.TRANSIENT,
        "MOVED": ErrorKind.TRANSIENT,
        "ASK": ErrorKind.TRANSIENT,
        "CLUSTERDOWN": ErrorKind.TRANSIENT,
        "UNBLOCKED": ErrorKind.TRANSIENT,  # a blocked read's stream moved to another node
        "OOM": ErrorKind.OOM,
        "NOPERM": ErrorKind.PERMANENT,
        "NOAUTH": ErrorKind.PERMANENT,
        "WRONGPASS": ErrorKind.PERMANENT,
    }.get(head, ErrorKind.OTHER)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why Redis (or its TLS) refused a connection, in one line naming what to fix. ``usage``:
    a certificate or TLS setting is the cause, a bad setting like a bad flag."""

    reason: str
    usage: bool


def diagnose(exc: BaseException, url: str, *, client_cert: bool) -> Refusal | None:
    """An authentication or TLS failure of a connection to ``url`` as one line (the URL only
    through describe_url), or None when ``exc`` is neither. ``client_cert``: a client
    certificate was given (--tls-cert). redis-py says these only in the text of its errors."""
    usage = _is_tls_refusal(exc, url, client_cert)
    shown = describe_url(url)
    # Before ConnectionError, of which redis-py makes it a subclass.
    if isinstance(exc, AuthenticationError) or str(exc).startswith(("NOAUTH", "WRONGPASS")):
        if url_password(url) is None:
            return Refusal(f"Redis at {shown} requires a password (AUTH failed / NOAUTH)",
                           usage)
        return Refusal(f"Redis at {shown} refused the credentials in the URL (WRONGPASS: "
                       "wrong username or password, or the user is disabled)", usage)
    if isinstance(exc, ConnectionError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        reason = _ssl_reason(exc)
        if "mismatch" in reason:
            return Refusal(f"Redis at {shown}: its TLS certificate is not for this host "
                           f"({reason}); connect by a name or address the certificate lists",
                           usage)
        return Refusal(f"Redis at {shown}: TLS certificate not trusted ({reason}); pass the "
                       "CA that signed it with --tls-ca", usage)
    if usage:
        reason = _ssl_reason(exc) if "SSL" in str(exc) else (
            "connection reset right after the handshake: certificate required?")
        hint = ("; the server wants a client certificate: pass --tls-cert and --tls-key"
                if "certificate required" in reason else "")
        return Refusal(f"Redis at {shown}: TLS handshake failed ({reason}){hint}", usage)
    return None


def _ssl_reason(exc: BaseException) -> str:
    """The OpenSSL reason inside redis-py's connection error text, without its file:line."""
    import re

    text = str(exc)
    found = re.search(r"\[SSL[^\]]*\]\s*([^(]+)", text)
    return found.group(1).strip() if found else text


def _is_tls_refusal(exc: BaseException, url: str, client_cert: bool) -> bool:
    """A TLS error, or (TLS 1.3) a reset on the first read of a TLS connection made without a
    client certificate: the server's "certificate required" alert and its close race, and the
    client sometimes sees only the reset."""
    if not isinstance(exc, ConnectionError):
        return False
    if "SSL" in str(exc):
        return True
    return (url.lower().startswith("rediss") and not client_cert
            and "Connection reset by peer" in str(exc))


def backoff() -> EqualJitterBackoff:
    """redis-py's jittered exponential backoff, capped: used by its own retries and by the
    consumer's loop alike."""
    return EqualJitterBackoff(BACKOFF_CAP_S, BACKOFF_BASE_S)


# An argument longer than this (a snapshot payload) is handed to the socket as the very bytes
# object the caller holds, between RESP headers packed around it, instead of being copied into
# one packed command. Small enough to catch every payload, large enough that the per-argument
# Python cost never touches keys, ids and numbers.
LARGE_ARG_BYTES = 2048


class HiredisPacking:
    """Packs commands with hiredis's C packer, except around large arguments.

    redis-py's asyncio connection packs in Python, which was the largest single cost of a
    consumer batch after decoding: 11.7 vs 2.2 µs for a persist call of 10 keys and a 9 KB
    payload (measured here). But hiredis copies every argument into one new buffer, which
    for an MSET of 25 payloads is a 230 KB allocation per call; whenever glibc has just given
    memory back to the OS it serves those from fresh pages, and the page faults made packing
    cost 1.2-8 µs per payload in a micro-benchmark, against 1.1 µs with the payloads passed
    through uncopied (about 1 µs less consumer CPU per message in a drain). redis-py sends
    such pass-through chunks as they are."""

    def pack_command(self, *args: Any) -> list[bytes]:
        # As redis-py does: a command name with spaces ("XINFO GROUPS") is several arguments.
        first = args[0].encode() if isinstance(args[0], str) else args[0]
        if b" " in first:
            args = (*first.split(), *args[1:])
        assert _hiredis_pack is not None  # only mixed in when hiredis can pack
        if not any(type(a) is bytes and len(a) > LARGE_ARG_BYTES for a in args):
            return [_hiredis_pack(args)]
        encode = self.encoder.encode  # type: ignore[attr-defined]  # redis-py's, for the rest
        chunks: list[bytes] = []
        head = [b"*%d\r\n" % len(args)]
        for a in args:
            if type(a) is bytes and len(a) > LARGE_ARG_BYTES:
                head.append(b"$%d\r\n" % len(a))
                chunks += (b"".join(head), a)
                head = [b"\r\n"]
            else:
                b = a if type(a) is bytes else encode(a)
                head.append(b"$%d\r\n%s\r\n" % (len(b), b))
        chunks.append(b"".join(head))
        return chunks


class AskSentinelsOnReconnect:
    """For connections of a Sentinel pool: every (re)connect asks the sentinels where the
    primary is. redis-py asks only when the pool hands out a connection; its own retries of a
    command re-open the same address, so after a failover the first command spent every retry
    on the dead primary (0.8 s here) before failing."""

    async def _connect(self) -> None:
        pool: Any = self.connection_pool  # type: ignore[attr-defined]
        if pool.is_master:
            self.host, self.port = await pool.get_master_address()
        await super()._connect()  # type: ignore[misc]


_FAST_CLASSES: dict[type, type] = {}


def connection_class(cls: type) -> type:
    """The connection class ``connect`` gives a pool whose class is ``cls``: ``cls`` with the
    packing (``HiredisPacking``) and, for a Sentinel pool, the reconnect mixin; made once per
    class."""
    from redis.asyncio.sentinel import SentinelManagedConnection

    mixins: tuple[type, ...] = ()
    if _hiredis_pack is not None and not issubclass(cls, HiredisPacking):
        mixins += (HiredisPacking,)
    if (issubclass(cls, SentinelManagedConnection)
            and not issubclass(cls, AskSentinelsOnReconnect)):
        mixins += (AskSentinelsOnReconnect,)
    if not mixins:
        return cls
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(f"Regionstream{cls.__name__}", (*mixins, cls), {})
    return _FAST_CLASSES[cls]


@dataclass(frozen=True, slots=True)
class Tls:
    """Client-side TLS files (``--tls-ca``, ``--tls-cert``, ``--tls-key``) for a rediss:// or
    rediss+sentinel:// URL. The server's certificate is always verified, hostname included."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def kwargs(self) -> dict[str, Any]:
        given = {"ssl_ca_certs": self.ca, "ssl_certfile": self.cert, "ssl_keyfile": self.key}
        return {k: v for k, v in given.items() if v}


SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT = 26379
# Options of a Sentinel URL's query: credentials for the sentinels themselves (the URL's
# user:password@ is for the primary).
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    """``redis+sentinel://[user:password@]host[:port][,host[:port]...]/<master>[/<db>]``
    (``rediss+sentinel://`` for TLS to sentinels and primary alike)."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    options: dict[str, str] = field(default_factory=dict)


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0].lower() in SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Raises ValueError with a message that never quotes the password."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    userinfo, at, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":") if ":" in item else (item, "", "")
        host = host.strip("[]")
        if not host:
            raise ValueError("names no sentinel host (host[:port][,host[:port]...])")
        try:
            number = int(port) if colon else SENTINEL_PORT
        except ValueError:
            raise ValueError(f"bad sentinel port {port!r}") from None
        if not 0 < number < 65536:
            raise ValueError(f"bad sentinel port {number}")
        sentinels.append((host, number))
    parts = [p for p in path.split("/") if p]
    if not parts or len(parts) > 2:
        raise ValueError("path must be /<master name> or /<master name>/<db number>")
    if len(parts) == 2 and not parts[1].isdigit():
        raise ValueError(f"db must be a number (got {parts[1]!r})")
    options = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(map(repr, unknown))}; a Sentinel URL "
                         f"takes {', '.join(SENTINEL_OPTIONS)}")
    return SentinelTarget(tuple(sentinels), unquote(parts[0]), int(parts[1]) if len(parts) > 1
                          else 0, username, password, scheme.lower() == "rediss+sentinel",
                          options)


def url_password(url: str) -> str | None:
    """The password a URL carries (for messages: whether one was given, never what)."""
    if is_sentinel_url(url):
        return parse_sentinel_url(url).password
    from redis.asyncio.connection import parse_url

    password: str | None = parse_url(url).get("password")
    return password


class _SentinelRedis(aioredis.Redis):
    """A client of the primary a Sentinel names; closing it closes the sentinel clients too."""

    sentinel: Any = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinel is not None:
            await self.sentinel.aclose()


def connect(url: str, *, retries: int = CONNECT_RETRIES,
            socket_timeout: float | None = SOCKET_TIMEOUT_S, tls: Tls | None = None,
            **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (hiredis parses replies when installed).

    ``retries`` > 0: redis-py re-sends a command after a dropped connection. That suits
    idempotent work (a publish is deduplicated downstream, reads of state, scripts of ours)
    but not XREADGROUP: when a reply is lost the server has already moved the entries into the
    consumer's pending list, and a silent re-send would read past them. The consumer's workers
    therefore use ``retries=0`` and handle the error themselves (re-reading their own pending
    entries first).

    A ``redis+sentinel://`` URL gives a client of the primary its sentinels name: a connection
    lost in a failover is opened again to the promoted replica, and a demoted primary's
    READONLY reply drops the connection the same way (redis-py's SentinelConnectionPool)."""
    options: dict[str, Any] = dict(
        decode_responses=False,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(backoff(), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError] if retries else [],
        **(tls.kwargs() if tls else {}),
        **kwargs,
    )
    if is_sentinel_url(url):
        client = _sentinel_client(parse_sentinel_url(url), options, tls)
    else:
        client = aioredis.Redis.from_url(url, **options)
    pool = client.connection_pool
    pool.connection_class = connection_class(pool.connection_class)
    for command, parser in ENTRY_PARSERS.items():  # every field of an entry kept (wire)
        client.set_response_callback(command, parser)
    return client


def _sentinel_client(target: SentinelTarget, options: dict[str, Any],
                     tls: Tls | None) -> aioredis.Redis:
    from redis.asyncio.sentinel import Sentinel

    sentinel_kwargs: dict[str, Any] = {
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S, "socket_timeout": SOCKET_TIMEOUT_S,
        "decode_responses": True,  # SENTINEL replies are parsed as text by redis-py
        "username": target.options.get("sentinel_username") or None,
        "password": target.options.get("sentinel_password") or None,
    }
    if target.tls:
        sentinel_kwargs |= {"ssl": True, **(tls.kwargs() if tls else {})}
    sentinel = Sentinel(list(target.sentinels),  # type: ignore[no-untyped-call, unused-ignore]
                        sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        target.master, redis_class=_SentinelRedis, db=target.db, username=target.username,
        password=target.password, ssl=target.tls, **options)
    assert isinstance(client, _SentinelRedis)
    client.sentinel = sentinel
    return client


def describe_url(url: str) -> str:
    """The URL without its password (``user:password@`` or ``?password=``), for messages and
    logs; it never raises, whatever the text.

    Split by hand, not by urlsplit: an unencoded '/', '?' or '#' in a password makes urlsplit
    cut the userinfo short, and it would show the rest of the password as host or path."""
    import re

    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")  # the last '@': a password may hold one too
    if at and ":" in userinfo:
        rest = userinfo.partition(":")[0] + ":***@" + host
    rest = re.sub(r"(?i)([?&](?:sentinel_)?password=)[^&#]*", r"\1***", rest)
    return scheme + sep + rest
