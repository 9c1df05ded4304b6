"""Smoke run of the benchmark harness: ``python -m bench --quick`` end to end, in a subprocess.

Asserts that every scenario ran and produced sane, non-zero figures, plots and a summary;
nothing about speed (speed targets live in ``make bench``, never in unit tests)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shared.servers import redis_server_binary

pytestmark = pytest.mark.slow  # one `bench --quick` run, ~55 s

REPO_ROOT = Path(__file__).resolve().parent.parent
QUICK_RUN_TIMEOUT_S = 240  # ~65 s alone; the machine is shared with other test runs
SCENARIOS = ("seed_cycle", "drain", "latency", "scaling", "cluster_seed_cycle", "cluster_drain")
PHASES = ("cold", "warm")  # the drain's: on a fresh server, then again on the same one
PLOTS = ("seed_cycle.png", "throughput.png", "latency_cdf.png", "scaling.png",
         "cluster_seed_cycle.png", "cluster_drain.png")


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    if redis_server_binary() is None:
        pytest.fail("redis-server is not installed (make test installs it)", pytrace=False)
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=QUICK_RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads((out / "results.json").read_text()), out


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_every_scenario_reports_figures_with_command_and_ratio(
        quick_run: tuple[dict[str, Any], Path]) -> None:
    doc, _ = quick_run
    assert doc["quick"] is True
    assert doc["machine"]["cpus_available"] >= 1
    for name in SCENARIOS:
        scenario = doc["scenarios"][name]
        assert scenario["command"].endswith(f"--only {name}")
        assert positive(scenario["ratio_vs_baseline"]), name
        assert scenario["targets"], name


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_seed_cycle_and_drain_figures_are_sane(quick_run: tuple[dict[str, Any], Path]) -> None:
    doc, _ = quick_run
    seed = doc["scenarios"]["seed_cycle"]
    for role in ("consumer", "baseline"):
        assert positive(seed[role]["first_id_to_last_persisted_ms"])
        assert len(seed[role]["xack_times_rtt"]) >= 1
        assert seed[role]["entry_id_spread_ms"] >= 0
    drain = doc["scenarios"]["drain"]
    for role in ("consumer", "batched", "ceiling", "unchecked", "baseline"):
        # the baseline's warm drain is left out when its cold one hit the cap
        for phase in ("cold",) if role == "baseline" else PHASES:
            figures = drain[role][phase]
            assert figures["drained"] and figures["messages"] == drain["messages"] > 0, role
            for figure in ("msgs_per_s", "cpu_us_per_msg", "redis_cpu_us_per_msg"):
                assert positive(figures[figure]), (role, phase, figure)
    for phase in PHASES:
        assert positive(drain["floor"][phase]["cpu_us_per_msg"]), phase
        assert positive(drain["floor"][phase]["redis_cpu_us_per_msg"]), phase
        assert drain["vs_batched"][phase] and all(
            positive(v) for v in drain["vs_batched"][phase].values()), phase
        for side in ("consumer_cpu", "redis_cpu"):
            target = drain["targets"][f"{side}_{phase}"]
            assert positive(target["value"]) and isinstance(target["met"], bool), (side, phase)
    assert positive(drain["fraction_of_ceiling"])


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_latency_and_scaling_figures_are_sane(quick_run: tuple[dict[str, Any], Path]) -> None:
    doc, _ = quick_run
    latency = doc["scenarios"]["latency"]
    assert latency["rates"]
    for figures in latency["rates"].values():
        consumer = figures["consumer"]
        assert consumer["samples"] > 0 and consumer["cdf"]
        assert positive(consumer["p50_ms"]) and positive(consumer["p99_ms"])
        assert consumer["p50_ms"] <= consumer["p99_ms"]
    scaling = doc["scenarios"]["scaling"]
    assert [r["processes"] for r in scaling["runs"]] == [1, 2, 4]
    assert all(positive(r["msgs_per_s"]) for r in scaling["runs"])
    memory = scaling["memory"]
    assert positive(memory["rss_mib_at_checkpoint"]) and positive(memory["rss_mib_at_end"])


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_cluster_figures_are_sane(quick_run: tuple[dict[str, Any], Path]) -> None:
    doc, _ = quick_run
    seed = doc["scenarios"]["cluster_seed_cycle"]
    for where in ("cluster", "single_server"):
        assert positive(seed[where]["first_id_to_last_persisted_ms"]), where
        assert len(seed[where]["xack_times_rtt"]) == 8, where  # one XACK per region shard
        assert seed[where]["entry_id_spread_ms"] >= 0, where
    assert len(seed["cluster"]["shards_per_node"]) == seed["masters"] == 3
    assert sorted(r for node in seed["cluster"]["shards_per_node"] for r in node) == sorted(
        seed["single_server"]["shards_per_node"][0])
    drain = doc["scenarios"]["cluster_drain"]
    assert drain["cpu_count"] >= 1 and "not a scaling figure" in drain["note"].lower()
    assert [r["masters"] for r in drain["runs"]] == [1, 2, 3]
    for run in [*drain["runs"], drain["single_server"]]:
        assert run["drained"] and run["messages"] == drain["messages"] > 0
        assert positive(run["msgs_per_s"]) and positive(run["consumer_cpu_us_per_msg"])
        assert len(run["nodes"]) == run.get("masters", 1)
        assert sum(n["messages"] for n in run["nodes"]) == run["messages"]
        assert sum(len(n["shards"]) for n in run["nodes"]) == 8
        assert math.isclose(sum(n["share_of_redis_cpu"] for n in run["nodes"]), 1.0,
                            abs_tol=0.01)
        for node in run["nodes"]:
            assert positive(node["redis_cpu_us_per_msg"]), node
            assert positive(node["projected_msgs_per_s_per_master_core"]), node
        assert positive(run["projected"]["redis_bound_msgs_per_s"])
        assert positive(run["projected"]["msgs_per_s_per_consumer_process"])


@pytest.mark.timeout(QUICK_RUN_TIMEOUT_S + 30)
def test_plots_and_summary_are_written(quick_run: tuple[dict[str, Any], Path]) -> None:
    _, out = quick_run
    for png in PLOTS:
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    summary = (out / "summary.md").read_text()
    assert "| scenario |" in summary and "vs baseline" in summary


def test_the_in_process_drain_measures_the_production_path() -> None:
    """``python -m bench.inproc_drain N`` (the quick A/B of two checkouts) drains what it
    prefilled and reports both CPU figures."""
    done = subprocess.run([sys.executable, "-m", "bench.inproc_drain", "500"],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    fields = dict(part.split("=") for part in done.stdout.split())
    assert fields["persisted"] == "500"
    assert float(fields["consumer_cpu_us_per_msg"]) > 0 < float(fields["redis_cpu_us_per_msg"])
