"""Names and fields read from Redis are untrusted text (issue 17, items 9, 10 and 16).

Another client chooses its consumer name (``XREADGROUP GROUP g $'\\xff\\xfe'``), a producer
chooses a dead letter's region field and a snapshot's narrative. None of it may crash an
operator command (not UTF-8, rich markup such as ``[/]``), nor reach the terminal as control
sequences (a window-title OSC, a clear-screen CSI, the C1 CSI ``\\x9b``): every human-readable
output shows such text escaped, and a command whose stdout reader has gone ends quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import msgspec
import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from rich.console import Console

from consumer.ops import pending_report
from producer.synthetic import SyntheticSource
from regionstream.cli import main
from regionstream.opscli import print_pending
from regionstream.view import collect, render, summary_line
from shared.connection import connect
from shared.settings import Settings
from tests.conftest import wait_until
from tests.helpers import deployed, drain, publish, reclaimer
from tests.proc import cli_env, common_flags, one_line, run_cli

# Names and fields an adversary would pick: not UTF-8, rich markup, terminal control
# sequences (OSC window title, CSI clear screen, C1 CSI raw and as UTF-8), a bidi override,
# an emoji code, a newline.
HOSTILE = [b"\xff\xfe", b"caf\xe9", b"w[/]-0", b"[bold", b"[/]", b"\x1b]0;pwned\x07",
           b"\x1b[2J", b"\x9b31m", "\x9b31m".encode(), "\u202eevil".encode(), b":smile:",
           b"a\nb"]
EXAMPLES = 40
WIDE = 400


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


UTF8_HOSTILE = [h for h in HOSTILE if _utf8(h)]
NOT_UTF8 = [h for h in HOSTILE if not _utf8(h)]
# Any text (controls, format characters, markup), as a client would send it: UTF-8.
TEXT_NAMES = st.one_of(st.sampled_from(UTF8_HOSTILE),
                       st.text(min_size=1, max_size=12).map(str.encode))
# Any bytes at all.
BYTE_NAMES = st.one_of(st.sampled_from(HOSTILE), st.binary(min_size=1, max_size=16))


def untrusted(raw: bytes) -> str:
    """A name or field as reports carry it: bytes that are not UTF-8 as ``\\xff`` escapes."""
    return raw.decode("utf-8", "backslashreplace")


def printable(text: str) -> str:
    """Text as a terminal may be shown it: every character that is not printable (controls,
    format characters, separators) as its backslash escape."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def shown(raw: bytes) -> str:
    """What an operator sees of ``raw``: decoded, then escaped for the terminal."""
    return printable(untrusted(raw))


def assert_terminal_safe(out: str | bytes) -> str:
    """Valid UTF-8, and nothing in it a terminal would act on: every character printable,
    but the newlines between lines."""
    text = out.decode() if isinstance(out, bytes) else out
    bad = sorted({c for c in text if not (c.isprintable() or c == "\n")})
    assert not bad, f"control or format characters reached the output: {bad!r}"
    return text


def fresh(url: str) -> Settings:
    """Names of their own for one generated example (the fixtures' are one per test)."""
    tag = uuid.uuid4().hex[:12]
    return Settings.load({"redis_url": url, "stream": f"ut:{tag}", "group": f"g-{tag}",
                          "prefix": f"ut:{tag}", "name": f"w-{tag}", "block_ms": 100}, env={})


async def tidy(client: aioredis.Redis, s: Settings) -> None:
    found = [k async for k in client.scan_iter(match=f"{s.stream}*", count=1000)]
    found += [k async for k in client.scan_iter(match=f"{s.prefix}:*", count=1000)]
    if found:
        await client.delete(*found)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


async def hold_one_each(client: aioredis.Redis, s: Settings, names: list[bytes]) -> None:
    """Each name a consumer of the group holding one entry, as another client would make it."""
    await client.xgroup_create(s.stream, s.group, id="0", mkstream=True)
    for name in names:
        await client.xadd(s.stream, {b"payload": b"{}"})
        await client.xreadgroup(s.group, name, {s.stream: ">"}, count=1)


