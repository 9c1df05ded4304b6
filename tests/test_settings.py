"""Settings at start: every number in a range that keeps what Redis receives valid, unknown
REGIONSTREAM_* variables warned about, --allow-eviction (issue 17)."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from regionstream.cli import build_parser, settings_from
from shared.connection import SOCKET_TIMEOUT_S
from shared.schema import MAX_CLOCK_SKEW_MS
from shared.servers import free_port
from shared.settings import (
    ENV_PREFIX,
    MAX_BATCH,
    MAX_BLOCK_MS,
    MAX_BYTES_LIMIT,
    MAX_CHUNK,
    MAX_CLAIM_INTERVAL_MS,
    MAX_CONSUMER_TIMEOUT_S,
    MAX_DEDUP_WINDOW_S,
    MAX_DELIVERIES_LIMIT,
    MAX_GRACE_S,
    MAX_INTERVAL_S,
    MAX_MIN_IDLE_MS,
    MAX_MIN_REPLICAS,
    MAX_MIN_REPLICAS_TIMEOUT_MS,
    MAX_RETENTION_S,
    MAX_RETRY_BACKOFF_MS,
    MAX_WORKERS,
    Settings,
    SettingsError,
    unknown_variables,
)
from tests.helpers import drain, outcomes, publish_cycle
from tests.proc import cli_env, common_flags, one_line, run_cli

NUMERIC = tuple(f for f in dataclasses.fields(Settings) if f.type in ("int", "float"))
# Redis refuses an expiry whose ms overflow 2**63 (EXPIRE, SET EX, PEXPIREAT, a BLOCK or WAIT
# timeout added to now), and persist.lua adds ms in Lua's doubles, exact below 2**53: the
# stricter of the two (2**53 < 2**63 / 1000).
REDIS_MS_LIMIT = 2**53
REDIS_COUNT_LIMIT = 2**31  # COUNT and numreplicas: far below what Redis parses, as a sanity bound
TINY = math.ulp(0.0)  # the smallest float above 0

# Each numeric setting: (lowest accepted, highest accepted, lowest refused below, integer).
# A new numeric setting without a row fails test_every_numeric_setting_has_a_bound_here.
BOUNDS: dict[str, tuple[float, float, float]] = {
    "dedup_window_s": (1, MAX_DEDUP_WINDOW_S, 0),
    "retention_s": (1, MAX_RETENTION_S, 0),
    "interval_s": (TINY, MAX_INTERVAL_S, 0.0),
    "stream_retention_s": (0, MAX_RETENTION_S, -1),
    "chunk": (1, MAX_CHUNK, 0),
    "min_replicas": (0, MAX_MIN_REPLICAS, -1),
    "min_replicas_timeout_ms": (1, MAX_MIN_REPLICAS_TIMEOUT_MS, 0),
    "workers": (1, MAX_WORKERS, 0),
    "batch": (1, MAX_BATCH, 0),
    "block_ms": (1, MAX_BLOCK_MS, 0),
    "grace_s": (0.0, MAX_GRACE_S, -TINY),
    "max_bytes": (1, MAX_BYTES_LIMIT, 0),
    "min_idle_ms": (1, MAX_MIN_IDLE_MS, 0),
    "claim_interval_ms": (1, MAX_CLAIM_INTERVAL_MS, 0),
    "max_deliveries": (1, MAX_DELIVERIES_LIMIT, 0),
    "retry_backoff_ms": (0, MAX_RETRY_BACKOFF_MS, -1),
    "consumer_timeout_s": (TINY, MAX_CONSUMER_TIMEOUT_S, 0.0),
    "metrics_port": (0, 65535, -1),
}


def flag_of(name: str) -> str:
    """What a message names for a value given in code or as a flag."""
    return Settings.__dataclass_fields__[name].metadata["flag"] or name


def var_of(name: str) -> str:
    return ENV_PREFIX + name.upper()


def redis_receives(s: Settings, now_ms: int) -> dict[str, tuple[int, str]]:
    """Every value Redis receives that a numeric setting decides, computed as the code does
    (consumer/settle.py, persist.lua, consumer/reclaim.py, consumer/worker.py,
    producer/publisher.py), each with its kind: "s" an expiry in seconds from now, "ms" a
    duration in ms from now, "at" an absolute ms time, "count" a count."""
    latest_generated_at = now_ms + MAX_CLOCK_SKEW_MS  # the newest a valid snapshot can be
    return {
        "SET latest EX retention": (s.retention_s, "s"),
        "SET dedup marker EX window": (s.dedup_window_s, "s"),
        "PEXPIREAT by-id generated_at + retention": (latest_generated_at + s.retention_ms, "at"),
        "dedup bucket width": (s.dedup_window_ms, "ms"),
        "forget_consumer idle": (int(s.consumer_timeout_s * 1000), "ms"),
        "XREADGROUP BLOCK": (s.block_ms, "ms"),
        "XAUTOCLAIM min-idle-time": (s.min_idle_ms, "ms"),
        "XTRIM MINID stream retention": (s.stream_retention_s * 1000, "ms"),
        "WAIT timeout": (s.min_replicas_timeout_ms, "ms"),
        "XREADGROUP / XAUTOCLAIM COUNT": (s.batch, "count"),
        "WAIT numreplicas": (s.min_replicas, "count"),
        "XADDs per MULTI": (s.chunk, "count"),
    }


def assert_valid_for_redis(s: Settings) -> None:
    now_ms = int(time.time() * 1000)
    for what, (value, kind) in redis_receives(s, now_ms).items():
        assert type(value) is int and value >= 0, (what, value)
        if kind == "s":
            assert value >= 1 and now_ms + value * 1000 < REDIS_MS_LIMIT, (what, value)
        elif kind == "ms":
            assert now_ms + value < REDIS_MS_LIMIT, (what, value)
        elif kind == "at":
            assert value < REDIS_MS_LIMIT, (what, value)
        else:
            assert value < REDIS_COUNT_LIMIT, (what, value)
    assert s.batch >= 1 and s.chunk >= 1  # COUNT 0 is refused
    # Waits in this process (asyncio timeouts): finite, not negative.
    for wait in (s.grace_s, s.interval_s, s.claim_interval_ms / 1000, s.retry_backoff_ms / 1000,
                 SOCKET_TIMEOUT_S + s.block_ms / 1000):
        assert math.isfinite(wait) and wait >= 0, wait
    # A WAIT the producer's socket timeout cuts short would look like a lost connection.
    assert s.min_replicas_timeout_ms < SOCKET_TIMEOUT_S * 1000
    assert 0 <= s.metrics_port <= 65535


EDGES = [0, 1, -1, 2**31, 2**53, 2**63, 2**64, 10**17, -(10**17)]
_any_number = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(),  # inf, -inf, nan, subnormals, -0.0 included
    st.sampled_from([*EDGES, math.inf, -math.inf, math.nan, TINY]),
    # each bound and its neighbours
    st.sampled_from([v + d for lo, hi, _ in BOUNDS.values() for v in (lo, hi) for d in (-1, 0, 1)]),
)
_env_text = st.one_of(
    _any_number.map(str),
    st.sampled_from(["1e400", "-1e400", "inf", "-inf", "nan", "1e17", " 7 ", "0x10", "1_000",
                     "", "9" * 30, "3.5", "1e3"]),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_number_is_refused_naming_its_setting_or_valid_for_redis(data: st.DataObject) -> None:
    """For any values of any numeric settings (given in code or as flags, or as variables):
    either each bad one is refused with its own problem naming it, or every value derived from
    them that reaches Redis is a finite int in Redis's range (the issue: inf crashed the
    reclaimer's int(s * 1000), a retention of 1e17 s made every persist overflow)."""
    chosen = data.draw(st.lists(st.sampled_from(NUMERIC), min_size=1, max_size=4, unique=True))
    via_env = data.draw(st.booleans())
    values = {f.name: data.draw(_env_text if via_env else _any_number) for f in chosen}
    origin = {f.name: var_of(f.name) if via_env else flag_of(f.name) for f in chosen}
    try:
        assert_valid_for_redis(_load(values, via_env))
        return
    except SettingsError as exc:
        problems = exc.problems
    named = [n for p in problems for n, o in origin.items() if p.startswith(f"{o}: ")]
    assert len(named) == len(problems) == len(set(named)), problems  # one line per setting
    assert all("Traceback" not in p and "\n" not in p for p in problems)
    rest = {k: v for k, v in values.items() if k not in named}
    assert_valid_for_redis(_load(rest, via_env))  # the others were fine as they are


