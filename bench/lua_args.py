"""``python -m bench.lua_args``: what handing strings to Redis's Lua costs the server.

The measurement behind sending payloads as MSET arguments instead of script arguments (see
``consumer/persist.lua``): an empty script is called with 100 arguments of each size on a
private redis-server, and ``INFO commandstats`` gives the server's time per call.
"""

from __future__ import annotations

import asyncio

from shared.connection import connect
from shared.servers import start_redis_server

SIZES = (100, 1_000, 9_000, 64_000)
ARGS_PER_CALL = 100
CALLS = 200
NS_PER_US = 1000


async def measure() -> list[tuple[int, float]]:
    """(argument size, server µs per call) for each size."""
    out = []
    with start_redis_server() as server:
        redis = connect(server.url)
        try:
            sha = await redis.script_load("return 1")
            for size in SIZES:
                args = [bytes([65 + i % 26]) * size for i in range(ARGS_PER_CALL)]
                await redis.config_resetstat()
                for _ in range(CALLS):
                    await redis.evalsha(sha, 0, *args)
                stats = (await redis.info("commandstats"))["cmdstat_evalsha"]
                out.append((size, float(stats["usec_per_call"])))
        finally:
            await redis.aclose()
    return out


def main() -> None:
    rows = asyncio.run(measure())
    print(f"empty Lua script, {ARGS_PER_CALL} arguments per call, {CALLS} calls each:")
    for size, usec in rows:
        per_byte_ns = usec * NS_PER_US / (ARGS_PER_CALL * size)
        print(f"  {size:>6} B each: {usec:9.1f} µs per call, {per_byte_ns:5.2f} ns per byte")


if __name__ == "__main__":
    main()
