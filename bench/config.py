"""Sizes of a full run and of the ``--quick`` smoke run, and what every scenario is handed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.display import Display
from bench.proxy import DEFAULT_DELAY_S
from shared.settings import BATCH, WORKERS, Settings


@dataclass(frozen=True)
class Sizes:
    delay_s: float = DEFAULT_DELAY_S  # proxy delay each way (scenario 1)
    seed_repeats: int = 3  # cycles per contender in scenario 1 (median reported)
    # each role drains its own copy, cold then warm, on a fresh server (the 60,000)
    drain_messages: int = 60_000
    # a baseline drain stops here if it has not drained (60,000 take it 35-40 s here): cold and
    # warm, the baseline is most of the drain scenario's time
    baseline_cap_s: float = 75.0
    latency_rates: tuple[int, ...] = (1_000, 5_000)
    latency_duration_s: float = 10.0
    latency_grace_s: float = 5.0  # after the producer stops, time to catch up
    scaling_messages: int = 100_000
    scaling_processes: tuple[int, ...] = (1, 2, 4)
    scaling_baseline_cap_s: float = 20.0
    memory_checkpoint: int = 100_000
    memory_messages: int = 1_000_000
    memory_budget_s: float = 180.0  # the 1M run is cut here and says so
    memory_samples: int = 20  # RSS samples along the memory run
    cluster_drain_messages: int = 50_000  # per cluster size (and the single-server baseline)
    cluster_masters: tuple[int, ...] = (1, 2, 3)  # cluster sizes drained (no replicas)


FULL = Sizes()
QUICK = Sizes(
    seed_repeats=1, drain_messages=2_000, baseline_cap_s=10.0,
    latency_duration_s=1.5, latency_grace_s=2.0, scaling_messages=2_000,
    scaling_baseline_cap_s=2.0, memory_checkpoint=1_000, memory_messages=5_000,
    memory_budget_s=8.0, memory_samples=5, cluster_drain_messages=2_000,
)

# Consumer shape used everywhere unless a scenario says otherwise: the shipped defaults.
CONSUMER_WORKERS = WORKERS
CONSUMER_BATCH = BATCH


@dataclass
class Context:
    sizes: Sizes
    out: Path
    display: Display
    quick: bool
    profile: bool = False
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def logs(self) -> Path:
        return self.out / "logs"

    def command(self, scenario: str) -> str:
        """The command that reproduces one scenario alone."""
        quick = " --quick" if self.quick else ""
        return f".venv/bin/python -m bench{quick} --only {scenario}"

    def settings(self, url: str, **flags: object) -> Settings:
        return Settings.load({"redis_url": url, **flags}, env={})