def _load(values: dict[str, Any], via_env: bool) -> Settings:
    if via_env:
        return Settings.load({}, env={var_of(k): v for k, v in values.items()})
    return Settings.load(values, env={})


def test_every_numeric_setting_has_a_bound_here() -> None:
    assert {f.name for f in NUMERIC} == set(BOUNDS)


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_each_bound_is_exact_and_its_message_states_the_range(name: str) -> None:
    low, high, below = BOUNDS[name]
    is_int = Settings.__dataclass_fields__[name].type == "int"
    above = high + 1 if is_int else math.nextafter(high, math.inf)
    for ok in (low, high):
        assert getattr(Settings.load({name: ok}, env={}), name) == ok
    for bad in (below, above, *(() if is_int else (math.inf, -math.inf, math.nan))):
        with pytest.raises(SettingsError) as caught:
            Settings.load({name: bad}, env={})
        [problem] = caught.value.problems
        assert problem.startswith(f"{flag_of(name)}: must be "), problem
        assert str(int(high)) in problem, problem  # the range allowed, not just "bad"


@pytest.mark.parametrize(("args", "env", "says"), [
    (["consume", "--consumer-timeout", "inf"], {},
     "bad setting --consumer-timeout: must be a finite number > 0 and <= 604800 s"),
    (["consume", "--grace", "nan"], {}, "bad setting --grace: must be a finite number in 0..3600"),
    (["consume"], {"REGIONSTREAM_CONSUMER_TIMEOUT_S": "1e400"},
     "bad setting REGIONSTREAM_CONSUMER_TIMEOUT_S: must be a finite number > 0 and <= 604800"),
    (["consume"], {"REGIONSTREAM_RETENTION_S": str(10**17)},
     "bad setting REGIONSTREAM_RETENTION_S: must be an integer in 1..3153600000 s (100 years)"),
    (["produce", "--once"], {"REGIONSTREAM_DEDUP_WINDOW_S": str(10**17)},
     "bad setting REGIONSTREAM_DEDUP_WINDOW_S: must be an integer in 1..604800 s"),
    (["consume", "--batch", "10001"], {}, "bad setting --batch: must be an integer in 1..10000"),
    (["consume", "--workers", "100000"], {}, "bad setting --workers: must be an integer in 1..1024"),
    (["consume", "--block-ms", str(2**63)], {}, "bad setting --block-ms: must be an integer in"),
    (["produce", "--min-replicas-timeout-ms", "60000"], {},
     "bad setting --min-replicas-timeout-ms: must be an integer in 1..5000 ms"),
])
def test_out_of_range_is_one_line_exit_2(args: list[str], env: dict[str, str], says: str
                                         ) -> None:
    # Nothing listens there: a value that passed would fail fast (exit 1), not run.
    nowhere = ["--redis-url", f"redis://127.0.0.1:{free_port()}/0"]
    line = one_line(run_cli([*args, *nowhere], env=cli_env() | env), 2)
    assert line.startswith(f"regionstream: {says}"), line