async def names_shown(url: str, names: list[bytes]) -> None:
    """``pending`` (table and JSON) and ``top`` (table and summary) over consumers ``names``:
    each row's name is the name decoded, and nothing printed is a control character."""
    s = fresh(url)
    client = connect(url)
    try:
        await hold_one_each(client, s, names)
        report = await pending_report(deployed(client, s), s.keys)
        expected = sorted(untrusted(n) for n in names)
        assert sorted(c.name for c in report.consumers) == expected
        assert all(c.pending == 1 and c.max_deliveries == 1 for c in report.consumers)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            print_pending(report)
            print(json.dumps(report.as_json()))
        frame = await collect(deployed(client, s), s.keys, s.regions)
        assert sorted(c.name for c in frame.consumer_rows) == expected
        Console(file=out, width=WIDE, color_system=None).print(render(frame))
        out.write(summary_line(frame) + "\n")
        text = assert_terminal_safe(out.getvalue())
        for name in names:
            if len(shown(name)) <= 40:  # a longer one may wrap in its table cell
                assert shown(name) in text
    finally:
        await tidy(client, s)
        await client.aclose()


def test_any_text_as_a_consumer_name_is_shown_escaped(redis_url: str,
                                                       runner: asyncio.Runner) -> None:
    """Markup ("w[/]" made rich raise MarkupError) and control characters in names."""

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(TEXT_NAMES, min_size=1, max_size=3, unique=True))
    def prop(names: list[bytes]) -> None:
        runner.run(names_shown(redis_url, names))

    prop()


def test_any_bytes_as_a_consumer_name_is_shown_escaped(redis_url: str,
                                                        runner: asyncio.Runner) -> None:
    """Names that are not UTF-8 (UnicodeDecodeError in pending and top). Needs
    shared.group.text to decode with errors="backslashreplace" (see the report of issue 17)."""

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(BYTE_NAMES, min_size=1, max_size=3, unique=True))
    def prop(names: list[bytes]) -> None:
        runner.run(names_shown(redis_url, names))

    prop()


@pytest.mark.parametrize("names", [UTF8_HOSTILE, NOT_UTF8], ids=["markup-and-escapes",
                                                                 "not-utf8"])
async def test_pending_and_top_commands_show_hostile_names(client: aioredis.Redis,
                                                           settings: Settings,
                                                           names: list[bytes]) -> None:
    await hold_one_each(client, settings, names)
    flags = common_flags(settings)
    for args in (["pending"], ["pending", "--json"], ["top", "--once"],
                 ["top", "--once", "--plain"]):
        done = run_cli([*args, *flags])
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
        text = assert_terminal_safe(done.stdout)
        if args == ["pending", "--json"]:
            rows = json.loads(text)["consumers"]
            assert sorted(r["name"] for r in rows) == sorted(untrusted(n) for n in names)
        elif args != ["top", "--once", "--plain"]:  # the summary line names no consumer
            for name in names:
                assert shown(name) in text, (args, name)


async def test_consume_beside_a_consumer_whose_name_is_not_utf8(client: aioredis.Redis,
                                                                settings: Settings) -> None:
    """Another client's name in the group: the reclaimer's sweep and the drain watch read
    every consumer's name. Needs the shared.group.text and consumer/reclaim.py fixes."""
    await hold_one_each(client, settings, [b"\xff\xfe"])
    await client.xack(settings.stream, settings.group,
                      *[i for i, _ in await client.xrange(settings.stream)])
    snaps = SyntheticSource(settings.regions, seed=5).cycle(int(time.time() * 1000))
    await publish(client, settings, snaps)
    done = run_cli(["consume", "--drain", "--workers", "1", "--block-ms", "100",
                    *common_flags(settings)])
    assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
    assert b"persisted=8" in done.stderr


