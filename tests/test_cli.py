"""The command line as a user meets it: one-line errors, exit codes, sources, show, demo."""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import msgspec
import pytest
import redis
import redis.asyncio as aioredis

from harness import wait
from producer.synthetic import SyntheticSource
from regionstream.parser import commands, is_stream_id
from shared.keys import Keys
from shared.schema import encode
from shared.servers import free_port, start_redis_server
from shared.settings import Settings, SettingsError
from tests.proc import Proc, cli_env, common_flags, one_line, run_cli


@pytest.mark.parametrize(("args", "names"), [
    (["consume", "--batch", "0"], "--batch"),
    (["consume", "--workers", "many"], "--workers"),
    (["produce", "--count", "-3"], "--count"),
    (["produce", "--regions", "mena,atlantis"], "atlantis"),
    (["produce", "--redis-url", "http://x"], "--redis-url"),
    (["produce", "--redis-url", "redis://:99999999"], "--redis-url"),
    (["consume", "--frobnicate"], "--frobnicate"),
    (["produce", "--once", "--count", "5"], "--count"),
    # URL options redis-py would refuse only when connecting, and a path that is no db number
    (["produce", "--redis-url", "redis://localhost/0?foo=bar"], "--redis-url: unknown option 'foo'"),
    (["produce", "--redis-url", "redis://localhost/0?socket_timeout=abc"], "'socket_timeout'"),
    (["produce", "--redis-url", "redis://localhost/abc"], "--redis-url: path must be"),
    (["produce", "--redis-url", "redis://localhost/0?db=-1"], "--redis-url: db must be"),
    # settings name the flag a user typed ("--grace", not the field's "--grace-s")
    (["consume", "--grace", "-1"], "--grace: must be"),
    (["produce", "--interval", "0"], "--interval: must be"),
    (["produce", "--stream-retention", "-1"], "--stream-retention: must be"),
    (["consume", "--consumer-timeout", "0"], "--consumer-timeout: must be"),
    # values checked before anything connects
    (["replay", "--dlq", "--limit", "-1"], "--limit: must be > 0"),
    (["replay", "--dlq", "--limit", "0"], "--limit: must be > 0"),
    (["top", "--refresh", "0"], "--refresh: must be a number > 0"),
    (["top", "--refresh", "0.05"], "--refresh: must be at least 0.1 s"),
    (["demo", "--duration", "-5"], "--duration: must be a number > 0"),
    (["demo", "--duration", "nan"], "--duration: must be a number > 0"),
    (["replay", "--range", "foo", "bar"],
     "replay: --range START: not a stream id or a time: 'foo'"),
    (["replay", "--range", "(1700000000000-3", "x"], "--range END: not a stream id or a time: 'x'"),
    (["replay", "--range", "2026-13-01T00:00:00Z", "+"], "--range START: not a stream id or a"),
    # a flag of another replay mode: refused, not ignored
    (["replay", "--range", "-", "+", "--consumer", "bob"],
     "replay: --consumer applies to replay --pending, not to replay --range"),
    (["replay", "--range", "-", "+", "--limit", "1"],
     "replay: --limit applies to replay --dlq, not to replay --range"),
    (["replay", "--pending", "--reason", "x"],
     "replay: --reason applies to replay --dlq, not to replay --pending"),
    (["replay", "--pending", "--region", "mena"],
     "replay: --region applies to replay --dlq, not to replay --pending"),
    (["replay", "--dlq", "--consumer", "bob"],
     "replay: --consumer applies to replay --pending, not to replay --dlq"),
    (["replay", "--dlq", "--min-idle-ms", "0"],
     "replay: --min-idle-ms applies to replay --pending, not to replay --dlq"),
    # a misspelled flag, command or choice: the nearest one
    (["consume", "--bach", "5"],
     "regionstream consume: unrecognized arguments: --bach 5; did you mean --batch?"),
    (["replay", "--dlq", "--dry-rn"], "--dry-rn; did you mean --dry-run?"),
    (["prodcue", "--once"], "invalid choice: 'prodcue'"),
    (["prodcue", "--once"], "; did you mean produce?"),
    (["top", "--shard-by", "regoin"], "; did you mean region?"),
])
def test_bad_flag_is_one_line_naming_it_exit_2(args: list[str], names: str) -> None:
    done = run_cli(args)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1, lines
    assert names in lines[0] and "Traceback" not in lines[0], lines[0]


