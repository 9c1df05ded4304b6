"""The command line keeps the contract it states (issue 19, section 2): every flag has its help
and the defaults it shows are the real ones; replay's modes and times; a stream or group that
does not exist is an error for every operator command; ``regionstream schema``."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from regionstream.parser import DEMO_NAMES, commands, range_bound
from shared.connection import describe_url
from shared.schema import REGIONS, json_schema
from shared.settings import Settings
from tests.proc import cli_env, common_flags, one_line, run_cli

# -- help --------------------------------------------------------------------------------------


def test_every_command_and_option_has_a_help_text() -> None:
    for name, p in commands().items():
        assert p.description and len(p.description) > 40, name
        for action in p.offered():
            label = "/".join(action.option_strings) or action.dest
            assert action.help and action.help.strip(), f"{name} {label}: no help"


def test_the_defaults_help_shows_are_the_real_ones() -> None:
    """A help text saying "(default N)" for a setting's flag says that setting's default (or
    the command's own default for the flag, as demo's --interval 2)."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    checked = 0
    for name, p in commands().items():
        for action in p.offered():
            said = re.search(r"default:? (\d+(?:\.\d+)?)(?![.\d])", action.help or "")
            if said is None or action.dest not in defaults:
                continue
            real = action.default if action.default is not None else defaults[action.dest]
            assert float(said.group(1)) == float(real), (name, action.option_strings)
            checked += 1
    assert checked >= 15
    assert "(default 262144)" in commands()["consume"]._option_string_actions[
        "--max-bytes"].help  # type: ignore[operator]


def test_acl_offers_no_connection_flags() -> None:
    """It connects to nothing: --help offers only the names it renders (a script giving every
    command the same connection flags still runs)."""
    done = run_cli(["acl", "--help"])
    assert done.returncode == 0
    helped = done.stdout.decode()
    for flag in ("--redis-url", "--tls-ca", "--tls-cert", "--tls-key", "--allow-eviction",
                 "--log-level", "connection"):
        assert flag not in helped, flag
    for flag in ("--stream", "--group", "--prefix"):
        assert flag in helped, flag
    done = run_cli(["acl", "--stream", "orders", "--redis-url", "redis://127.0.0.1:1/0"])
    assert done.returncode == 0 and "~orders:*" in done.stdout.decode()


def test_demo_help_shows_the_demos_own_defaults() -> None:
    helped = " ".join(run_cli(["demo", "--help"]).stdout.decode().split())
    assert "default: a private redis-server on a free port" in helped
    assert "REGIONSTREAM_REDIS_URL" in helped and "redis://localhost:6379" not in helped
    for name, value in DEMO_NAMES.items():
        assert f"default {value}" in helped, name
    assert "default snapshots" not in helped and "default persisters" not in helped
    assert "consumer workers (default 4)" in helped


def test_schema_prints_the_snapshots_json_schema() -> None:
    env = cli_env() | {"REGIONSTREAM_BATCH": "zero"}  # a bad setting is none of its business
    done = run_cli(["schema"], env=env)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout) == json_schema()
    assert done.stdout.decode() == json.dumps(json_schema(), indent=2) + "\n"
    assert done.stderr == b""
    line = one_line(run_cli(["schema", "--redis-url", "redis://x"]), 2)
    assert "unrecognized arguments: --redis-url" in line


# -- replay --range: times ---------------------------------------------------------------------

