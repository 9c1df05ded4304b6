"""Server-side scripts: loaded from the ``.lua`` files beside this module, once.

Calls go out as EVALSHA with the SHA computed locally, so a batch needs no SCRIPT EXISTS or
SCRIPT LOAD round trip; only when Redis answers NOSCRIPT (restart, SCRIPT FLUSH, failover) is
the script loaded again and the refused calls sent once more.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    body: bytes
    sha: str


@cache
def script(name: str) -> Script:
    body = resources.files("consumer").joinpath(f"{name}.lua").read_bytes()
    return Script(name, body, hashlib.sha1(body).hexdigest())


def persist() -> Script:
    return script("persist")


def dead_letter() -> Script:
    return script("dead_letter")


def forget_consumer() -> Script:
    return script("forget_consumer")


def replay_dlq() -> Script:
    return script("replay_dlq")


ALL = ("persist", "dead_letter", "forget_consumer", "replay_dlq")


async def call(redis: aioredis.Redis, s: Script, keys: list[str], args: list[Any]) -> Any:
    """One EVALSHA outside a batch pipeline, loading the script again on NOSCRIPT."""
    try:
        return await redis.evalsha(s.sha, len(keys), *keys, *args)
    except NoScriptError:
        await redis.script_load(s.body)
        return await redis.evalsha(s.sha, len(keys), *keys, *args)
