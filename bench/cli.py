"""``python -m bench``: run the scenarios, write JSON + PNG plots + a markdown summary."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import cluster_drain, cluster_seed_cycle, drain, latency, scaling, seed_cycle
from bench.config import FULL, QUICK, Context
from bench.display import make_display

Scenario = Callable[[Context], Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    seed_cycle.NAME: seed_cycle.run,
    drain.NAME: drain.run,
    latency.NAME: latency.run,
    scaling.NAME: scaling.run,
    cluster_seed_cycle.NAME: cluster_seed_cycle.run,
    cluster_drain.NAME: cluster_drain.run,
}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS_FILE = "results.json"
EXIT_FAILED = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="small sizes, under a minute (the smoke run inside make test)")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default bench/results, or bench/results/quick)")
    p.add_argument("--only", action="append", choices=list(SCENARIOS), default=None,
                   help="run only this scenario (repeatable)")
    p.add_argument("--profile", action="store_true",
                   help="also profile the consumer during the drain scenario (pyinstrument)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True,
                                   text=True, check=False).stdout.strip()
    return {
        "cpus": os.cpu_count(),
        "cpus_available": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "redis_server": redis_version,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "note": "shared, noisy 2-core machine: compare ratios measured in the same run, "
                "not absolute figures",
    }


async def run_all(ctx: Context, names: list[str]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        ctx.display.line(f"scenario {name}")
        started = time.monotonic()
        results[name] = await SCENARIOS[name](ctx)
        results[name]["elapsed_s"] = round(time.monotonic() - started, 1)
        ctx.display.line(f"scenario {name}: done in {results[name]['elapsed_s']}s")
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(QUICK if args.quick else FULL, out, make_display(), args.quick,
                  profile=args.profile)
    names = args.only or list(SCENARIOS)
    started = time.monotonic()
    doc: dict[str, Any] = {
        "version": 1,
        "quick": args.quick,
        "command": shlex.join([".venv/bin/python", "-m", "bench",
                               *(argv if argv is not None else sys.argv[1:])]),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "sizes": ctx.sizes.__dict__,
    }
    doc["scenarios"] = asyncio.run(run_all(ctx, names))
    doc["elapsed_s"] = round(time.monotonic() - started, 1)
    path = out / RESULTS_FILE
    path.write_text(json.dumps(doc, indent=2) + "\n")
    ctx.display.line(f"wrote {path}")
    if not args.no_plots:
        from bench import plots, summary

        for png in plots.write_all(doc, out):
            ctx.display.line(f"wrote {png}")
        md = summary.write(doc, out)
        ctx.display.line(f"wrote {md}")
    return 0