def test_every_bad_number_is_reported_together() -> None:
    env = cli_env() | {"REGIONSTREAM_RETENTION_S": str(10**17),
                       "REGIONSTREAM_CONSUMER_TIMEOUT_S": "1e400"}
    done = run_cli(["consume", "--batch", "20000", "--grace", "inf"], env=env)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("regionstream: bad setting ") for line in lines)
    for name in ("--batch", "--grace", "REGIONSTREAM_RETENTION_S",
                 "REGIONSTREAM_CONSUMER_TIMEOUT_S"):
        assert sum(f"setting {name}: " in line for line in lines) == 1, (name, lines)


async def test_redis_takes_the_largest_retention(client: aioredis.Redis, settings: Settings
                                                 ) -> None:
    """The real server accepts what the largest allowed settings make it do: SET ... EX the
    retention, PEXPIREAT now + retention (also summed in Lua's doubles, as persist.lua does);
    the value the issue found (1e17 s) it refuses."""
    s = Settings.load({"retention_s": MAX_RETENTION_S, "dedup_window_s": MAX_DEDUP_WINDOW_S},
                      env={})
    key = f"{settings.prefix}:max-retention"
    assert await client.set(key, b"x", ex=s.retention_s)
    assert await client.set(key + ":dedup", b"x", ex=s.dedup_window_s)
    seconds, micros = await client.time()
    at = seconds * 1000 + micros // 1000 + MAX_CLOCK_SKEW_MS + s.retention_ms
    assert await client.pexpireat(key, at)
    assert await client.pexpiretime(key) == at
    await client.persist(key)
    lua = "return redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]))"
    assert await client.eval(lua, 1, key, at - s.retention_ms, s.retention_ms) == 1
    assert await client.pexpiretime(key) == at  # exact, no rounding
    with pytest.raises(ResponseError, match="invalid expire time"):
        await client.set(key, b"x", ex=10**17)