@pytest.mark.parametrize(("url", "code"), [
    ("redis://:secret@host:70000/0", 2),  # bad port
    ("redis://user:secret@localhost:99999/0", 2),
    ("redis://:secret@localhost/0?socket_timeout=abc", 2),  # bad query value
    ("redis://:secret@localhost/0?foo=bar", 2),  # unknown option
    ("redis://:secret@localhost/abc", 2),  # bad path
    ("redis://localhost/abc?password=secret", 2),
    ("redis://:se/cret@localhost/0", 2),  # an unencoded '/' in the password
    ("redis://user:secret@127.0.0.1:{port}/0", 1),  # unreachable, with a password
    ("redis://127.0.0.1:{port}/0?password=secret", 1),
])
def test_a_password_never_shows_in_a_message(url: str, code: int) -> None:
    url = url.format(port=free_port())
    line = one_line(run_cli(["produce", "--once", "--redis-url", url]), code)
    assert "secret" not in line and "cret" not in line
    assert ("--redis-url" if code == 2 else "cannot reach Redis at") in line


def test_a_password_in_the_environment_never_shows() -> None:
    env = cli_env() | {"REGIONSTREAM_REDIS_URL": "redis://:secret@localhost/0?foo=bar"}
    line = one_line(run_cli(["produce", "--once"], env=env), 2)
    assert "REGIONSTREAM_REDIS_URL" in line and "secret" not in line


def _options_and_dests() -> set[tuple[str, str]]:
    """(option string, dest) of every option of every subcommand."""
    return {(opt, dest) for p in commands().values() for opt, dest in p.options().items()}


def test_every_command_has_its_parser() -> None:
    assert list(commands()) == ["produce", "consume", "show", "top", "demo", "pending",
                                "replay", "acl", "schema"]
    assert commands()["consume"].options()["--grace"] == "grace_s"


# What parsing must not import: the services, and the libraries only running needs.
HEAVY = ("redis", "rich", "prometheus_client", "msgspec", "hiredis", "consumer", "producer",
         "shared", "asyncio")
PARSE_ONLY = f"""
import sys
from regionstream.cli import build_parser, main
build_parser()
codes = []
for argv in (["--help"], ["consume", "--help"], ["--version"]):
    try:
        main(argv)
    except SystemExit as exc:
        codes.append(exc.code)
codes.append(main(["consume", "--workers", "many"]))  # a bad flag: exit 2, one line
print(codes, sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r}), file=sys.stderr)
"""


