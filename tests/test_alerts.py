"""The Prometheus files: rules and config pass promtool, and every alert's unit tests pass, with a
firing and a silent case each; the group gauges are aggregated and alerted on per shard."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
TARGETS = PROMETHEUS_DIR / "targets"
REQUIRED_ALERTS = {"RegionstreamLagGrowing", "RegionstreamOldestPendingTooOld",
                   "RegionstreamDeadLettersGrowing", "RegionstreamErrorRate",
                   "RegionstreamNoActiveConsumers", "RegionstreamProducerStalled"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed (make test installs prometheus)", pytrace=False)
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False,
                          cwd=PROMETHEUS_DIR)


def alert_names() -> set[str]:
    return set(re.findall(r"^\s*- alert:\s*(\S+)", RULES.read_text(), re.MULTILINE))


def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_check_config() -> None:
    done = promtool("check", "config", str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr


def targets(path: Path) -> list[str]:
    """The host:port targets of a file-based discovery file (its ``- targets: [...]`` lines)."""
    lines = [ln for ln in path.read_text().splitlines() if not ln.lstrip().startswith("#")]
    return [t for ln in lines for group in re.findall(r"^- targets:\s*\[(.*)\]\s*$", ln)
            for t in re.findall(r'"([^"]+)"', group)]


def test_targets_come_from_files_one_consumer_by_default() -> None:
    """No port of a process that may not run is hard-coded in the config: each job reads its
    targets from files (promtool check config above parses them), and the shipped files list
    one producer and one consumer, on the documented ports."""
    config = CONFIG.read_text()
    assert "static_configs" not in config
    jobs = re.findall(r"- job_name:\s*(\S+)\s*\n(?:\s*#.*\n)*\s*file_sd_configs:\s*\n"
                      r"\s*- files:\s*\[\s*\"([^\"]+)\"\s*\]", config)
    assert dict(jobs) == {"regionstream-producer": "targets/producer.yml",
                          "regionstream-consumer": "targets/consumer*.yml"}, jobs
    found = {pattern: sorted(PROMETHEUS_DIR.glob(pattern)) for _, pattern in jobs}
    assert [targets(f) for f in found["targets/producer.yml"]] == [["127.0.0.1:9101"]]
    assert [targets(f) for f in found["targets/consumer*.yml"]] == [["127.0.0.1:9102"]]
    assert sorted(TARGETS.iterdir()) == sorted(f for fs in found.values() for f in fs)


def test_promtool_test_rules() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_issue_alerts_exist() -> None:
    assert alert_names() >= REQUIRED_ALERTS


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    # Each case is "- alertname: X" followed by its "exp_alerts:" line: "[]" is silent.
    cases = re.findall(r"- alertname:\s*(\S+)\s*\n\s*eval_time:\s*\S+\s*\n\s*exp_alerts:(.*)",
                       RULE_TESTS.read_text())
    firing = {name for name, rest in cases if not rest.strip().startswith("[]")}
    silent = {name for name, rest in cases if rest.strip().startswith("[]")}
    assert alert_names() <= firing, alert_names() - firing
    assert alert_names() <= silent, alert_names() - silent


# ---- sharding: the group alerts are evaluated per shard ----------------------------------

# Alerts on one shard's stream, group or DLQ (--shard-by region: <stream>:{<region>}, shard
# "all" with --shard-by none): each must fire for the shard in trouble only.
PER_SHARD_ALERTS = {"RegionstreamLagGrowing", "RegionstreamOldestPendingTooOld",
                    "RegionstreamDeadLettersGrowing", "RegionstreamNoActiveConsumers"}
# Read from Redis, identical in every process: max-aggregated per shard, never summed.
GROUP_GAUGE = re.compile(
    r"\bregionstream_(?:group_(?!last_refresh|refresh_errors)\w+|stream_length|dlq_length)\b")
PER_SHARD_MAX = re.compile(r"max by \((?:stream, group, shard|stream, shard)\) \($")


@dataclass
class Case:
    alert: str
    firing_shards: list[str]  # the shard label of each expected alert ("" : none)
    annotations: str
    input_shards: set[str]  # the shards of the test's input series


def rule_text() -> str:
    return "\n".join(ln for ln in RULES.read_text().splitlines()
                     if not ln.lstrip().startswith("#"))


def recording_rules() -> dict[str, str]:
    return dict(re.findall(r"- record:\s*(\S+)\s*\n\s*expr:\s*(.+)", rule_text()))


def cases() -> list[Case]:
    out = []
    for test in re.split(r"\n  - interval:", RULE_TESTS.read_text())[1:]:
        inputs, *blocks = re.split(r"\n\s*- alertname:\s*", test)
        input_shards = set(re.findall(r'\bshard="([^"]+)"', inputs))
        for block in blocks:
            alert = block.split()[0]
            labels = re.findall(r"exp_labels:\s*\{(.*)\}", block)
            shards = [(re.findall(r'\bshard:\s*"?([\w-]+)"?', ls) or [""])[0] for ls in labels]
            notes = " ".join(re.findall(r"^\s*(?:summary|description):\s*(.+)$", block,
                                        re.MULTILINE))
            out.append(Case(alert, shards, notes, input_shards))
    return out


def test_the_per_shard_alerts_exist() -> None:
    assert alert_names() >= PER_SHARD_ALERTS


def test_group_gauges_are_max_aggregated_per_shard() -> None:
    """Every raw group gauge in the rules sits directly under a max by (..., shard): no rule
    sums the per-process copies, and no rule drops the shard before the max."""
    text = rule_text()
    found = list(GROUP_GAUGE.finditer(text))
    assert found
    for m in found:
        assert PER_SHARD_MAX.search(text[:m.start()]), text[max(0, m.start() - 80):m.end()]


def test_deployment_totals_aggregate_the_per_shard_maxima() -> None:
    rules = recording_rules()
    per_shard = {name for name, expr in rules.items() if GROUP_GAUGE.search(expr)}
    totals = {name: expr for name, expr in rules.items() if name.endswith("_shards")}
    assert {"regionstream:group_lag:sum_shards", "regionstream:dlq_length:sum_shards"} <= set(
        totals)
    for name, expr in totals.items():
        m = re.fullmatch(r"(?:sum|max) by \((?:stream, group|stream)\) \((\S+)\)", expr)
        assert m and m.group(1) in per_shard, (name, expr)


def test_per_shard_alerts_fire_for_the_shard_in_both_layouts() -> None:
    """Each per-shard alert fires with shard "all" (--shard-by none) and for a region shard,
    and at least once for one shard only while the test's input has other, healthy shards."""
    for alert in PER_SHARD_ALERTS:
        firing = [c for c in cases() if c.alert == alert and c.firing_shards]
        shards = {s for c in firing for s in c.firing_shards}
        assert "all" in shards, alert
        assert shards - {"all", ""}, alert
        assert any(set(c.firing_shards) < c.input_shards and "all" not in c.firing_shards
                   for c in firing), f"{alert}: no case with a healthy shard beside"


def test_per_shard_annotations_name_the_real_key() -> None:
    """Shard "all" is <stream> (DLQ <stream>:dlq); a region shard is <stream>:{<region>} (DLQ
    <stream>:{<region>}:dlq), as the rendered annotations the promtool tests expect."""
    for c in cases():
        if c.alert not in PER_SHARD_ALERTS or len(c.firing_shards) != 1:
            continue
        shard = c.firing_shards[0]
        if shard == "all":
            assert "{" not in c.annotations and f"shard {shard}" in c.annotations, c
        elif shard:
            assert f":{{{shard}}}" in c.annotations and f"shard {shard}" in c.annotations, c
        if shard and c.alert == "RegionstreamDeadLettersGrowing":
            key = ":dlq" if shard == "all" else f":{{{shard}}}:dlq"
            assert f"{key} - +" in c.annotations, c