async def test_reclaimer_forgets_an_idle_consumer_whose_name_is_not_utf8(
        client: aioredis.Redis, settings: Settings) -> None:
    """It must ask Redis to delete the name as Redis holds it (bytes), not a decoded form:
    needs the consumer/reclaim.py fix."""
    s = dataclasses.replace(settings, consumer_timeout_s=0.001)
    await hold_one_each(client, s, [b"\xff\xfe"])
    await client.xack(s.stream, s.group, *[i for i, _ in await client.xrange(s.stream)])

    async def idle() -> bool:
        return all(int(c["idle"]) >= 1 for c in await client.xinfo_consumers(s.stream, s.group))

    await wait_until(idle, what="the consumer idle past --consumer-timeout")
    janitor = reclaimer(client, s, s.keys.reclaimer_name(s.name))
    assert await janitor.forget_dead_consumers() == [untrusted(b"\xff\xfe")]
    assert await client.xinfo_consumers(s.stream, s.group) == []


def test_consume_refuses_a_name_that_is_not_utf8_in_one_line(settings: Settings) -> None:
    """``--name $'caf\\xe9'`` was a UnicodeEncodeError traceback at the first XREADGROUP.
    Needs the shared/settings.py fix (a name must be UTF-8: exit 2, one line)."""
    line = one_line(run_cli(["consume", "--drain", "--name", os.fsdecode(b"caf\xe9"),
                             *common_flags(settings)]), 2)
    assert "--name" in line


async def test_replay_pending_of_a_consumer_named_in_bytes_that_are_not_utf8(
        client: aioredis.Redis, settings: Settings) -> None:
    """An operator names the consumer as it is (bash: ``--consumer $'\\xff\\xfe'``)."""
    snaps = SyntheticSource(settings.regions, seed=9).cycle(int(time.time() * 1000))
    await client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    await publish(client, settings, snaps)
    await client.xreadgroup(settings.group, b"\xff\xfe", {settings.stream: ">"}, count=3)
    done = run_cli(["replay", "--pending", "--consumer", os.fsdecode(b"\xff\xfe"),
                    "--min-idle-ms", "0", *common_flags(settings)])
    assert done.returncode == 0, done.stderr.decode()
    text = assert_terminal_safe(done.stdout)
    assert "replayed 3 pending entries of \\xff\\xfe" in text
    assert (await client.xpending(settings.stream, settings.group))["pending"] == 0


# -- replay --dlq (item 10) ---------------------------------------------------------------


