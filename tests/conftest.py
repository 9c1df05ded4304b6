"""Fixtures: one real redis-server per session (or REDIS_URL), and per-test names.

Every test gets its own uuid-named stream, group and key prefix, so tests never FLUSHALL and
can run in parallel against one server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest
import redis.asyncio as aioredis

from harness import wait
from harness.cluster import Cluster, start_cluster
from shared.connection import connect
from shared.keys import Keys
from shared.servers import redis_server_binary, start_redis_server
from shared.settings import Settings

CONDITION_TIMEOUT_S = 30.0
POLL_S = 0.01


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that kills processes or servers is in the slow tier too (`make test-fast`
    selects ``-m "not slow"``), so marking it ``chaos`` is enough."""
    for item in items:
        if item.get_closest_marker("chaos") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if redis_server_binary() is None:
        # Not a skip: `make test` installs redis-server; a run without it is a broken setup.
        pytest.fail("redis-server is not installed (make test installs it as root, or set "
                    "REDIS_URL to a server these tests may use)", pytrace=False)
    with start_redis_server() as server:
        yield server.url


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[Cluster]:
    """A Redis Cluster (3 masters + 3 replicas) for the tests parametrized on it, started on
    first use. Tests that kill, fail over or reshard start their own (tests/test_cluster.py)."""
    with start_cluster(masters=3, replicas_per_master=1) as cluster:
        yield cluster


@pytest.fixture
def settings(redis_url: str) -> Settings:
    tag = uuid.uuid4().hex[:12]
    return Settings.load({
        "redis_url": redis_url, "stream": f"test-stream:{tag}", "group": f"g-{tag}",
        "prefix": f"test:{tag}", "name": f"w-{tag}", "block_ms": 100, "grace_s": 5.0,
    }, env={})


@pytest.fixture
def keys(settings: Settings) -> Keys:
    return settings.keys


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    c = connect(settings.redis_url)
    yield c
    # Tidy this test's names only; other tests may be running on the same server.
    keys_to_drop = [k async for k in c.scan_iter(match=f"{settings.prefix}:*", count=1000)]
    keys_to_drop += [k async for k in c.scan_iter(match=f"{settings.stream}:*", count=1000)]
    keys_to_drop += [settings.stream.encode()]
    await c.delete(*keys_to_drop)
    await c.aclose()


async def wait_until(predicate: Callable[[], Awaitable[bool]],
                     within: float = CONDITION_TIMEOUT_S, what: str = "condition") -> None:
    """Wait on a condition (a bounded poll of Redis state), never on a fixed sleep."""
    await wait.until_async(wait.holds_async(predicate, "not yet"), within, what, poll_s=POLL_S)