def test_parsing_imports_nothing_heavy() -> None:
    """``--help``, ``--version`` and a bad flag are answered without loading redis, rich,
    prometheus_client, msgspec or the services: what a command needs is imported when it
    runs (``regionstream.parser``)."""
    done = subprocess.run([sys.executable, "-c", PARSE_ONLY], capture_output=True,
                          timeout=60, env=cli_env(), check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert b"usage: regionstream" in done.stdout and b"regionstream " in done.stdout
    last = done.stderr.decode().strip().splitlines()[-1]
    assert last == "[0, 0, 0, 2] []", done.stderr.decode()


def test_every_setting_message_names_a_real_flag() -> None:
    """A message names the flag that sets a field; that flag must exist and set that field
    (it once said --grace-s for --grace). Fields no flag sets are named as themselves."""
    bad = {"str": "", "int": -1, "float": -1.0, "bool": "maybe"}
    options = _options_and_dests()
    for f in dataclasses.fields(Settings):
        value = () if str(f.type).startswith("tuple") else bad[str(f.type)]
        if f.name == "shards":  # empty means "every shard"; an unknown region is bad
            value = ("atlantis",)
        if f.name.startswith("tls_"):  # "" means "none"; a file that is not there is bad
            value = "/nonexistent/regionstream-test.pem"
        with pytest.raises(SettingsError) as caught:
            Settings.load({f.name: value}, env={})
        named = caught.value.problems[0].split(": ", 1)[0]
        if f.metadata["flag"] is None:
            assert named == f.name and all(dest != f.name for _, dest in options), f.name
        else:
            assert (named, f.name) in options, (named, f.name)


@pytest.mark.parametrize(("text", "ok"), [
    ("-", True), ("+", True), ("0", True), ("1700000000000-3", True), ("(1700000000000-3", True),
    ("(5", True), ("foo", False), ("(-", False), ("1-", False), ("-1", False), ("1-2-3", False),
    (str(2**64), False), ("", False),
])
def test_stream_ids(text: str, ok: bool) -> None:
    assert is_stream_id(text) is ok


def test_source_that_is_a_directory_is_one_line(tmp_path: pathlib.Path) -> None:
    line = one_line(run_cli(["produce", "--source", str(tmp_path)]), 2)
    assert f"--source {str(tmp_path)!r}" in line and "directory" in line


async def test_missing_source_creates_nothing(client: aioredis.Redis, settings: Settings,
                                              tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.jsonl"
    line = one_line(run_cli(["produce", "--source", str(missing), *common_flags(settings)]), 2)
    assert f"--source {str(missing)!r}" in line and "No such file" in line
    assert await client.exists(settings.stream) == 0  # checked before connecting


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


async def test_metrics_port_in_use_is_one_line(client: aioredis.Redis, settings: Settings,
                                               busy_port: int) -> None:
    done = run_cli(["produce", "--once", "--metrics-port", str(busy_port),
                    *common_flags(settings)])
    line = one_line(done, 2)
    assert "--metrics-port" in line and str(busy_port) in line
    assert await client.exists(settings.stream) == 0  # refused before any work


def test_unresolvable_metrics_host_is_one_line(settings: Settings) -> None:
    done = run_cli(["consume", "--drain", "--metrics-port", str(free_port()),
                    "--metrics-host", "no-such-host.invalid", *common_flags(settings)])
    line = one_line(done, 2)
    assert "--metrics-host" in line and "no-such-host.invalid" in line


@pytest.fixture(scope="module")
def locked_redis_port() -> Iterator[int]:
    """A private redis-server that requires the password "pw"."""
    with start_redis_server(extra=("--requirepass", "pw")) as server:
        yield server.port


@pytest.mark.parametrize(("userinfo", "says"), [
    ("", "requires a password (AUTH failed / NOAUTH)"),
    (":badpass@", "refused the credentials in the URL (WRONGPASS"),
    ("someone:badpass@", "refused the credentials in the URL (WRONGPASS"),
])
def test_authentication_failures_are_one_line_exit_3(locked_redis_port: int, userinfo: str,
                                                     says: str) -> None:
    """Credentials refused (or none given where one is required): no retry fixes it, so exit
    3, on which a supervisor does not restart in a loop."""
    url = f"redis://{userinfo}127.0.0.1:{locked_redis_port}/0"
    line = one_line(run_cli(["pending", "--redis-url", url]), 3)
    shown = url.replace(":badpass@", ":***@")
    assert line.startswith(f"regionstream: Redis at {shown} {says}"), line
    assert "badpass" not in line and "HELLO" not in line


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
    line = one_line(run_cli(["show", "mena", *common_flags(settings)]), 1)
    assert line == (f"regionstream show: no snapshot persisted for mena under prefix "
                    f"{settings.prefix!r}")


def test_show_unknown_region_exits_2(settings: Settings) -> None:
    line = one_line(run_cli(["show", "atlantis", *common_flags(settings)]), 2)
    assert line == ("regionstream show: unknown region 'atlantis'; known: "
                    + ", ".join(settings.regions))


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


def test_demo_without_redis_server_or_fakeredis_says_what_to_install(
        tmp_path: pathlib.Path) -> None:
    """fakeredis is the demo's extra, not the runtime's: an install of the runtime alone on a
    machine without redis-server gets one line naming both ways out."""
    shadow = tmp_path / "fakeredis"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('No module named fakeredis')\n")
    env = cli_env() | {"PATH": "/nonexistent",
                       "PYTHONPATH": f"{tmp_path}:{cli_env().get('PYTHONPATH', '')}"}
    line = one_line(run_cli(["demo", "--duration", "1", "--plain"], env=env), 1)
    assert line == ("regionstream: redis-server is not installed, nor the demo's embedded "
                    "fallback (install redis-server, or the locked demo set: make demo, or pip "
                    "install --require-hashes -r requirements/demo.txt): "
                    "redis-server")


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


def _listening(port: int) -> list[str]:
    """Local addresses (IPv4, as dotted quads) of sockets listening on ``port``."""
    found = []
    for line in pathlib.Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        addr, hexport = local.split(":")
        if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
            found.append(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
    return found


async def test_metrics_listen_on_loopback_only_by_default(settings: Settings) -> None:
    from tests.conftest import wait_until
    from tests.proc import spawn_cli

    port = free_port()
    proc = spawn_cli(["consume", "--metrics-port", str(port), "--block-ms", "100",
                      *common_flags(settings)])
    try:
        async def listening() -> bool:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            return bool(_listening(port))

        await wait_until(listening, 30, "the metrics endpoint")
        assert _listening(port) == ["127.0.0.1"]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


SIGNALLED = """
import asyncio, os, signal, sys
from regionstream.runtime import stop_on_signals

async def main():
    stop = asyncio.Event()
    with stop_on_signals(stop, on_first=lambda name: print("first", name, flush=True),
                         before_exit=lambda: print("before exit", flush=True)):
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        print("stopping", flush=True)
        if sys.argv[1] == "again":
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.Event().wait()  # never set: only the signal ends this
    print("default again:", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize(("signals", "code", "out"), [
    ("once", 0, "first SIGTERM\nstopping\ndefault again: True\n"),
    ("again", 130, "first SIGTERM\nstopping\nbefore exit\n"),
])
def test_first_signal_stops_gracefully_a_second_exits_at_once(signals: str, code: int,
                                                               out: str) -> None:
    """The one semantics of produce, consume, top and demo (``runtime.stop_on_signals``):
    the first signal sets the stop event, a second one while stopping exits 130 at once
    (after what must not outlive the process), and leaving removes the handlers."""
    done = subprocess.run([sys.executable, "-c", SIGNALLED, signals], capture_output=True,
                          timeout=60, env=cli_env(), check=False)
    assert done.returncode == code, done.stderr.decode()
    assert done.stdout.decode() == out
    assert ("second SIGINT: exiting now" in done.stderr.decode()) is (code == 130)


OPENS_COUNTED = """
import sys

import consumer.service
import shared.group_metrics
import shared.shards
from regionstream.cli import main

opened = []
real = shared.shards.open_deployment

async def counted(*args, **kwargs):
    opened.append(args[0])
    return await real(*args, **kwargs)

shared.shards.open_deployment = counted
consumer.service.open_deployment = counted
shared.group_metrics.open_deployment = counted
code = main(sys.argv[1:])
print("deployments opened:", len(opened), file=sys.stderr)
sys.exit(code)
"""


def test_consume_opens_the_deployment_once(settings: Settings) -> None:
    """The command's check, the consumer and the group gauges share one deployment (they
    opened three)."""
    done = subprocess.run([sys.executable, "-c", OPENS_COUNTED, "consume", "--drain",
                           "--block-ms", "50", "--metrics-port", str(free_port()),
                           *common_flags(settings)],
                          capture_output=True, timeout=60, env=cli_env(), check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr.decode().strip().splitlines()[-1] == "deployments opened: 1"


LONG_RUNNING = {  # each command, and a word of its output that says it is running
    "produce": (["produce", "--interval", "3600"], "cycle 1: published"),
    "consume": (["consume", "--block-ms", "100"], "consuming stream"),
    "top": (["top", "--plain", "--refresh", "0.2"], "stream="),
    "demo": (["demo", "--plain", "--interval", "3600"], "stream="),
}


@pytest.mark.parametrize("twice", [False, True], ids=["once", "twice"])
@pytest.mark.parametrize("command", sorted(LONG_RUNNING))
def test_every_long_running_command_stops_on_a_signal_and_exits_on_a_second(
        settings: Settings, tmp_path: pathlib.Path, command: str, twice: bool) -> None:
    """The real processes: once running, a SIGTERM stops each gracefully (exit 0); two
    signals at once (SIGINT and SIGTERM delivered together on SIGCONT) exit 130 at once."""
    args, running = LONG_RUNNING[command]
    if command == "top":  # it reads a deployment that exists (a missing one is exit 1)
        with redis.Redis.from_url(settings.redis_url) as admin:
            admin.xgroup_create(settings.stream, settings.group, id="0", mkstream=True)
    proc = Proc([*args, *common_flags(settings)], tmp_path / "out.log")
    try:
        wait.until(wait.holds(lambda: running in proc.output() or proc.proc.poll() is not None,
                              "not yet"), 60, f"{command} running")
        assert proc.proc.poll() is None, proc.output()[-2000:]
        if twice:
            proc.proc.send_signal(signal.SIGSTOP)  # both pending, then handled in one turn
            proc.proc.send_signal(signal.SIGINT)
            proc.proc.send_signal(signal.SIGTERM)
            proc.proc.send_signal(signal.SIGCONT)
        else:
            proc.proc.send_signal(signal.SIGTERM)
        code = proc.proc.wait(30)
    finally:
        proc.kill()
        if command == "top":
            with redis.Redis.from_url(settings.redis_url) as admin:
                admin.delete(settings.stream)
    assert code == (130 if twice else 0), proc.output()[-2000:]
    assert ("exiting now" in proc.output()) is twice


# -- the exit codes: one table (regionstream.parser.EXIT_CODES), listed by --help, in the README

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def exit_codes_in(text: str) -> set[int]:
    """The codes of the paragraph that starts with "Exit codes:" (any case) up to the next
    blank line, read loosely: a number after that colon, a ';' or ',' or at a line's start,
    followed by its meaning ("0 ok; 1 runtime failure (...); ...", or one per line)."""
    found = re.search(r"exit codes:(.*?)(?:\n\s*\n|\Z)", text, re.IGNORECASE | re.DOTALL)
    assert found, "no paragraph starting 'Exit codes:'"
    return {int(code) for code in re.findall(r"(?:^|[;,]|\n)\s*(\d{1,3})\s+[A-Za-z(]",
                                             found.group(1))}


def test_the_readme_and_help_name_the_same_exit_codes() -> None:
    """``regionstream --help`` (its epilog, from EXIT_CODES) and the README's "Exit codes:"
    paragraph name the same codes, which are the ones the commands exit with."""
    from regionstream import runtime
    from regionstream.parser import EXIT_CODES

    table = {code for code, _ in EXIT_CODES}
    helped = run_cli(["--help"])
    assert helped.returncode == 0
    assert exit_codes_in(helped.stdout.decode()) == table
    for code, meaning in EXIT_CODES:  # each with its meaning (argparse re-wraps the lines)
        assert " ".join(meaning.split()[:3]) in " ".join(helped.stdout.decode().split()), code
    assert exit_codes_in(README.read_text()) == table, (
        "README.md: its paragraph starting 'Exit codes:' must name every code of "
        "regionstream.parser.EXIT_CODES, as '<code> <meaning>' separated by ';'")
    assert {runtime.EXIT_OK, runtime.EXIT_FAILURE, runtime.EXIT_USAGE, runtime.EXIT_PERMANENT,
            runtime.EXIT_REJECTED, runtime.EXIT_INTERRUPTED} == table


# Each documented exit code and the test above that gets it from a real process.
EXIT_CODE_TESTS = {
    0: "test_produce_once_consume_drain_show",
    1: "test_unreachable_redis_is_a_clear_message",
    2: "test_bad_flag_is_one_line_naming_it_exit_2",
    3: "test_authentication_failures_are_one_line_exit_3",
    4: "test_jsonl_source_reports_bad_lines_and_publishes_the_rest",
    130: "test_every_long_running_command_stops_on_a_signal_and_exits_on_a_second",
}


def test_every_documented_exit_code_is_tested_on_a_real_process() -> None:
    from regionstream.parser import EXIT_CODES

    assert set(EXIT_CODE_TESTS) == {code for code, _ in EXIT_CODES}
    for code, name in EXIT_CODE_TESTS.items():
        source = inspect.getsource(globals()[name])
        assert "run_cli" in source or "Proc(" in source, name  # a real process
        assert re.search(rf"\b{code}\b", source), (code, name)
