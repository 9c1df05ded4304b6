"""The Redis ACL users (shared/acl.py, deploy/redis-acl.conf): the whole pipeline runs through
the real CLI as a producer, a consumer and a read-only operator user, none of them is refused
anything it does (ACL LOG stays empty for them), and what a role must not do is refused."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import AuthenticationError, NoPermissionError

from regionstream.cli import build_parser, settings_from
from regionstream.opscli import cmd_acl
from shared.acl import CONSUMER, OPERATOR, PRODUCER, acl_rules, render
from shared.connection import connect
from shared.group import read_group_stats
from shared.keys import Keys
from shared.schema import REGIONS
from shared.servers import start_redis_server
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import stored
from tests.proc import CLI_TIMEOUT_S, cli_env, common_flags, one_line, run_cli, spawn_cli

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "redis-acl.conf"
POISON: list[dict[str, str]] = [{"schema": "1", "payload": "{bad"}, {"foo": "bar"}]
DRAIN = ["consume", "--drain", "--workers", "2", "--block-ms", "100"]

User = tuple[str, str]  # name, password


def as_user(url: str, user: User) -> str:
    return url.replace("redis://", f"redis://{user[0]}:{user[1]}@", 1)


def flags_as(s: Settings, user: User) -> list[str]:
    flags = common_flags(s)
    flags[flags.index("--redis-url") + 1] = as_user(s.redis_url, user)
    return flags


def ok(done: subprocess.CompletedProcess[bytes], user: User) -> str:
    """stdout of a run that must have succeeded; no password ever shows."""
    err = done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert user[1] not in err and "Traceback" not in err
    return done.stdout.decode()


async def cli(args: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(run_cli, args)


async def set_users(admin: aioredis.Redis, rules: dict[str, str], tag: str) -> dict[str, User]:
    made = {}
    for role, rule in rules.items():
        user = (f"{role}-{tag}", uuid.uuid4().hex)
        await admin.execute_command("ACL", "SETUSER", user[0], *rule.split(), f">{user[1]}")
        made[role] = user
    return made


@pytest.fixture
async def users(client: aioredis.Redis, settings: Settings) -> AsyncIterator[dict[str, User]]:
    """The three users for this test's uuid-named stream and prefix, uuid-named themselves."""
    made = await set_users(client, acl_rules(settings.keys), uuid.uuid4().hex[:10])
    yield made
    await client.acl_deluser(*(name for name, _ in made.values()))


async def denials(admin: aioredis.Redis, users: dict[str, User]) -> list[Any]:
    names = {name for name, _ in users.values()}
    log: Any = await admin.acl_log()
    return [e for e in log if _text(e["username"]) in names]


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


# -- the shipped file -----------------------------------------------------------------------------

def test_shipped_file_is_the_rendering_of_the_default_names() -> None:
    text = SHIPPED.read_text()
    assert text == render(Keys()), "regenerate: regionstream acl > deploy/redis-acl.conf"
    # Redis refuses an ACL file with anything but `user` lines (a comment aborts start-up)
    assert all(line.startswith("user ") for line in text.splitlines())
    assert {line.split()[1] for line in text.splitlines()} == {PRODUCER, CONSUMER, OPERATOR}


def test_shipped_file_loads_and_runs_the_pipeline(tmp_path: Path) -> None:
    """The file as Redis loads it at start-up (--aclfile), default names: the users exist,
    nobody can log in before an admin sets a password, and then the pipeline runs."""
    path = tmp_path / "users.acl"
    shutil.copy(SHIPPED, path)
    with start_redis_server(extra=("--aclfile", str(path))) as server:
        admin = redis.Redis.from_url(server.url)
        try:
            names = {_text(line).split()[1] for line in admin.acl_list()}
            assert names == {"default", PRODUCER, CONSUMER, OPERATOR}
            with (pytest.raises(AuthenticationError),
                  redis.Redis.from_url(as_user(server.url, (PRODUCER, "guess"))) as guess):
                guess.ping()
            users = {role: (role, uuid.uuid4().hex) for role in (PRODUCER, CONSUMER, OPERATOR)}
            for name, password in users.values():
                admin.execute_command("ACL", "SETUSER", name, f">{password}")

            def run_as(role: str, *args: str) -> str:
                url = as_user(server.url, users[role])
                return ok(run_cli([*args, "--redis-url", url], env=cli_env()), users[role])

            run_as(PRODUCER, "produce", "--once")
            run_as(CONSUMER, *DRAIN)
            report = json.loads(run_as(OPERATOR, "pending", "--json"))
            assert (report["stream_length"], report["pending"], report["lag"]) == (8, 0, 0)
            assert sum(admin.zcard(Keys().index(r)) for r in REGIONS) == 8
            # only the refused login above: no command or key was refused
            assert [e["reason"] for e in admin.acl_log()] == ["auth"]
        finally:
            admin.close()


