"""The systemd units of deploy/: ``systemd-analyze verify`` finds nothing to say about them, their
hardening scores "OK", and each ExecStart is a command line regionstream accepts, with the
shipped settings file: a producer, and a template whose instances 1..N are consumers with
their own names and metrics ports, stopped by SIGTERM with more time than their grace."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from regionstream.parser import build_parser
from regionstream.runtime import EXIT_PERMANENT, EXIT_USAGE
from shared.connection import SOCKET_TIMEOUT_S
from shared.settings import Settings, flag_fields, unknown_variables

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PRODUCER = DEPLOY / "regionstream-produce.service"
CONSUMER = DEPLOY / "regionstream-consume@.service"
ENV_FILE = DEPLOY / "regionstream.env"
INSTALLED = "/opt/regionstream/bin/regionstream"  # where the units expect the venv's script
HOST = "testhost"
PRODUCER_PORT = 9101
INSTANCES = (1, 2, 3, 12)
# systemd-analyze security's overall exposure, x10 (0 = locked down, 100 = exposed): under 20
# is what it calls "OK".
MAX_EXPOSURE = 20
HARDENING = {"DynamicUser": "yes", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
             "ProtectHome": "yes", "PrivateTmp": "yes", "CapabilityBoundingSet": ""}
Unit = dict[str, list[tuple[str, str]]]


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is not installed (make test installs systemd)",
                    pytrace=False)
    return found


def parse(path: Path) -> Unit:
    """A unit file's sections, each a list of (key, value) in order (keys may repeat)."""
    unit: Unit = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            assert line.endswith("]"), raw
            section = line[1:-1]
            assert section not in unit, f"{path.name}: [{section}] twice"
            unit[section] = []
            continue
        assert section is not None and "=" in line and not line.endswith("\\"), raw
        key, _, value = line.partition("=")
        unit[section].append((key.strip(), value.strip()))
    return unit


def one(unit: Unit, section: str, key: str) -> str:
    values = [v for k, v in unit.get(section, []) if k == key]
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def seconds(value: str) -> float:
    """A systemd time span as these units write it: 45, 45s, 2min, 1min 30s."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts and "".join(n + u for n, u in parts) == value.replace(" ", ""), value
    return sum(float(n) * units[u] for n, u in parts)


def env_file() -> dict[str, str]:
    """The shipped settings file as systemd reads it (KEY=value lines; # comments)."""
    out = {}
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), line
            out[key] = value
    return out


def expand(text: str, instance: str = "") -> str:
    """systemd's specifiers and ``$$`` as they are expanded in ExecStart."""
    text = re.sub(r"%([iIH%])", lambda m: {"i": instance, "I": instance, "H": HOST,
                                            "%": "%"}[m.group(1)], text)
    return text.replace("$$", "$")


def argv_of(unit_path: Path, instance: str, tmp_path: Path) -> list[str]:
    """The regionstream arguments an instance of the unit runs with. A shell ExecStart is run
    for real, with the regionstream script swapped for one that prints its arguments."""
    command = shlex.split(expand(one(parse(unit_path), "Service", "ExecStart"), instance))
    if command[0] == INSTALLED:
        return command[1:]
    assert command[:2] == ["/bin/sh", "-c"] and len(command) == 3, command
    script = command[2]
    assert script.startswith(f"exec {INSTALLED} "), script  # the shell becomes regionstream
    stub = tmp_path / "regionstream-argv"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    stub.chmod(0o755)
    done = subprocess.run(["/bin/sh", "-c", script.replace(INSTALLED, str(stub), 1)],
                          capture_output=True, text=True, check=False, env={})
    assert done.returncode == 0 and not done.stderr, done
    args: list[str] = json.loads(done.stdout)
    return args


def settings_of(argv: list[str]) -> tuple[str, Settings]:
    """The command and its settings, as the CLI makes them, over the shipped settings file."""
    args = build_parser().parse_args(argv)
    flags = {k: getattr(args, k) for k in flag_fields() if hasattr(args, k)}
    return args.command, Settings.load(flags, env=env_file())


def runnable_copy(unit_path: Path, into: Path) -> Path:
    """The unit with ExecStart's program at a path that exists here (verify checks it)."""
    text = unit_path.read_text()
    regionstream = Path(sys.executable).with_name("regionstream")
    assert regionstream.exists(), regionstream
    assert text.count(INSTALLED) == 1, unit_path.name
    into.mkdir(exist_ok=True)
    copy = into / unit_path.name
    copy.write_text(text.replace(INSTALLED, str(regionstream)))
    return copy