def run_main(args: list[str]) -> tuple[int, str]:
    """The command in this process (hypothesis runs it many times): exit code, stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(args)
    return code, out.getvalue()


async def dead_letters(client: aioredis.Redis, s: Settings, fields: list[dict[bytes, bytes]]
                       ) -> None:
    for f in fields:
        await client.xadd(s.keys.dlq, {**f, b"dlq_original_id": b"1-1", b"dlq_at_ms": b"1"})


def test_replay_dlq_reports_any_region_and_reason(redis_url: str,
                                                   runner: asyncio.Runner) -> None:
    """Dry run (table, JSON, --reason) and the move itself, for any bytes in a dead letter's
    region and reason: each exits 0, prints nothing a terminal acts on, and only the move
    changes anything: the dead letter leaves the DLQ for the stream, with its bytes."""

    async def setup(s: Settings, region: bytes, reason: bytes) -> None:
        async with contextlib.aclosing(connect(redis_url)) as c:
            await dead_letters(c, s, [{b"payload": b"{}", b"region": region,
                                       b"dlq_reason": reason}])

    async def after(s: Settings) -> tuple[int, list[dict[bytes, bytes]]]:
        async with contextlib.aclosing(connect(redis_url)) as c:
            try:
                return (await c.xlen(s.keys.dlq),
                        [f for _, f in await c.xrange(s.stream)])
            finally:
                await tidy(c, s)

    @hypothesis_settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(BYTE_NAMES, BYTE_NAMES)
    def prop(region: bytes, reason: bytes) -> None:
        s = fresh(redis_url)
        runner.run(setup(s, region, reason))
        flags = ["replay", "--dlq", *common_flags(s)]
        for extra in ([], ["--json"], ["--reason", os.fsdecode(reason), "--json"]):
            code, out = run_main([*flags, "--dry-run", *extra])
            assert code == 0
            assert_terminal_safe(out)
            if extra:
                (entry,) = json.loads(out)["entries"]
                assert (entry["region"], entry["reason"]) == (untrusted(region),
                                                              untrusted(reason))
        code, out = run_main(flags)
        assert code == 0
        text = assert_terminal_safe(out)
        assert "moved 1 dead letter(s)" in text
        if len(shown(region)) <= 20:
            assert shown(region) in text
        left, stream = runner.run(after(s))
        assert left == 0 and stream == [{b"payload": b"{}", b"region": region}]

    prop()


async def test_replay_dlq_of_markup_and_undecodable_regions(client: aioredis.Redis,
                                                             settings: Settings) -> None:
    """"[/]" made the report raise AFTER the move (exit 1, the DLQ already emptied); a region
    that is not UTF-8 raised before or between moves."""
    await dead_letters(client, settings, [
        {b"payload": b"{}", b"region": b"[/]", b"dlq_reason": b"schema-invalid"},
        {b"payload": b"{}", b"region": b"\xff\xfe", b"dlq_reason": b"undecodable \x9b[2J"}])
    flags = ["replay", "--dlq", *common_flags(settings)]
    for extra in (["--dry-run"], ["--dry-run", "--json"],
                  ["--dry-run", "--reason", "undecodable", "--json"]):
        done = run_cli([*flags, *extra])
        assert done.returncode == 0 and not done.stderr, done.stderr.decode()
        assert_terminal_safe(done.stdout)
    assert await client.xlen(settings.keys.dlq) == 2
    picked = json.loads(run_cli([*flags, "--dry-run", "--reason", "undecodable",
                                 "--json"]).stdout)["entries"]
    assert [e["region"] for e in picked] == ["\\xff\\xfe"]
    done = run_cli(flags)
    assert done.returncode == 0 and not done.stderr, done.stderr.decode()
    text = assert_terminal_safe(done.stdout)
    assert "[/]" in text and "\\xff\\xfe" in text and "\\x9b[2J" in text
    assert "moved 2 dead letter(s)" in text
    assert await client.xlen(settings.keys.dlq) == 0
    assert sorted(f[b"region"] for _, f in await client.xrange(settings.stream)) == [
        b"[/]", b"\xff\xfe"]


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
async def test_replay_dlq_that_fails_half_way_reports_what_it_moved(
        client: aioredis.Redis, settings: Settings, as_json: bool) -> None:
    """Region shards: mena's dead letter moves, then europe's stream refuses the XADD (a key
    of another type). The command fails with its one line, and stdout says exactly what was
    moved before it stopped."""
    s = dataclasses.replace(settings, shard_by="region")
    mena, europe = s.keys.shard("mena"), s.keys.shard("europe")
    await client.xadd(mena.dlq, {b"payload": b"{}", b"region": b"mena", b"dlq_reason": b"x"})
    await client.xadd(europe.dlq, {b"payload": b"{}", b"region": b"europe",
                                   b"dlq_reason": b"x"})
    await client.set(europe.stream, b"not a stream")
    done = run_cli(["replay", "--dlq", "--shard-by", "region", *(["--json"] if as_json else []),
                    *common_flags(s)])
    assert done.returncode != 0, done.stderr.decode()
    assert "WRONGTYPE" in one_line(done, done.returncode)
    text = assert_terminal_safe(done.stdout)
    if as_json:
        report = json.loads(text)
        assert report["complete"] is False
        assert [(e["shard"], e["region"]) for e in report["entries"]] == [("mena", "mena")]
        assert report["entries"][0]["new_id"]
    else:
        assert "moved 1 dead letter(s)" in text and "stopped on the error" in text
    assert await client.xlen(mena.dlq) == 0 and await client.xlen(mena.stream) == 1
    assert await client.xlen(europe.dlq) == 1


# -- show and top: payload text (item 16) -------------------------------------------------

CONTROL = "\x1b]0;pwned\x07\x1b[2J\x9b31m\u202e"


async def test_show_escapes_control_sequences_of_the_payload(client: aioredis.Redis,
                                                             settings: Settings) -> None:
    """A narrative holding a window-title OSC, a clear-screen CSI, a C1 CSI and a bidi
    override passes validation and is persisted; show prints it escaped, --json as JSON
    escapes (the same JSON to any reader)."""
    snap = SyntheticSource(settings.regions, seed=4).cycle(int(time.time() * 1000))[0]
    hostile = msgspec.structs.replace(snap, narrative=msgspec.structs.replace(
        snap.narrative, situation=f"calm {CONTROL} [/] :smile:"))
    await publish(client, settings, [hostile])
    await drain(settings)
    flags = common_flags(settings)
    human = run_cli(["show", snap.region_id, *flags])
    assert human.returncode == 0, human.stderr.decode()
    text = assert_terminal_safe(human.stdout)
    assert f"calm {printable(CONTROL)} [/] :smile:" in text
    as_json = run_cli(["show", snap.region_id, "--json", *flags])
    assert as_json.returncode == 0, as_json.stderr.decode()
    doc = json.loads(assert_terminal_safe(as_json.stdout))
    assert doc["narrative"]["situation"] == hostile.narrative.situation


async def test_show_of_a_payload_that_is_not_a_snapshot_is_one_line(
        client: aioredis.Redis, settings: Settings) -> None:
    keys = settings.keys
    await client.set(keys.latest("mena"), b"000000000001-000000000001")
    await client.set(keys.by_id("mena", "000000000001-000000000001"), b"\x1b[2J not json")
    for extra in ([], ["--json"]):
        line = one_line(run_cli(["show", "mena", *extra, *common_flags(settings)]), 1)
        assert "not readable" in line and "\x1b" not in line


async def test_top_escapes_region_rows_and_survives_an_unreadable_payload(
        client: aioredis.Redis, settings: Settings) -> None:
    keys = settings.keys
    await client.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    head = {"generated_at": int(time.time() * 1000), "region_id": "mena",
            "meta": {"snapshot_id": f"id{CONTROL}", "trigger_reason": f"t{CONTROL}"},
            "regime": {"label": f"[bold]{CONTROL}"}}
    await client.set(keys.latest("mena"), b"sid")
    await client.set(keys.by_id("mena", "sid"), json.dumps(head, ensure_ascii=False).encode())
    await client.set(keys.latest("europe"), b"broken")
    await client.set(keys.by_id("europe", "broken"), b"\x9b not json")
    for extra in ([], ["--plain"]):
        done = run_cli(["top", "--once", *extra, *common_flags(settings)])
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr.decode()
        text = assert_terminal_safe(done.stdout)
        if not extra:
            assert "(unreadable)" in text and printable(f"id{CONTROL}")[:20] in text


# -- a reader that goes away (item 16) ----------------------------------------------------


def closed_pipe_run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run the command with a stdout pipe whose read end is closed before it starts: its
    first write (or the flush at exit) meets EPIPE, every time."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "regionstream", *args],
                              stdout=write_end, stderr=subprocess.PIPE, env=env,
                              timeout=120, check=False)
    finally:
        os.close(write_end)
    return proc


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("command", [
    ["pending"], ["pending", "--json"], ["top", "--once"], ["top", "--once", "--plain"],
    ["show", "mena"], ["show", "mena", "--json"], ["replay", "--dlq", "--dry-run", "--json"],
    ["acl"], ["--help"]])
async def test_a_closed_stdout_ends_the_command_quietly(client: aioredis.Redis,
                                                        settings: Settings, command: list[str],
                                                        buffered: bool) -> None:
    snap = SyntheticSource(settings.regions, seed=2).cycle(int(time.time() * 1000))
    await publish(client, settings, snap)
    await drain(settings)
    await client.xadd(settings.keys.dlq, {b"payload": b"{}", b"region": b"mena"})
    env = cli_env()
    if buffered:
        env.pop("PYTHONUNBUFFERED", None)
    flags = [] if command == ["--help"] else common_flags(settings)
    done = closed_pipe_run([*command, *flags], env)
    err = done.stderr.decode()
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err
    # 1: the output was not delivered, a runtime failure. argparse ignores a failed write of
    # --help itself (0), unless the block-buffered flush at exit finds it.
    assert done.returncode in ((0, 1) if command == ["--help"] else (1,)), err
