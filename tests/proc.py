"""Running the real command in subprocesses, as a user (or a supervisor) would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from shared.settings import Settings

CLI_TIMEOUT_S = 120


def common_flags(s: Settings) -> list[str]:
    return ["--redis-url", s.redis_url, "--stream", s.stream, "--group", s.group,
            "--prefix", s.prefix]


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGIONSTREAM_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: Sequence[str], *, stdin: bytes | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "regionstream", *args], input=stdin,
                          capture_output=True, timeout=CLI_TIMEOUT_S, env=env or cli_env(),
                          check=False)


def spawn_cli(args: Sequence[str], module: str = "regionstream") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())
