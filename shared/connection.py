"""Redis connections and the one place where Redis errors are classified."""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import EqualJitterBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    BusyLoadingError,
    ConnectionError,
    NoPermissionError,
    NoScriptError,
    ReadOnlyError,
    ResponseError,
    TimeoutError,
)

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


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"  # connection reset, timeout, LOADING, BUSY, READONLY after failover
    NOGROUP = "nogroup"  # the stream or group is gone: recreate it
    BUSYGROUP = "busygroup"  # group exists already: fine
    NOSCRIPT = "noscript"  # script cache flushed: load it again
    WRONGTYPE = "wrongtype"  # a key of ours holds the wrong type: a data fault, not transient
    # No retry can fix it: a missing ACL permission, a wrong password, a command the server
    # does not know. The process says once what is missing and exits (EXIT_PERMANENT).
    PERMANENT = "permanent"
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
    if isinstance(exc, OSError):
        return ErrorKind.TRANSIENT
    text = str(exc) if isinstance(exc, ResponseError | str) else ""
    words = text.split(" ", 2)
    # Some servers (fakeredis, proxies) put a generic "ERR" before the specific code.
    head = (words[1] if words[0] == "ERR" and len(words) > 1 else words[0]).upper()
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
        "TRYAGAIN": ErrorKind.TRANSIENT,
        "NOPERM": ErrorKind.PERMANENT,
        "NOAUTH": ErrorKind.PERMANENT,
        "WRONGPASS": ErrorKind.PERMANENT,
    }.get(head, ErrorKind.OTHER)


def backoff() -> EqualJitterBackoff:
    """redis-py's jittered exponential backoff, capped: used by its own retries and by the
    consumer's loop alike."""
    return EqualJitterBackoff(BACKOFF_CAP_S, BACKOFF_BASE_S)


# An argument longer than this (a snapshot payload) is handed to the socket as the very bytes
# object the caller holds, between RESP headers packed around it, instead of being copied into
# one packed command. Small enough to catch every payload, large enough that the per-argument
# Python cost never touches keys, ids and numbers.
LARGE_ARG_BYTES = 2048


class _HiredisPacking:
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
                b = encode(a)
                head.append(b"$%d\r\n%s\r\n" % (len(b), b))
        chunks.append(b"".join(head))
        return chunks


_FAST_CLASSES: dict[type, type] = {}


def _fast_packing(cls: type) -> type:
    if _hiredis_pack is None or issubclass(cls, _HiredisPacking):
        return cls
    if cls not in _FAST_CLASSES:
        _FAST_CLASSES[cls] = type(f"HiredisPacking{cls.__name__}", (_HiredisPacking, cls), {})
    return _FAST_CLASSES[cls]


def connect(url: str, *, retries: int = CONNECT_RETRIES,
            socket_timeout: float | None = SOCKET_TIMEOUT_S, **kwargs: Any) -> aioredis.Redis:
    """An asyncio client for ``url`` (hiredis parses replies when installed).

    ``retries`` > 0: redis-py re-sends a command after a dropped connection. That suits
    idempotent work (a publish is deduplicated downstream, reads of state, scripts of ours)
    but not XREADGROUP: when a reply is lost the server has already moved the entries into the
    consumer's pending list, and a silent re-send would read past them. The consumer's workers
    therefore use ``retries=0`` and handle the error themselves (re-reading their own pending
    entries first)."""
    client = aioredis.Redis.from_url(
        url,
        decode_responses=False,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(backoff(), retries),
        retry_on_error=[ConnectionError, TimeoutError, BusyLoadingError] if retries else [],
        **kwargs,
    )
    pool = client.connection_pool
    pool.connection_class = _fast_packing(pool.connection_class)
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
    rest = re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", rest)
    return scheme + sep + rest
