"""The parent's side of ``bench.runner``: start contender processes, start them all at once,
stop them, collect what they measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.keys import Keys

READY_TIMEOUT_S = 60.0  # a cold import on a busy 2-core machine can take seconds
DONE_TIMEOUT_S = 60.0
EXIT_WAIT_S = 5.0
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Spec:
    """What one runner process is and where it works."""

    role: str
    url: str
    keys: Keys
    name: str
    options: dict[str, Any] = field(default_factory=dict)  # --workers, --batch, ...

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "bench.runner", self.role, "--url", self.url,
                "--stream", self.keys.stream, "--group", self.keys.group,
                "--prefix", self.keys.prefix, "--name", self.name]
        for opt, value in self.options.items():
            flag = "--" + opt.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        return argv


class Runner:
    """A started ``bench.runner`` process (its stderr goes to ``log``)."""

    def __init__(self, spec: Spec, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.spec, self.proc, self.log = spec, proc, log

    @classmethod
    async def start(cls, spec: Spec, log: Path) -> Runner:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *spec.argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=err, cwd=REPO_ROOT)
        runner = cls(spec, proc, log)
        await runner._expect("ready", READY_TIMEOUT_S)
        return runner

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def go(self) -> None:
        await self._send("go")

    async def stop(self) -> dict[str, Any]:
        await self._send("stop")
        done = await self._expect("done", DONE_TIMEOUT_S)
        await asyncio.wait_for(self.proc.wait(), DONE_TIMEOUT_S)
        return done

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def _send(self, word: str) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(word.encode() + b"\n")
            await self.proc.stdin.drain()
        except ConnectionError:
            pass  # it died: the next _expect reports it with its stderr

    async def _expect(self, event: str, within_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), within_s)
        except TimeoutError:
            line = b""
        try:
            msg: dict[str, Any] = json.loads(line)
        except ValueError:
            msg = {}
        if msg.get("event") != event:
            if not line:  # EOF: it exited; let the status show how
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.proc.wait(), EXIT_WAIT_S)
            status = self.proc.returncode
            await self.kill()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"runner {self.spec.role} {self.spec.name}: expected {event!r}, "
                               f"got {line[:200]!r} (exit status {status}); "
                               f"its stderr ends with:\n{tail}")
        return msg


async def start_all(specs: list[Spec], log_dir: Path) -> list[Runner]:
    """Start runners side by side (imports overlap); kill them all if one fails."""
    results = await asyncio.gather(
        *(Runner.start(s, log_dir / f"{s.role}-{s.name}.log") for s in specs),
        return_exceptions=True)
    runners = [r for r in results if isinstance(r, Runner)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        await asyncio.gather(*(r.kill() for r in runners))
        raise errors[0]
    return runners


async def kill_all(runners: list[Runner]) -> None:
    await asyncio.gather(*(r.kill() for r in runners))
