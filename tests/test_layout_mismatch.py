"""A producer and consumers on different --shard-by layouts (issue 17, item 15).

A consumer on ``--shard-by region`` beside a producer on ``none`` found its shards empty and
reported the group drained (exit 0), with every entry waiting on the one stream. The other
layout's streams are now read: ``top`` and ``pending`` show a warning line, the consumer logs
one WARNING at start (shared.layout.layout_mismatch)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import redis.asyncio as aioredis

from shared.settings import Settings
from tests.helpers import deployed
from tests.proc import common_flags, run_cli

N_REGIONS = 8


def ok(args: list[str], settings: Settings) -> str:
    done = run_cli([*args, *common_flags(settings)])
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
    return done.stdout.decode()


def views(settings: Settings, shard_by: str) -> dict[str, str]:
    """What an operator sees with ``--shard-by shard_by``: pending (table, JSON), top (table,
    summary line), each with its whitespace runs made one space."""
    flag = ["--shard-by", shard_by]
    seen = {"pending": ok(["pending", *flag], settings),
            "pending --json": json.loads(ok(["pending", "--json", *flag], settings)
                                         )["layout_warning"] or "",
            "top": ok(["top", "--once", *flag], settings),
            "top --plain": ok(["top", "--once", "--plain", *flag], settings)}
    return {view: " ".join(text.split()) for view, text in seen.items()}  # rich wraps lines


@pytest.mark.parametrize(("produced", "served", "names"), [
    ("none", "region", "{stream} (--shard-by none)"),
    ("region", "none", "{stream}:{{mena}}"),
], ids=["one-stream-beside-region-shards", "region-shards-beside-one-stream"])
async def test_top_and_pending_warn_of_entries_in_the_other_layout(
        client: aioredis.Redis, settings: Settings, produced: str, served: str,
        names: str) -> None:
    ok(["produce", "--once", "--shard-by", produced], settings)
    for view, text in views(settings, served).items():
        assert f"{N_REGIONS} entries group {settings.group} has not consumed" in text, view
        assert names.format(stream=settings.stream) in text, view
        assert "but this deployment reads" in text, view


async def test_no_warning_when_layouts_agree_or_the_old_one_was_drained(
        client: aioredis.Redis, settings: Settings) -> None:
    """The documented change of layout (drain, then restart with the new --shard-by) leaves
    acknowledged history on the old stream for --stream-retention: that is not a mismatch."""
    ok(["produce", "--once", "--shard-by", "none"], settings)
    ok(["consume", "--drain", "--shard-by", "none", "--block-ms", "100"], settings)
    assert await client.xlen(settings.stream) == N_REGIONS  # history kept
    for shard_by in ("none", "region"):
        for view, text in views(settings, shard_by).items():
            assert "warning" not in text and "has not consumed" not in text, (shard_by, view)


async def test_layout_mismatch_counts_only_what_the_group_has_not_consumed(
        client: aioredis.Redis, settings: Settings) -> None:
    from shared.layout import layout_mismatch

    keys = settings.keys
    region = deployed(client, dataclasses.replace(settings, shard_by="region"))
    assert await layout_mismatch(region, keys, settings.regions) is None  # nothing anywhere
    await client.xadd(keys.stream, {b"payload": b"{}"})
    await client.xadd(keys.stream, {b"payload": b"{}"})
    assert "2 entries" in (await layout_mismatch(region, keys, settings.regions) or "")
    await client.xgroup_create(keys.stream, keys.group, id="0")
    await client.xreadgroup(keys.group, "c", {keys.stream: ">"}, count=1)  # 1 pending, 1 lag
    assert "2 entries" in (await layout_mismatch(region, keys, settings.regions) or "")
    (entry_id, _), _ = await client.xrange(keys.stream)
    await client.xack(keys.stream, keys.group, entry_id)
    assert "1 entry group" in (await layout_mismatch(region, keys, settings.regions) or "")
    await client.xreadgroup(keys.group, "c", {keys.stream: ">"}, count=1)
    await client.xack(keys.stream, keys.group, *[i for i, _ in await client.xrange(keys.stream)])
    assert await layout_mismatch(region, keys, settings.regions) is None
    one = deployed(client, settings)
    await client.xadd(keys.shard("latam").stream, {b"payload": b"{}"})
    found = await layout_mismatch(one, keys, settings.regions) or ""
    assert "1 entry group" in found and keys.shard("latam").stream in found


async def test_consumer_logs_the_mismatch_once_at_start(client: aioredis.Redis,
                                                        settings: Settings) -> None:
    """Needs the call in consumer/service.py (see the report of issue 17)."""
    ok(["produce", "--once", "--shard-by", "none"], settings)
    done = run_cli(["consume", "--drain", "--shard-by", "region", "--block-ms", "100",
                    *common_flags(settings)])
    assert done.returncode == 0, done.stderr.decode()
    warnings = [line for line in done.stderr.decode().splitlines() if " WARNING " in line]
    assert len(warnings) == 1, warnings
    assert f"{N_REGIONS} entries group {settings.group} has not consumed" in warnings[0]