# -- the pipeline as the three users ----------------------------------------------------------

async def test_whole_pipeline_runs_as_the_three_users(
        client: aioredis.Redis, settings: Settings, users: dict[str, User]) -> None:
    s, keys = settings, settings.keys
    producer, consumer, operator = users[PRODUCER], users[CONSUMER], users[OPERATOR]
    out = await cli(["produce", "--count", "200", *flags_as(s, producer)])
    ok(out, producer)
    assert b"published 200" in out.stderr
    for fields in POISON:
        await client.xadd(s.stream, fields)  # type: ignore[arg-type]
    ok(await cli([*DRAIN, *flags_as(s, consumer)]), consumer)
    assert await stored(s.redis_url, s) == 200 and await client.xlen(keys.dlq) == 2

    top, pending, show = await asyncio.gather(
        cli(["top", "--once", "--plain", *flags_as(s, operator)]),
        cli(["pending", "--json", *flags_as(s, operator)]),
        cli(["show", "mena", *flags_as(s, operator)]))
    line = ok(top, operator)
    assert "stream=202 lag=0 pending=0" in line and "dlq=2" in line and "stored=200" in line
    report = json.loads(ok(pending, operator))
    assert (report["pending"], report["lag"], report["dlq_length"]) == (0, 0, 2)
    assert "(mena)" in ok(show, operator)

    # replay is the consumer's job: --pending (what a dead consumer held), --dlq, --range
    await client.xadd(s.stream, POISON[0])  # type: ignore[arg-type]
    await client.xreadgroup(s.group, "crashed", {s.stream: ">"})
    ok(await cli(["replay", "--pending", "--min-idle-ms", "0", *flags_as(s, consumer)]),
       consumer)
    assert await client.xlen(keys.dlq) == 3
    assert int((await client.xpending(s.stream, s.group))["pending"]) == 0
    ok(await cli(["replay", "--dlq", *flags_as(s, consumer)]), consumer)
    assert await client.xlen(keys.dlq) == 0
    ok(await cli([*DRAIN, *flags_as(s, consumer)]), consumer)
    assert await client.xlen(keys.dlq) == 3
    ranged = await cli(["replay", "--range", "-", "+", "--json", *flags_as(s, consumer)])
    outcomes = json.loads(ok(ranged, consumer))["outcomes"]
    assert outcomes.get("redelivered") == 200 and outcomes.get("invalid") == 6
    assert await stored(s.redis_url, s) == 200

    # the reclaimer (XAUTOCLAIM) and forgetting idle consumers (a script) in a running consumer
    entry = await client.xadd(s.stream, POISON[1])  # type: ignore[arg-type]
    await client.xreadgroup(s.group, "crashed", {s.stream: ">"})
    proc = spawn_cli(["consume", "--workers", "1", "--block-ms", "100", "--min-idle-ms", "1",
                      "--claim-interval-ms", "50", "--consumer-timeout", "0.001",
                      *flags_as(s, consumer)])
    try:
        async def reclaimed_and_forgotten() -> bool:
            if proc.poll() is not None:  # it stopped (refused something): no use waiting
                return True
            names = [c["name"] for c in await client.xinfo_consumers(s.stream, s.group)]
            return await client.xlen(keys.dlq) == 4 and b"crashed" not in names
        await wait_until(reclaimed_and_forgotten, what="the crashed consumer's entry "
                         "reclaimed and dead-lettered, and the consumer forgotten")
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=CLI_TIMEOUT_S)
    assert proc.returncode == 0, err.decode()[-2000:]
    dead = [f for _, f in await client.xrange(keys.dlq) if f[b"dlq_original_id"] == entry]
    assert len(dead) == 1 and dead[0][b"foo"] == b"bar"

    # the group gauges any process serves with --metrics-port, as the producer
    gauges = connect(as_user(s.redis_url, producer))
    try:
        assert (await read_group_stats(gauges, keys)).dlq_length == 4
    finally:
        await gauges.aclose()
    assert await denials(client, users) == []


