"""What shared/connection.py takes from redis-py beyond its public API, checked against the
installed version.

The Sentinel mixin (``AskSentinelsOnReconnect``) overrides redis-py's private
``Connection._connect`` and reads the pool's ``is_master``/``get_master_address``; the packer
(``HiredisPacking``) replaces ``pack_command`` and uses the connection's ``encoder``. None of
that is redis-py's public API, so a minor release may move it. ``make test-latest`` runs these
against the newest release the pyproject range allows: a failure names what moved, instead of
a failover that quietly spends its retries on a dead primary again."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection, Connection
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff

from shared.connection import AskSentinelsOnReconnect, HiredisPacking, connection_class
from shared.servers import free_port, start_redis_server

VERSION = f"redis-py {redis.__version__}"


def _moved(what: str) -> str:
    return (f"{VERSION}: {what} -- shared/connection.py relies on it (see that module's "
            f"AskSentinelsOnReconnect/HiredisPacking); adapt them, or narrow the redis range "
            f"in pyproject.toml")


@pytest.mark.parametrize("cls", [Connection, SentinelManagedConnection])
def test_connect_is_an_overridable_coroutine_of_self_alone(cls: type) -> None:
    method = getattr(cls, "_connect", None)
    assert method is not None, _moved(f"{cls.__qualname__}._connect is gone")
    assert inspect.iscoroutinefunction(method), _moved(
        f"{cls.__qualname__}._connect is no longer a coroutine function")
    assert list(inspect.signature(method).parameters) == ["self"], _moved(
        f"{cls.__qualname__}._connect{inspect.signature(method)} takes arguments now")


def test_sentinel_pool_still_says_where_the_primary_is() -> None:
    getter = getattr(SentinelConnectionPool, "get_master_address", None)
    assert getter is not None, _moved("SentinelConnectionPool.get_master_address is gone")
    assert inspect.iscoroutinefunction(getter), _moved(
        "SentinelConnectionPool.get_master_address is no longer a coroutine function")
    assert list(inspect.signature(getter).parameters) == ["self"], _moved(
        f"SentinelConnectionPool.get_master_address{inspect.signature(getter)} changed")
    pool = SentinelConnectionPool("primary", sentinel_manager=None)
    assert getattr(pool, "is_master", None) is True, _moved(
        "a SentinelConnectionPool for the primary has no is_master = True")
    assert pool.connection_class is SentinelManagedConnection, _moved(
        f"the Sentinel pool's connections are {pool.connection_class.__qualname__} now")


def test_pack_command_and_encoder_are_where_the_packer_expects_them() -> None:
    params = list(inspect.signature(AbstractConnection.pack_command).parameters.values())
    assert [p.kind for p in params] == [inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        inspect.Parameter.VAR_POSITIONAL], _moved(
        f"AbstractConnection.pack_command{inspect.signature(AbstractConnection.pack_command)}")
    encoder = getattr(Connection(), "encoder", None)
    assert callable(getattr(encoder, "encode", None)), _moved(
        "a connection no longer has encoder.encode")


def test_pipelines_pack_through_pack_command() -> None:
    """Pipelines (every persist batch) are packed by ``pack_commands``: it must still call
    ``pack_command`` per command, or our packer would be bypassed for the hot path."""
    calls: list[tuple[Any, ...]] = []

    class Recording(connection_class(Connection)):  # type: ignore[misc]
        def pack_command(self, *args: Any) -> list[bytes]:
            calls.append(args)
            result: list[bytes] = super().pack_command(*args)
            return result

    big = b"x" * 5000
    packed = Recording().pack_commands([("SET", "a", big), ("GET", "a")])
    assert calls == [("SET", "a", big), ("GET", "a")], _moved(
        "pack_commands no longer packs each command through pack_command")
    expected = b"".join(Connection().pack_commands([("SET", "a", big), ("GET", "a")]))
    assert b"".join(packed) == expected
    assert issubclass(Recording, HiredisPacking)


class _Pool:
    """What the connections of a Sentinel pool read from it: whether it is the primary's pool,
    whether to health-check, and where the primary is (the next address of a list each time
    it is asked, the last one for good)."""

    is_master = True
    check_connection = False

    def __init__(self, addresses: list[tuple[str, int]]) -> None:
        self.addresses = addresses
        self.asked = 0

    async def get_master_address(self) -> tuple[str, int]:
        address = self.addresses[min(self.asked, len(self.addresses) - 1)]
        self.asked += 1
        return address


async def test_every_connect_asks_where_the_primary_is(redis_url: str) -> None:
    """The behaviour the override exists for: a connect (a first one, or a retry's after the
    primary died) goes to the address the sentinels name now, never to one remembered from
    an earlier connect."""
    port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    dead = ("127.0.0.1", free_port())
    pool = _Pool([dead, ("127.0.0.1", port)])
    cls = connection_class(SentinelManagedConnection)
    assert issubclass(cls, AskSentinelsOnReconnect)
    conn = cls(connection_pool=pool, host=dead[0], port=dead[1],
               retry=Retry(NoBackoff(), 2), socket_connect_timeout=2)
    with start_redis_server() as other:
        try:
            await conn.connect()
            assert (conn.host, conn.port) == ("127.0.0.1", port), _moved(
                "a connect retry went back to the address an earlier attempt was given")
            await conn.send_command("PING")
            assert await conn.read_response() in (b"PONG", "PONG")
            await conn.disconnect()
            pool.addresses, pool.asked = [("127.0.0.1", other.port)], 0
            await conn.connect()  # the primary moved: the reconnect must follow it
            assert (conn.host, conn.port) == ("127.0.0.1", other.port), _moved(
                "a reconnect did not ask the pool where the primary is")
            assert pool.asked >= 1
            await conn.send_command("PING")
            assert await conn.read_response() in (b"PONG", "PONG")
        finally:
            await conn.disconnect()
