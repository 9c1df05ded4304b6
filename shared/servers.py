"""Private Redis servers for the demo, the tests and the benchmarks: a real ``redis-server`` on
a free loopback port in a temporary directory, or (last resort, demo only) fakeredis over TCP."""

from __future__ import annotations

import contextlib
import errno
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT_S = 10.0
START_ATTEMPTS = 5


def _pid_at(port: int) -> int | None:
    """The process id the server on ``port`` reports (INFO server), None if it cannot say."""
    import redis

    try:
        with redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=5) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None
               ) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with code {proc.returncode} at start")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class Server:
    url: str
    kind: str  # "redis-server" or "fakeredis"
    port: int
    _stop: Any = field(repr=False, default=None)
    proc: subprocess.Popen[bytes] | None = field(repr=False, default=None)  # redis-server's

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()
            self._stop = None

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def start_redis_server(binary: str | None = None, *, port: int | None = None,
                       extra: tuple[str, ...] = ()) -> Server:
    """A throwaway redis-server: no persistence, loopback only, its own temp directory.

    A free port found here can be taken by another process before redis-server binds it (two
    test workers start servers at once): then this one exits, or, worse, the port answers for
    the other one. So the server answering must report this process's pid, else another
    port is tried (a given ``port`` is not)."""
    binary = binary or redis_server_binary()
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    tmp = tempfile.mkdtemp(prefix="regionstream-redis-")
    log = Path(tmp, "redis.log")
    for attempt in range(1, START_ATTEMPTS + 1):
        chosen = port or free_port()
        proc = subprocess.Popen(
            [binary, "--port", str(chosen), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--dir", tmp, "--logfile", str(log), "--daemonize", "no", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port("127.0.0.1", chosen, START_TIMEOUT_S, proc)
            # A server that will not say (a password, TLS on this port) is taken as ours if
            # our process still runs: one that lost the port exits at once.
            if _pid_at(chosen) in (proc.pid, None) and proc.poll() is None:
                break
            raise RuntimeError(f"port {chosen} answers for another server")
        except Exception:
            proc.kill()
            proc.wait()
            if port or attempt == START_ATTEMPTS:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    port = chosen

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    return Server(f"redis://127.0.0.1:{port}/0", "redis-server", port, stop, proc)


def start_fake_server() -> Server:
    """fakeredis speaking RESP on a loopback port, in a thread of this process. fakeredis is
    the demo's extra (``regionstream[demo]``, what ``make demo`` installs), not the runtime's:
    without it, one line says what to install."""
    try:
        from fakeredis import TcpFakeServer
    except ImportError:
        raise FileNotFoundError(
            errno.ENOENT, "redis-server is not installed, nor the demo's embedded fallback "
            "(install redis-server, or the locked demo set: make demo, or pip install "
            "--require-hashes -r requirements/demo.txt)", "redis-server",
        ) from None

    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis", server_version=(7, 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="fakeredis")
    thread.start()
    wait_port("127.0.0.1", port, START_TIMEOUT_S, None)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return Server(f"redis://127.0.0.1:{port}/0", "fakeredis", port, stop)