def verify(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze(), "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, check=False)


def test_systemd_analyze_verify_says_nothing(tmp_path: Path) -> None:
    """Not even a warning: an unknown or misspelled key is only a warning (exit 0), so the
    output must be empty. The template is verified as an instance, as systemd loads it."""
    units = tmp_path / "units"
    producer = runnable_copy(PRODUCER, units)
    template = runnable_copy(CONSUMER, units)
    for path in (producer, template, units / "regionstream-consume@1.service"):
        done = verify(path)
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
            path.name, done.stdout + done.stderr)
    # The check has teeth: a misspelled key is reported.
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / template.name).write_text(
        template.read_text().replace("KillSignal=", "KillSignl=", 1))
    done = verify(broken / "regionstream-consume@1.service")
    assert "KillSignl" in done.stdout + done.stderr


@pytest.mark.parametrize("unit", [PRODUCER, CONSUMER], ids=lambda p: p.name)
def test_hardening_scores_ok(unit: Path, tmp_path: Path) -> None:
    copy = runnable_copy(unit, tmp_path)
    target = copy if "@." not in copy.name else copy.with_name(copy.name.replace("@.", "@1."))
    done = subprocess.run([systemd_analyze(), "security", "--offline=yes",
                           f"--threshold={MAX_EXPOSURE}", "--no-pager", str(target)],
                          capture_output=True, text=True, check=False,
                          env={**os.environ, "SYSTEMD_COLORS": "0"})
    assert done.returncode == 0, done.stdout[-600:] + done.stderr


@pytest.mark.parametrize("unit", [PRODUCER, CONSUMER], ids=lambda p: p.name)
def test_units_restart_stop_and_harden_as_a_service_should(unit: Path) -> None:
    u = parse(unit)
    assert set(u) == {"Unit", "Service", "Install"}, unit.name
    assert one(u, "Unit", "Description")
    assert "network-online.target" in one(u, "Unit", "After")
    assert one(u, "Install", "WantedBy") == "multi-user.target"
    assert one(u, "Service", "Type") == "exec"
    assert one(u, "Service", "KillSignal") == "SIGTERM"
    assert one(u, "Service", "Restart") == "on-failure"
    # A bad setting (2) or a refusal by Redis (3) is not fixed by a restart: no restart loop.
    assert set(one(u, "Service", "RestartPreventExitStatus").split()) == {
        str(EXIT_USAGE), str(EXIT_PERMANENT)}
    assert seconds(one(u, "Service", "RestartSec")) > 0
    assert Path(one(u, "Service", "EnvironmentFile")).name == ENV_FILE.name
    for key, value in HARDENING.items():
        assert one(u, "Service", key) == value, key


def test_the_settings_file_holds_real_settings_only() -> None:
    env = env_file()
    assert "REGIONSTREAM_REDIS_URL" in env
    assert not unknown_variables(env)
    commented = re.findall(r"^#\s*(REGIONSTREAM_\w+)=", ENV_FILE.read_text(), re.MULTILINE)
    assert commented and not unknown_variables(dict.fromkeys(commented, ""))
    Settings.load({}, env=env)  # valid as shipped


def test_producer_exec_start_is_a_produce_command_line(tmp_path: Path) -> None:
    command, s = settings_of(argv_of(PRODUCER, "", tmp_path))
    assert command == "produce"
    assert s.metrics_port == PRODUCER_PORT
    assert s.redis_url == env_file()["REGIONSTREAM_REDIS_URL"]


def test_consumer_instances_have_their_own_names_and_ports(tmp_path: Path) -> None:
    """Instance N: consumer names <host>-N, metrics port 9101+N (as prometheus/targets says);
    SIGTERM gets longer than the grace before systemd's SIGKILL."""
    ports, names = set(), set()
    stop_s = seconds(one(parse(CONSUMER), "Service", "TimeoutStopSec"))
    for n in INSTANCES:
        command, s = settings_of(argv_of(CONSUMER, str(n), tmp_path))
        assert command == "consume"
        assert s.name == f"{HOST}-{n}" and s.metrics_port == PRODUCER_PORT + n
        assert stop_s > s.grace_s, (stop_s, s.grace_s)
        ports.add(s.metrics_port)
        names.add(s.name)
    assert len(ports) == len(names) == len(INSTANCES) and PRODUCER_PORT not in ports
    # The same margin with the settings file's own grace, once uncommented.
    graces = re.findall(r"^#?\s*REGIONSTREAM_GRACE_S=(\S+)", ENV_FILE.read_text(),
                        re.MULTILINE)
    assert graces and all(stop_s > float(g) for g in graces)
    # The producer stops on SIGTERM once its round trip in flight is answered or times out.
    assert seconds(one(parse(PRODUCER), "Service", "TimeoutStopSec")) > SOCKET_TIMEOUT_S
