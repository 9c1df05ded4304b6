"""Connection plumbing: the hiredis command packer, error classification, URLs in messages."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.exceptions import (
    AskError,
    AuthenticationError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    MovedError,
    NoPermissionError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.connection import (
    ErrorKind,
    HiredisPacking,
    classify,
    connect,
    connection_class,
    describe_url,
    parse_sentinel_url,
)
from shared.settings import Settings, SettingsError

COMMANDS = [
    ("SET", "k", b"v" * 9000, "EX", 7776000, "NX"),
    ("XINFO GROUPS", "stream"),
    (b"XINFO STREAM", b"s"),
    ("EVALSHA", "a" * 40, 3, "s", "{mena}:i", "{mena}:l", "group", 900, 1.5, b"\x00\xff"),
    ("XREADGROUP", "GROUP", "g", "c", "COUNT", 200, "BLOCK", 2000, "STREAMS", "s", ">"),
    # large arguments are passed through between hand-packed RESP headers
    ("MSET", "{mena}:a", b"a" * 9000, "{mena}:b", b"\r\n" * 5000, b"k", 3, "é", b"x" * 2049),
    ("XADD", "s", "*", "payload", b"{" * 2048, "v", 1.25, "big", b"}" * 2049),
    ("XINFO STREAM", b"y" * 3000),
    ("SET", "k", "s" * 9000),  # a large str goes through hiredis like any str
]


def test_large_arguments_are_sent_without_a_copy() -> None:
    payload = b"p" * 9000
    chunks = connection_class(Connection)().pack_command("MSET", "k1", payload, "k2", payload)
    assert sum(chunk is payload for chunk in chunks) == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_fast_packing_sends_the_same_bytes_as_redis_py(command: tuple[object, ...]) -> None:
    stock = b"".join(Connection().pack_command(*command))  # type: ignore[arg-type]
    fast = b"".join(connection_class(Connection)().pack_command(*command))
    assert fast == stock


async def test_connect_uses_fast_packing_and_talks_to_redis(redis_url: str) -> None:
    client = connect(redis_url)
    try:
        assert issubclass(client.connection_pool.connection_class, HiredisPacking)
        assert await client.ping()
        assert "maxmemory" in await client.config_get("maxmemory")  # a two-word command
        assert (await client.info("server"))["redis_version"]
    finally:
        await client.aclose()


@pytest.mark.parametrize(("error", "kind"), [
    (ResponseError("NOGROUP No such key 's' or consumer group 'g'"), ErrorKind.NOGROUP),
    (ResponseError("ERR BUSYGROUP Consumer Group name already exists"), ErrorKind.BUSYGROUP),
    (ResponseError("BUSY Redis is busy running a script"), ErrorKind.TRANSIENT),
    (ResponseError("WRONGTYPE Operation against a key"), ErrorKind.WRONGTYPE),
    (ResponseError("ERR unknown command 'XAUTOCLAIM', with args beginning with:"),
     ErrorKind.PERMANENT),
    (ResponseError("ERR syntax error"), ErrorKind.OTHER),
    (NoPermissionError("NOPERM this user has no permissions to run the 'evalsha' command"),
     ErrorKind.PERMANENT),
    ("NOPERM No permissions to access a key", ErrorKind.PERMANENT),
    ("The user executing the script can't run this command or subcommand", ErrorKind.PERMANENT),
    (AuthenticationError("WRONGPASS invalid username-password pair"), ErrorKind.PERMANENT),
    (ResponseError("NOAUTH Authentication required."), ErrorKind.PERMANENT),
    (NoScriptError("NOSCRIPT No matching script"), ErrorKind.NOSCRIPT),
    (RedisConnectionError("reset"), ErrorKind.TRANSIENT),
    (BusyLoadingError("LOADING"), ErrorKind.TRANSIENT),
    (ConnectionResetError(), ErrorKind.TRANSIENT),
    ("READONLY You can't write against a read only replica", ErrorKind.TRANSIENT),
    # Redis Cluster: a slot moved, migrating, failing over; redis-py's own cluster errors
    (MovedError("1133 127.0.0.1:7001"), ErrorKind.TRANSIENT),
    (AskError("1133 127.0.0.1:7001"), ErrorKind.TRANSIENT),
    (TryAgainError("Multiple keys request during rehashing of slot"), ErrorKind.TRANSIENT),
    (ClusterDownError("The cluster is down"), ErrorKind.TRANSIENT),
    ("MOVED 1133 127.0.0.1:7001", ErrorKind.TRANSIENT),
    ("ASK 1133 127.0.0.1:7001", ErrorKind.TRANSIENT),
    ("TRYAGAIN Multiple keys request during rehashing of slot", ErrorKind.TRANSIENT),
    ("CLUSTERDOWN Hash slot not served", ErrorKind.TRANSIENT),
    ("UNBLOCKED the stream key no longer served by this node", ErrorKind.TRANSIENT),
    ("NOREPLICAS Not enough good replicas to write.", ErrorKind.TRANSIENT),
    (ClusterError("TTL exhausted."), ErrorKind.TRANSIENT),
    (RedisClusterException("no node for slot"), ErrorKind.TRANSIENT),
])
def test_errors_are_classified_in_one_place(error: BaseException | str, kind: ErrorKind) -> None:
    assert classify(error) is kind


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://user:s3cret@h:6379/0", "redis://user:***@h:6379/0"),
    ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
    ("redis://h/0?socket_timeout=3&PASSWORD=s3cret&db=1",
     "redis://h/0?socket_timeout=3&PASSWORD=***&db=1"),
    ("unix:///tmp/redis.sock?password=s3cret&db=2", "unix:///tmp/redis.sock?password=***&db=2"),
    ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
    # unencoded '/', '@', '?', '#' in a password: urlsplit would cut it and show the rest
    ("redis://:s3/cret@h/0", "redis://:***@h/0"),
    ("redis://u:s3@cret@h/0", "redis://u:***@h/0"),
    ("redis://:s3?cret@h/0", "redis://:***@h/0"),
    ("redis://:s3#cret@h:70000/0", "redis://:***@h:70000/0"),
    ("redis://:s3cret@[::1/0", "redis://:***@[::1/0"),  # unparseable, still masked
])
def test_password_never_shown(url: str, shown: str) -> None:
    assert describe_url(url) == shown


def test_unix_and_tls_urls_keep_their_connection_kind() -> None:
    for url, base in (("unix:///tmp/redis.sock", "UnixDomainSocketConnection"),
                      ("rediss://localhost:6380/0", "SSLConnection")):
        client: aioredis.Redis = connect(url)
        cls = client.connection_pool.connection_class
        assert base in [c.__name__ for c in cls.__mro__]
        assert issubclass(cls, HiredisPacking)


@pytest.mark.parametrize(("url", "sentinels", "master", "db"), [
    ("redis+sentinel://127.0.0.1:26379/mymaster", [("127.0.0.1", 26379)], "mymaster", 0),
    ("redis+sentinel://a:1,b:2,c/m/3", [("a", 1), ("b", 2), ("c", 26379)], "m", 3),
    ("redis+sentinel://u:p%40ss@[::1]:5000/m", [("::1", 5000)], "m", 0),
])
def test_sentinel_urls_parse(url: str, sentinels: list[tuple[str, int]], master: str,
                             db: int) -> None:
    t = parse_sentinel_url(url)
    assert list(t.sentinels) == sentinels and t.master == master and t.db == db


@pytest.mark.parametrize("url", [
    "redis+sentinel://127.0.0.1:26379",  # no master name
    "redis+sentinel://127.0.0.1:26379/m/x",  # db not a number
    "redis+sentinel://127.0.0.1:99999/m",  # port out of range
    "redis+sentinel://:26379/m",  # no host
    "redis+sentinel://h/m?ssl_ca_certs=x",  # an option it does not take
])
def test_bad_sentinel_urls_are_refused_naming_the_problem(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({"redis_url": url}, env={})
    assert caught.value.problems[0].startswith("--redis-url: not a valid Sentinel URL")


def test_sentinel_url_passwords_are_never_shown() -> None:
    url = "redis+sentinel://user:s3cr3t@h1:1,h2:2/m/0?sentinel_password=t0p%40s3cr3t"
    shown = describe_url(url)
    assert "s3cr3t" not in shown and "t0p" not in shown
    assert "h1:1,h2:2/m/0" in shown
    with pytest.raises(SettingsError) as caught:
        Settings.load({"redis_url": url.replace("/m/0", "/m/x")}, env={})
    assert "s3cr3t" not in str(caught.value)