# -- what each role must not do ---------------------------------------------------------------

async def test_operator_cannot_replay_exit_3_naming_the_command(
        client: aioredis.Redis, settings: Settings, users: dict[str, User]) -> None:
    s, operator = settings, users[OPERATOR]
    await client.xadd(s.keys.dlq, {**POISON[0], "dlq_reason": "undecodable"})
    before = await client.xrange(s.keys.dlq)
    done = await cli(["replay", "--dlq", *flags_as(s, operator)])
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    (line,) = done.stderr.decode().strip().splitlines()
    # refused at its first command the role lacks: reading the dead letters (XRANGE)
    assert line.startswith("regionstream: ") and "permissions to run the 'xrange'" in line, line
    assert operator[1] not in line
    assert [(e["reason"], e["object"]) for e in await denials(client, users)] == [
        ("command", "xrange")]
    assert await client.xrange(s.keys.dlq) == before  # nothing moved
    assert await client.exists(s.stream) == 0


@pytest.mark.parametrize("command", [["produce", "--once"], ["consume", "--drain"],
                                     ["pending"], ["top", "--once"]], ids=" ".join)
async def test_refused_credentials_exit_3_in_one_line(
        client: aioredis.Redis, settings: Settings, users: dict[str, User],
        command: list[str]) -> None:
    """A wrong password, or a user an admin disabled: no restart fixes it, so exit 3 (a
    supervisor does not restart-loop on it), one line, the password never shown."""
    name, password = users[OPERATOR]
    wrong = (name, password[::-1])
    done = await cli([*command, *flags_as(settings, wrong)])
    line = one_line(done, 3)
    assert "refused the credentials in the URL (WRONGPASS" in line, line
    assert password not in line and wrong[1] not in line
    await client.execute_command("ACL", "SETUSER", name, "off")
    line = one_line(await cli([*command, *flags_as(settings, users[OPERATOR])]), 3)
    assert "WRONGPASS" in line and password not in line, line
    assert await client.exists(settings.stream) == 0  # refused before anything


async def test_producer_cannot_read_or_write_snapshot_keys(
        client: aioredis.Redis, settings: Settings, users: dict[str, User]) -> None:
    keys = settings.keys
    by_id = keys.by_id("mena", "0" * 12 + "-" + "0" * 12)
    await client.set(by_id, b"{}")
    producer = connect(as_user(settings.redis_url, users[PRODUCER]), retries=0)
    try:
        with pytest.raises(NoPermissionError, match="'get' command"):
            await producer.get(by_id)
        with pytest.raises(NoPermissionError, match="permissions to access"):
            await producer.xadd(keys.index("mena"), {"x": "1"})
        await producer.xadd(keys.stream, {"schema": "1"})  # its own stream: fine
    finally:
        await producer.aclose()
    assert await client.get(by_id) == b"{}"


