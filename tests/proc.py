"""Running the real command in subprocesses, as a user (or a supervisor) would."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

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


def one_line(done: subprocess.CompletedProcess[bytes], code: int) -> str:
    """The single stderr line of a failed run with exit ``code``."""
    assert done.returncode == code, done.stderr
    lines = done.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], lines  # one line, no traceback
    return lines[0]


def spawn_cli(args: Sequence[str], module: str = "regionstream") -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env())


class Proc:
    """A CLI process whose output goes to a file: a pipe nobody reads would block it once its
    log outgrew the pipe's buffer (a failover logs a retry per attempt)."""

    def __init__(self, args: list[str], log: Path, *, stdin: bool = False) -> None:
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "regionstream", *args],
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, env=cli_env())

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