async def test_pipeline_runs_with_the_largest_bounds(client: aioredis.Redis, settings: Settings
                                                     ) -> None:
    """A whole cycle persisted with every bound that reaches Redis at its maximum (the
    reclaimer's forget_dead_consumers runs with the largest --consumer-timeout): every by-id
    key expires exactly generated_at + 100 years."""
    s = dataclasses.replace(settings, retention_s=MAX_RETENTION_S,
                            dedup_window_s=MAX_DEDUP_WINDOW_S,
                            consumer_timeout_s=MAX_CONSUMER_TIMEOUT_S,
                            min_idle_ms=MAX_MIN_IDLE_MS, batch=MAX_BATCH)
    Settings.load({f.name: getattr(s, f.name) for f in dataclasses.fields(s)}, env={})  # valid
    snaps = await publish_cycle(client, s, int(time.time() * 1000))
    consumer = await drain(s)
    assert outcomes(consumer)["persisted"] == len(snaps)
    for snap in snaps:
        by_id = s.keys.by_id(snap.region_id, snap.meta.snapshot_id)
        assert (await client.pexpiretime(by_id)
                == snap.generated_at + MAX_RETENTION_S * 1000)


# Unknown REGIONSTREAM_* variables


@pytest.mark.parametrize(("variable", "closest"), [
    ("REGIONSTREAM_GRACE", "REGIONSTREAM_GRACE_S"),
    ("REGIONSTREAM_RETENTION", "REGIONSTREAM_RETENTION_S"),
    ("REGIONSTREAM_WORKER", "REGIONSTREAM_WORKERS"),
    ("REGIONSTREAM_REDIS_URI", "REGIONSTREAM_REDIS_URL"),
    ("REGIONSTREAM_FAILPOINTS", "REGIONSTREAM_FAILPOINT"),
])
def test_a_misspelled_variable_is_warned_about_once_naming_the_real_one(
        variable: str, closest: str) -> None:
    env = cli_env() | {variable: "sekrit-5"}
    done = run_cli(["acl"], env=env)  # connects to nothing
    assert done.returncode == 0, done.stderr
    err = done.stderr.decode()
    warned = [line for line in err.splitlines() if variable + ":" in line]
    assert warned == [f"ignoring {variable}: not a regionstream variable "
                      f"(did you mean {closest}?)"], err
    assert "sekrit" not in err and "Traceback" not in err


