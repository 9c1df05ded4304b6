"""The Prometheus files: rules and config pass promtool, and every alert's unit tests pass, with a
firing and a silent case each."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS_DIR = Path(__file__).resolve().parent.parent / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
RULE_TESTS = PROMETHEUS_DIR / "alerts_test.yml"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
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