NOW_MS = 1_800_000_000_000
DEC_6 = int(datetime(2026, 12, 6, 10, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(("text", "bound"), [
    ("-", "-"), ("+", "+"), ("1700000000000-3", "1700000000000-3"), ("(5", "(5"),
    ("2026-12-06T10:00:00Z", str(DEC_6)),
    ("2026-12-06T10:00:00", str(DEC_6)),  # no offset: UTC
    ("2026-12-06T11:00:00+01:00", str(DEC_6)),
    ("2026-12-06T10:00:00.250Z", str(DEC_6 + 250)),
    ("-1h", str(NOW_MS - 3_600_000)), ("-30m", str(NOW_MS - 1_800_000)),
    ("-45s", str(NOW_MS - 45_000)), ("-1.5h", str(NOW_MS - 5_400_000)),
    ("-2d", str(NOW_MS - 172_800_000)), ("-1w", str(NOW_MS - 604_800_000)),
    ("-500ms", str(NOW_MS - 500)),
    ("1969-12-31T23:59:59Z", None), ("-100000w", None), ("foo", None), ("-1", None),
    ("-1y", None), ("2026-13-01", None),
])
def test_range_bounds(text: str, bound: str | None) -> None:
    assert range_bound(text, now_ms=NOW_MS) == bound


async def test_replay_range_takes_times(client: aioredis.Redis, settings: Settings) -> None:
    """Relative and ISO times select by the entries' times (their ids), through the real
    command line (a relative time starts with '-' and is still a value, not a flag)."""
    await client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    await client.xadd(settings.stream, {b"payload": b"{}"}, id="1000-0")  # 1970, 1 s in
    await client.xadd(settings.stream, {b"payload": b"{}"}, id="2000-0")
    new = (await client.xadd(settings.stream, {b"payload": b"{}"})).decode()  # now

    def ids(*bounds: str) -> list[str]:
        done = run_cli(["replay", "--range", *bounds, "--dry-run", "--json",
                        *common_flags(settings)])
        assert done.returncode == 0, done.stderr.decode()
        return list(json.loads(done.stdout)["ids"])

    assert ids("-1h", "+") == [new]
    assert ids("1970-01-01T00:00:01Z", "1970-01-01T00:00:01.999Z") == ["1000-0"]
    assert ids("-", "1970-01-01T00:00:02") == ["1000-0", "2000-0"]
    human = run_cli(["replay", "--range", "-1h", "+", "--dry-run", *common_flags(settings)])
    assert "would replay 1 stream entries" in human.stdout.decode()
    assert "(-1h..+)" in human.stdout.decode()


# -- a stream or group that does not exist -----------------------------------------------------

# The commands that read the group; replay --range re-drives the stream alone (and --dlq
# needs the stream or its dead-letter stream: below).
GROUP_COMMANDS = [["top", "--once"], ["top", "--once", "--plain"], ["pending"],
                  ["pending", "--json"], ["replay", "--pending"]]
RANGE_COMMANDS = [["replay", "--range", "-", "+"], ["replay", "--range", "-1h", "+", "--dry-run"]]


def _missing(settings: Settings, on: str = "", check: str = "--stream and --redis-url",
             group: bool = True) -> str:
    nor = f", nor its group {settings.group!r}" if group else ""
    return (f"regionstream: stream {settings.stream!r} does not exist{on} at "
            f"{describe_url(settings.redis_url)}{nor}: check {check}")


@pytest.mark.parametrize("command", GROUP_COMMANDS + RANGE_COMMANDS, ids=" ".join)
def test_a_stream_that_does_not_exist_is_one_line_exit_1(settings: Settings,
                                                         command: list[str]) -> None:
    line = one_line(run_cli([*command, *common_flags(settings)]), 1)
    assert line == _missing(settings, group=command[:2] != ["replay", "--range"])


@pytest.mark.parametrize("dry_run", [[], ["--dry-run"]], ids=["move", "dry-run"])
def test_replay_dlq_of_a_stream_that_does_not_exist_is_one_line_exit_1(
        settings: Settings, dry_run: list[str]) -> None:
    line = one_line(run_cli(["replay", "--dlq", *dry_run, *common_flags(settings)]), 1)
    assert line == (f"regionstream: stream {settings.stream!r} does not exist at "
                    f"{describe_url(settings.redis_url)}, nor its dead-letter stream "
                    f"{settings.keys.dlq!r}: check --stream and --redis-url")


@pytest.mark.parametrize("command", GROUP_COMMANDS, ids=" ".join)
async def test_a_group_that_does_not_exist_is_one_line_exit_1(
        client: aioredis.Redis, settings: Settings, command: list[str]) -> None:
    await client.xgroup_create(settings.stream, "another-group", id="0", mkstream=True)
    line = one_line(run_cli([*command, *common_flags(settings)]), 1)
    assert line == (f"regionstream: stream {settings.stream!r} has no group "
                    f"{settings.group!r}: check --group")


async def test_replay_dlq_needs_no_group(client: aioredis.Redis, settings: Settings) -> None:
    await client.xadd(settings.keys.dlq, {b"payload": b"{}", b"region": b"mena",
                                          b"dlq_reason": b"undecodable"})
    done = run_cli(["replay", "--dlq", "--dry-run", *common_flags(settings)])
    assert done.returncode == 0, done.stderr.decode()
    assert "would move 1 dead letter(s)" in done.stdout.decode()


SHARDED = ["--shard-by", "region"]


@pytest.mark.parametrize("command", [["top", "--once"], ["pending"], ["replay", "--pending"]],
                         ids=" ".join)
async def test_sharded_does_not_exist_means_on_no_shard(
        client: aioredis.Redis, settings: Settings, command: list[str]) -> None:
    """--shard-by region: missing on every shard is the error; on one shard it exists: the
    views show it (replay --pending then stops at the first shard without the group, NOGROUP,
    exit 1, as it did before)."""
    args = [*command, *SHARDED, *common_flags(settings)]
    on = (f" on any of its {len(REGIONS)} region shards ({settings.stream}:{{<region>}})")
    line = one_line(run_cli(args), 1)
    assert line == _missing(settings, on, "--stream, --shard-by and --redis-url")
    one = settings.keys.shard("latam")
    await client.xgroup_create(one.stream, "another-group", id="0", mkstream=True)
    line = one_line(run_cli(args), 1)
    assert line == (f"regionstream: stream {settings.stream!r} has no group "
                    f"{settings.group!r}{on}: check --group")
    await client.xgroup_create(one.stream, settings.group, id="0")
    if command[0] != "replay":
        done = run_cli(args)
        assert done.returncode == 0, done.stderr.decode()


@pytest.mark.parametrize("command", [["top", "--once"], ["pending"], ["replay", "--pending"]],
                         ids=" ".join)
async def test_a_stream_of_another_type_is_exit_3(client: aioredis.Redis, settings: Settings,
                                                  command: list[str]) -> None:
    """A key of ours holding another type: what no retry fixes (exit 3), not "no group"."""
    await client.set(settings.stream, b"not a stream")
    line = one_line(run_cli([*command, *common_flags(settings)]), 3)
    assert line.startswith("regionstream: ") and "WRONGTYPE" in line, line


def test_top_help_says_what_its_rates_are() -> None:
    from regionstream.parser import RATES_WINDOW_S

    helped = " ".join(run_cli(["top", "--help"]).stdout.decode().split())
    assert f"rates over the last {RATES_WINDOW_S:.0f} s" in helped
    assert "derived as acked - persisted - dead-lettered" in helped.replace("dead- l", "dead-l")
    assert "never below 0" in helped


def test_show_region_help_names_every_region() -> None:
    region = next(a for a in commands()["show"]._actions if a.dest == "region")
    assert region.help is not None
    assert re.findall(r"[a-z-]+", region.help.split("one of ", 1)[1]) == list(REGIONS)


def test_replay_range_needs_the_stream_not_its_group(settings: Settings) -> None:
    """Re-driving history acknowledges nothing: a stream whose group was destroyed (or that
    another group reads) can be replayed; a stream that does not exist is still exit 1."""
    import redis

    flags = common_flags(settings)
    assert run_cli(["produce", "--once", *flags]).returncode == 0
    with redis.Redis.from_url(settings.redis_url) as r:
        r.xgroup_destroy(settings.stream, settings.group)
    done = run_cli(["replay", "--range", "-", "+", "--json", *flags])
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["outcomes"] == {"persisted": 8}
    missing = [*flags[:flags.index("--stream")], "--stream", settings.stream + "-none",
               *flags[flags.index("--stream") + 2:]]
    line = one_line(run_cli(["replay", "--range", "-", "+", *missing]), 1)
    assert "does not exist" in line and "group" not in line, line


@pytest.mark.parametrize("bound", ["-" + "9" * 400 + "w", "-99999999999999h", "\u0663"])
def test_a_range_bound_out_of_range_or_not_ascii_is_a_usage_error(
        settings: Settings, bound: str) -> None:
    line = one_line(run_cli(["replay", "--range", bound, "+", "--dry-run",
                             *common_flags(settings)]), 2)
    assert "--range" in line