def test_a_variable_like_no_setting_is_warned_about_too() -> None:
    done = run_cli(["acl"], env=cli_env() | {"REGIONSTREAM_ZZQX": "1"})
    assert done.returncode == 0
    assert sum("ignoring REGIONSTREAM_ZZQX: " in line
               for line in done.stderr.decode().splitlines()) == 1


def test_the_right_variable_gives_no_warning() -> None:
    plain = run_cli(["acl"])
    done = run_cli(["acl"], env=cli_env() | {"REGIONSTREAM_GRACE_S": "5",
                                             "REGIONSTREAM_ALLOW_EVICTION": "1"})
    assert done.returncode == 0 and done.stderr == plain.stderr  # nothing added


def test_a_warning_comes_with_bad_settings_too() -> None:
    """A typo may be why a setting is wrong: said alongside, each once."""
    env = cli_env() | {"REGIONSTREAM_BATCHSIZE": "50"}
    done = run_cli(["consume", "--batch", "0"], env=env)
    assert done.returncode == 2
    lines = done.stderr.decode().strip().splitlines()
    assert lines == ["ignoring REGIONSTREAM_BATCHSIZE: not a regionstream variable "
                     "(did you mean REGIONSTREAM_BATCH?)",
                     "regionstream: bad setting --batch: must be an integer in 1..10000 "
                     "(entries per read) (got 0)"], lines


def test_every_variable_the_project_reads_is_known() -> None:
    env = {ENV_PREFIX + f.name.upper(): "x" for f in dataclasses.fields(Settings)}
    env |= {"REGIONSTREAM_FAILPOINT": "x", "REGIONSTREAM_UNLOCKED": "1", "OTHER": "x"}
    assert unknown_variables(env) == []


# --allow-eviction / REGIONSTREAM_ALLOW_EVICTION


@pytest.mark.parametrize(("text", "value"), [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), (" Yes ", True),
    ("0", False), ("false", False), ("no", False), ("NO", False),
])
def test_allow_eviction_from_the_environment(text: str, value: bool) -> None:
    assert Settings.load({}, env={"REGIONSTREAM_ALLOW_EVICTION": text}).allow_eviction is value


def test_allow_eviction_is_off_by_default() -> None:
    assert Settings.load({}, env={}).allow_eviction is False


@pytest.mark.parametrize("text", ["maybe", "", "2", "on", "y"])
def test_allow_eviction_other_text_is_a_bad_setting(text: str) -> None:
    line = one_line(run_cli(["consume"], env=cli_env() | {"REGIONSTREAM_ALLOW_EVICTION": text}),
                    2)
    assert line.startswith("regionstream: bad setting REGIONSTREAM_ALLOW_EVICTION: not a "
                           f"boolean: {text!r}"), line


def test_allow_eviction_given_in_code_must_be_a_bool() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.load({"allow_eviction": "maybe"}, env={})
    assert caught.value.problems == ["--allow-eviction: must be true or false (got 'maybe')"]


@pytest.mark.parametrize("command", [["produce"], ["consume"], ["replay", "--dlq"], ["demo"]])
def test_allow_eviction_flag_wins_over_the_environment(command: list[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REGIONSTREAM_ALLOW_EVICTION", "no")
    parser = build_parser()
    assert settings_from(parser.parse_args([*command, "--allow-eviction"])).allow_eviction
    assert not settings_from(parser.parse_args(command)).allow_eviction


async def test_allow_eviction_flag_reaches_the_real_command(client: aioredis.Redis,
                                                            settings: Settings) -> None:
    """Through the real command, with every other setting fine: it runs (exit 0)."""
    done = run_cli(["produce", "--once", "--allow-eviction", *common_flags(settings)])
    assert done.returncode == 0, done.stderr
