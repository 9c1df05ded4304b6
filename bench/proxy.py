"""A loopback TCP proxy that delays every byte by a fixed time in each direction.

It reproduces a remote Redis (upstream's ~100 ms round trip) on one machine: a chunk read from
one side is written to the other ``delay_s`` after it arrived, in order, without serialising the
delays (a pipelined burst costs one delay, not one per command). It only ever listens on and
connects to loopback addresses, and everything it holds is bounded: connections, and chunks in
flight per direction (a full queue stops reading, so TCP pushes back on the sender).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress

LOOPBACK = "127.0.0.1"
DEFAULT_DELAY_S = 0.050  # each way: 100 ms round trip, the seed's figure
CHUNK_BYTES = 64 * 1024
MAX_QUEUED_CHUNKS = 256  # per direction: at most 16 MiB in flight per connection direction
MAX_CONNECTIONS = 64
CLOSE_TIMEOUT_S = 5.0


def _require_loopback(host: str) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the delay proxy is loopback-only; refusing {host!r}")


class DelayProxy:
    """``async with DelayProxy(upstream_port) as proxy:`` then connect to ``proxy.url``."""

    def __init__(self, upstream_port: int, delay_s: float = DEFAULT_DELAY_S, *,
                 upstream_host: str = LOOPBACK, listen_host: str = LOOPBACK,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        _require_loopback(upstream_host)
        _require_loopback(listen_host)
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0 (got {delay_s})")
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.delay_s = delay_s
        self.max_connections = max_connections
        self.port = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://{self.listen_host}:{self.port}/0"

    async def start(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._accept, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        # Abort the sockets rather than cancel the handlers: each pipe then ends on its own
        # (asyncio's start_server reports a cancelled handler as an error).
        for writer in list(self._writers):
            writer.transport.abort()
        if self._conns:
            await asyncio.wait(self._conns, timeout=CLOSE_TIMEOUT_S)

    async def __aenter__(self) -> DelayProxy:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.max_connections:
            writer.close()  # bounded: a runaway client pool fails loudly instead of growing
            return
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            self._writers.add(up_writer)
            try:
                # A TaskGroup: one direction failing (a side reset) cancels the other.
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(_pipe(reader, up_writer, self.delay_s))
                    tg.create_task(_pipe(up_reader, writer, self.delay_s))
            finally:
                up_writer.close()
                self._writers.discard(up_writer)
        except* (ConnectionError, OSError):
            pass  # a side hung up: both sides are closed below
        finally:
            writer.close()
            self._writers.discard(writer)
            self._conns.discard(task)


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``src`` to ``dst``, each chunk written ``delay_s`` after it was read."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(MAX_QUEUED_CHUNKS)

    async def take_in() -> None:
        try:
            while chunk := await src.read(CHUNK_BYTES):
                await queue.put((loop.time() + delay_s, chunk))
        finally:
            await queue.put(None)

    async def give_out() -> None:
        while (item := await queue.get()) is not None:
            due, chunk = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            dst.write(chunk)
            await dst.drain()
        with contextlib.suppress(OSError, RuntimeError):
            dst.write_eof()

    async with asyncio.TaskGroup() as tg:
        tg.create_task(take_in())
        tg.create_task(give_out())
