"""The command line as a user meets it: one-line errors, exit codes, sources, show, demo."""

from __future__ import annotations

import json

import msgspec
import pytest
import redis.asyncio as aioredis

from producer.synthetic import SyntheticSource
from shared.keys import Keys
from shared.schema import encode
from shared.servers import free_port
from shared.settings import Settings
from tests.proc import cli_env, common_flags, run_cli


@pytest.mark.parametrize(("args", "names"), [
    (["consume", "--batch", "0"], "--batch"),
    (["consume", "--workers", "many"], "--workers"),
    (["produce", "--count", "-3"], "--count"),
    (["produce", "--regions", "mena,atlantis"], "atlantis"),
    (["produce", "--redis-url", "http://x"], "--redis-url"),
    (["produce", "--redis-url", "redis://:99999999"], "--redis-url"),
    (["consume", "--frobnicate"], "--frobnicate"),
    (["produce", "--once", "--count", "5"], "--count"),
])
def test_bad_flag_is_one_line_naming_it_exit_2(args: list[str], names: str) -> None:
    done = run_cli(args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert names in lines[0] and "Traceback" not in lines[0]


def test_bad_environment_values_reported_together() -> None:
    env = cli_env() | {"REGIONSTREAM_BATCH": "zero", "REGIONSTREAM_WORKERS": "-1"}
    done = run_cli(["consume"], env=env)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "REGIONSTREAM_BATCH" in err and "REGIONSTREAM_WORKERS" in err
    assert "Traceback" not in err


def test_unreachable_redis_is_a_clear_message() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = run_cli(["produce", "--once", "--redis-url", url])
    assert done.returncode == 1
    err = done.stderr.decode().strip()
    assert err.startswith("regionstream: cannot reach Redis at " + url), err
    assert "Traceback" not in err


async def test_produce_once_consume_drain_show(client: aioredis.Redis, settings: Settings) -> None:
    flags = common_flags(settings)
    assert run_cli(["produce", "--once", "--seed", "3", *flags]).returncode == 0
    assert await client.xlen(settings.stream) == 8
    done = run_cli(["consume", "--drain", "--workers", "3", "--block-ms", "100", *flags])
    assert done.returncode == 0, done.stderr.decode()
    assert b"persisted=8" in done.stderr
    shown = run_cli(["show", "east-asia", "--json", *flags])
    assert shown.returncode == 0
    assert json.loads(shown.stdout)["region_id"] == "east-asia"
    human = run_cli(["show", "europe", *flags])
    assert human.returncode == 0 and b"regime" in human.stdout


def test_show_without_snapshot_exits_1(settings: Settings) -> None:
    done = run_cli(["show", "mena", *common_flags(settings)])
    assert done.returncode == 1
    assert b"no snapshot" in done.stderr


def test_show_unknown_region_exits_2(settings: Settings) -> None:
    done = run_cli(["show", "atlantis", *common_flags(settings)])
    assert done.returncode == 2


async def test_jsonl_source_reports_bad_lines_and_publishes_the_rest(
        client: aioredis.Redis, settings: Settings, keys: Keys, tmp_path: object) -> None:
    import pathlib
    import time

    snaps = SyntheticSource(seed=11).cycle(int(time.time() * 1000))
    bad_conf = msgspec.json.decode(encode(snaps[1]))
    bad_conf["meta"]["snapshot_confidence"] = 1.5
    lines = [encode(snaps[0]), b"{broken", msgspec.json.encode(bad_conf), b"", encode(snaps[2])]
    path = pathlib.Path(str(tmp_path)) / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    done = run_cli(["produce", "--source", str(path), *common_flags(settings)])
    assert done.returncode == 4, done.stderr
    err = done.stderr.decode()
    assert "line 2:" in err and "line 3:" in err and "snapshot_confidence" in err
    entries = await client.xrange(settings.stream)
    assert [e[1][b"snapshot_id"].decode() for e in entries] == [
        snaps[0].meta.snapshot_id, snaps[2].meta.snapshot_id]
    # stdin works the same way
    piped = run_cli(["produce", "--source", "-", *common_flags(settings)], stdin=encode(snaps[3]))
    assert piped.returncode == 0, piped.stderr
    assert await client.xlen(settings.stream) == 3


async def test_count_mode_publishes_distinct_snapshots(client: aioredis.Redis,
                                                       settings: Settings) -> None:
    flags = common_flags(settings)
    done = run_cli(["produce", "--count", "120", "--chunk", "50", *flags])
    assert done.returncode == 0, done.stderr
    assert await client.xlen(settings.stream) == 120
    done = run_cli(["consume", "--drain", "--batch", "40", "--block-ms", "100", *flags])
    assert done.returncode == 0
    assert b"persisted=120 duplicate=0" in done.stderr


def test_python_dash_m_entry_points(settings: Settings) -> None:
    import subprocess
    import sys

    flags = common_flags(settings)
    for module, extra in (("producer", ["--once"]), ("consumer", ["--drain", "--block-ms", "50"])):
        done = subprocess.run([sys.executable, "-m", module, *extra, *flags],
                              capture_output=True, timeout=60, env=cli_env(), check=False)
        assert done.returncode == 0, (module, done.stderr)


def test_demo_runs_for_a_duration(settings: Settings) -> None:
    done = run_cli(["demo", "--duration", "4", "--interval", "1", "--plain",
                    *common_flags(settings)])
    assert done.returncode == 0, done.stderr.decode()
    out = done.stdout.decode()
    assert "final:" in out and "regions_with_latest=8/8" in out
    assert "using Redis at" in done.stderr.decode()


@pytest.mark.parametrize(("path", "says"), [
    (None, "started a private redis-server"),
    ("/nonexistent", "using in-process fakeredis"),
])
def test_demo_starts_its_own_redis(path: str | None, says: str) -> None:
    env = cli_env()
    if path is not None:
        env["PATH"] = path  # no redis-server to be found: the fakeredis fallback
    done = run_cli(["demo", "--duration", "4", "--interval", "1", "--plain"], env=env)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert says in done.stderr.decode()
    assert "regions_with_latest=8/8" in done.stdout.decode()


async def test_demo_stops_cleanly_on_ctrl_c(settings: Settings) -> None:
    import asyncio
    import signal

    from tests.proc import spawn_cli

    proc = spawn_cli(["demo", "--interval", "1", "--plain", *common_flags(settings)])
    assert proc.stdout is not None
    first = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 60)
    assert b"stream=" in first  # running: a summary line per cycle
    proc.send_signal(signal.SIGINT)
    out, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"final:" in out and b"Traceback" not in err


async def test_demo_on_a_given_redis_keeps_off_production_names(
        client: aioredis.Redis, settings: Settings) -> None:
    done = run_cli(["demo", "--duration", "3", "--interval", "1", "--plain",
                    "--redis-url", settings.redis_url])
    try:
        assert done.returncode == 0, done.stderr.decode()[-2000:]
        assert await client.exists("snapshots") == 0  # the default stream was not touched
        assert await client.xlen("regionstream-demo") >= 8
        assert [k async for k in client.scan_iter(match="intelligence:*", count=1000)] == []
    finally:
        demo_keys = [k async for k in client.scan_iter(match="regionstream-demo*", count=1000)]
        if demo_keys:
            await client.delete(*demo_keys)
