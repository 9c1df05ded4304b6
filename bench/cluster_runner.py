"""The real consumer in its own process, the way ``regionstream consume`` runs it: the
deployment found out from the server (``Consumer.run`` opens it), so on a Redis Cluster
every shard's commands go to the node that owns it (``shared.shards.NodeRouter``), through
whatever address CLUSTER SLOTS announces (a delay proxy in ``cluster_seed_cycle``).

``bench.runner`` hands the consumer one client (the single-server layout); this runner speaks
its protocol (``ready`` / ``go`` / ``stop`` / ``done``, see there) for the cluster scenarios.
With ``--prepare`` it creates every shard's group and loads the scripts on every node before
``ready``, so that ``go`` starts the work alone. ``done`` also carries ``cpu_s_at_last_ack``: the process's
CPU time (``getrusage``) when its last ack was confirmed, so idle time after the drain, and the
stop, are not counted per message.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from bench.contenders import Tracker
from bench.runner import (
    MS_PER_S,
    contender_parser,
    count_acks,
    cpu_s,
    emit,
    read_command,
    rss_kib,
    run_until_stopped,
    settings_of,
    stdin_lines,
)
from consumer.service import Consumer, tune_gc
from shared.settings import Settings
from shared.shards import open_deployment

ROLES = ("consumer",)


@dataclass
class CpuTracker(Tracker):
    """A Tracker that also notes this process's CPU time at each confirmed ack."""

    cpu_at_last: float | None = None

    def acked(self, entry_ids: Iterable[bytes]) -> None:
        before = self.count
        super().acked(entry_ids)
        if self.count > before:
            self.cpu_at_last = cpu_s()


async def prepare(settings: Settings) -> tuple[str, int, int]:
    """Every shard's group and the scripts on every node, before ``ready``. Returns the
    layout, the shard count and the node count."""
    deployment = await open_deployment(settings.redis_url, settings.keys, settings.regions,
                                       settings.shard_by, tls=settings.tls)
    try:
        await Consumer(settings, registry=CollectorRegistry()).prepare(deployment)
        return deployment.layout, len(deployment.shards), len(deployment.node_clients())
    finally:
        await deployment.aclose()


async def run(args: argparse.Namespace) -> None:
    settings = settings_of(args, shard_by=args.shard_by)
    layout, shards, nodes = (await prepare(settings) if args.prepare
                             else (settings.shard_by, 0, 0))
    tracker = CpuTracker()
    consumer = Consumer(settings, registry=CollectorRegistry(), on_settled=count_acks(tracker))
    tune_gc()  # as `regionstream consume` does
    stdin = await stdin_lines()
    emit("ready", pid=os.getpid(), layout=layout, shards=shards, nodes=nodes)
    if await read_command(stdin) != "go":
        return
    t_go, cpu_go = time.time(), cpu_s()
    logging.getLogger("bench.cluster_runner").info("go")
    task = asyncio.create_task(consumer.run())
    # On stop, workers abandon a blocking read and settle what they hold.
    await run_until_stopped(task, stdin, consumer.stop, args.max_seconds,
                            settings.grace_s + settings.block_ms / MS_PER_S)
    cpu_done = cpu_s()
    emit("done", acked=tracker.count, t_go=t_go, t_first=tracker.t_first,
         t_last=tracker.t_last, cpu_s=cpu_done - cpu_go,
         cpu_s_at_last_ack=(tracker.cpu_at_last - cpu_go
                            if tracker.cpu_at_last is not None else None),
         rss_kib=rss_kib())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = contender_parser("python -m bench.cluster_runner", ROLES)
    p.add_argument("--shard-by", default="region")
    p.add_argument("--prepare", action="store_true",
                   help="create the groups and load the scripts before ready")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # The consumer's own log lines (start, warnings, what it settled) go to the runner's log.
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(run(parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