def _dry(keys: Keys) -> list[tuple[str, list[str], bool]]:
    """(role, command, allowed): the boundaries of each role, checked by ACL DRYRUN."""
    k, latest, dlq = keys.stream, keys.latest("mena"), keys.dlq
    every_role = [(role, command, True) for role in (PRODUCER, CONSUMER, OPERATOR)
                  for command in (["PING"], ["INFO", "cluster"], ["SELECT", "1"], ["TIME"])]
    return [
        *every_role,
        (PRODUCER, ["WAIT", "1", "100"], True),  # --min-replicas
        (OPERATOR, ["GET", latest], True),
        (OPERATOR, ["XINFO", "STREAM", dlq], True),
        (OPERATOR, ["XADD", k, "*", "a", "b"], False),
        (OPERATOR, ["DEL", latest], False),
        (OPERATOR, ["XACK", k, keys.group, "1-1"], False),
        (OPERATOR, ["XGROUP", "DESTROY", k, keys.group], False),
        (OPERATOR, ["XRANGE", dlq, "-", "+"], False),
        (OPERATOR, ["GET", "elsewhere"], False),
        (PRODUCER, ["XADD", k, "*", "a", "b"], True),
        (PRODUCER, ["XADD", k + ":{mena}", "*", "a", "b"], True),  # a region shard
        (PRODUCER, ["XREADGROUP", "GROUP", keys.group, "c", "STREAMS", k, ">"], False),
        (PRODUCER, ["XGROUP", "DESTROY", k, keys.group], False),
        (PRODUCER, ["DEL", k], False),
        (CONSUMER, ["EVALSHA", "0" * 40, "3", k, keys.index("mena"), latest], True),
        # no rule for the empty key name (replay --range once declared "" as a script key)
        (CONSUMER, ["EVALSHA", "0" * 40, "3", "", keys.index("mena"), latest], False),
        (CONSUMER, ["XGROUP", "DESTROY", k, keys.group], False),
        (CONSUMER, ["FLUSHALL"], False),
        (CONSUMER, ["KEYS", "*"], False),
        (CONSUMER, ["CONFIG", "SET", "maxmemory", "1"], False),
        (CONSUMER, ["SCRIPT", "FLUSH"], False),
        (CONSUMER, ["GET", "elsewhere"], False),
        (CONSUMER, ["XADD", "elsewhere", "*", "a", "b"], False),
    ]


async def test_each_role_is_allowed_its_keys_and_refused_the_rest(
        client: aioredis.Redis, settings: Settings, users: dict[str, User]) -> None:
    wrong = []
    for role, command, allowed in _dry(settings.keys):
        reply = _text(await client.execute_command("ACL", "DRYRUN", users[role][0], *command))
        if (reply == "OK") != allowed:
            wrong.append((role, command, reply))
    assert wrong == []


async def test_glob_characters_in_names_match_only_themselves(client: aioredis.Redis) -> None:
    tag = uuid.uuid4().hex[:10]
    keys = Keys(prefix=f"we*rd-{tag}", stream=f"s[1]?-{tag}")
    made = await set_users(client, acl_rules(keys), tag)
    try:
        async def dry(key: str) -> bool:
            reply = await client.execute_command("ACL", "DRYRUN", made[OPERATOR][0], "GET", key)
            return _text(reply) == "OK"

        assert await dry(keys.latest("mena")) and await dry(keys.dlq)
        assert not await dry(f"weXrd-{tag}:x") and not await dry(f"s1x-{tag}")
    finally:
        await client.acl_deluser(*(name for name, _ in made.values()))


def test_names_that_cannot_be_a_rule_are_refused() -> None:
    with pytest.raises(ValueError, match="control characters"):
        acl_rules(Keys(prefix="a\x01b"))


# -- regionstream acl -------------------------------------------------------------------------

async def test_acl_command_prints_the_file_for_the_configured_names(
        capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["acl", "--stream", "orders", "--prefix", "shop",
                                      "--redis-url", "redis://127.0.0.1:1/0"])
    assert await cmd_acl(args, settings_from(args)) == 0  # port 1: it connects to nothing
    out, err = capsys.readouterr()
    assert out == render(Keys(prefix="shop", stream="orders"))
    assert "~orders:*" in out and "%R~shop:*" in out
    assert "ACL SETUSER <user> ><password>" in err


def test_acl_command_through_the_real_cli() -> None:
    done = run_cli(["acl"])
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert done.stdout.decode() == SHIPPED.read_text()
    # connection flags are not offered (it connects to nothing), still accepted: port 1
    same = run_cli(["acl", "--redis-url", "redis://127.0.0.1:1/0"])
    assert same.returncode == 0 and same.stdout == done.stdout
