"""The Grafana dashboard and the alert rules against real processes and a real Prometheus.

A producer and two consumer processes (``.venv/bin/regionstream ... --metrics-port P``) run
against the session's redis-server; poison entries are XADDed and one consumer process is
SIGKILLed; a real Prometheus scrapes them every second and loads prometheus/alerts.yml. Then
EVERY PromQL expression of the dashboard, evaluated through Prometheus's HTTP API, must return at
least one series, and every metric the dashboard and the alerts name must exist."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from harness import wait
from shared.keys import Keys
from shared.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "regionstream.json"
PROMETHEUS_DIR = ROOT / "prometheus"
RULES = PROMETHEUS_DIR / "alerts.yml"
SCRAPE_S = 1
# Grafana's $__rate_interval for a 1 s scrape is about 4 scrapes; a little wider here, so a
# rate() over the first seconds of the run already has two samples.
RATE_WINDOW = "10s"
START_TIMEOUT_S = 15.0
SERIES_TIMEOUT_S = 30.0
POLL_S = 0.25
STOP_TIMEOUT_S = 10.0
POISON = (
    {b"region": b"europe", b"schema": b"1", b"payload": b"{not json"},  # undecodable
    {b"region": b"mars", b"schema": b"999", b"payload": b"{}"},  # unsupported schema
    {b"region": b"latam"},  # no payload at all
)
# Read from Redis, identical in every process (the refresh timestamp and errors are per process).
GROUP_GAUGE = re.compile(
    r"regionstream_(group_(?!last_refresh|refresh_errors)\w+|stream_length|dlq_length)\b")
METRIC_NAME = re.compile(r"\b(?:regionstream[_:][A-Za-z0-9_:]*|up)\b(?!\s*\()")


# ---- the dashboard as data ----------------------------------------------------------------

def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in panels(dash) for t in p.get("targets", [])]


def variable_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """Grafana's ``label_values(selector, label)`` as the PromQL it stands for (the
    ``$datasource`` variable lists data sources, not series)."""
    out = []
    for v in dash["templating"]["list"]:
        if v["type"] == "datasource":
            continue
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["definition"])
        assert m, v["definition"]
        out.append((f"${v['name']}", f"group by ({m.group(2)}) ({m.group(1)})"))
    return out


def concrete(expr: str) -> str:
    """The expression as Grafana sends it with every variable at "All"."""
    return (expr.replace("$__rate_interval", RATE_WINDOW)
            .replace("$job", ".*").replace("$instance", ".*").replace("$shard", ".*"))


def metric_names(text: str) -> set[str]:
    return {m for m in METRIC_NAME.findall(text) if not m.endswith(":")}


# ---- static checks (the dashboard's import shape: tests/test_dashboard.py) ------------------

def test_dashboard_covers_the_issue() -> None:
    text = " ".join(f"{title} {expr}" for title, expr in queries(dashboard())).lower()
    for needle in ("by (outcome)", "by (region)", "histogram_quantile(0.5,",
                   "histogram_quantile(0.95,", "histogram_quantile(0.99,", "group_lag",
                   "group_pending", "oldest_pending_age", "dlq_length", 'outcome="dead_lettered"',
                   "reclaimed", "failures_total", "redis_roundtrip", "producer_last_success",
                   "produce_cycle_seconds", "published_total"):
        assert needle in text, needle


def test_group_gauges_are_max_aggregated_never_summed() -> None:
    """Every process exports the same group gauges: a sum would count them once per process.
    Each gauge sits directly under a max by its series' labels (shard included); a deployment
    total is a sum only over that max."""
    for title, expr in queries(dashboard()):
        for m in GROUP_GAUGE.finditer(expr):
            assert re.search(r"max by \((stream, group|stream)(, shard)?\) \($",
                             expr[:m.start()]), (title, expr)
    for title, expr in queries(dashboard()):
        if "_total" in expr:
            assert "$job" in expr and "$instance" in expr, title


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    """promtool parses rule files, and YAML is a superset of JSON: one recording rule per
    expression checks them all."""
    exprs = [concrete(e) for _, e in [*queries(dashboard()), *variable_queries(dashboard())]]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard_rules.json"
    path.write_text(json.dumps(rules))
    done = subprocess.run([binary("promtool"), "check", "rules", str(path)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# ---- processes -----------------------------------------------------------------------------

def binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (make test installs prometheus)", pytrace=False)
    return found


def regionstream_binary() -> str:
    beside = Path(sys.executable).with_name("regionstream")
    return str(beside) if beside.exists() else binary("regionstream")


def wait_for(predicate: Callable[[], bool], within: float, what: str) -> None:
    wait.until(wait.holds(predicate, "not yet"), within, what, poll_s=POLL_S)


def http_get(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body: bytes = resp.read()
            return body
    except OSError:
        return None


@dataclass
class Proc:
    name: str
    port: int
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> str:
        return (http_get(f"http://{self.target}/metrics") or b"").decode()

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class Deployment:
    redis_url: str
    keys: Keys
    tmp: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> Proc:
        port = free_port()
        log = self.tmp / f"{name}.log"
        k = self.keys
        cmd = [regionstream_binary(), *args, "--redis-url", self.redis_url, "--stream", k.stream,
               "--group", k.group, "--prefix", k.prefix, "--metrics-port", str(port)]
        with log.open("wb") as out:
            popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={**os.environ})
        proc = self.procs[name] = Proc(name, port, popen, log)
        wait_for(lambda: popen.poll() is not None or bool(proc.metrics()), START_TIMEOUT_S,
                 f"{name}'s /metrics")
        assert popen.poll() is None, f"{name} exited: {log.read_text()}"
        return proc


@pytest.fixture(scope="module")
def deployment(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    tag = uuid.uuid4().hex[:12]
    keys = Keys(prefix=f"test:{tag}", stream=f"test:{tag}:snapshots", group=f"g-{tag}")
    dep = Deployment(redis_url, keys, tmp_path_factory.mktemp("deployment"))
    try:
        dep.start("producer", "produce", "--interval", str(SCRAPE_S))
        for name in ("consumer-a", "consumer-b"):
            dep.start(name, "consume", "--workers", "2", "--block-ms", "200", "--grace", "2",
                      "--name", name)
        yield dep
    finally:
        for proc in dep.procs.values():
            proc.stop()
        client = redis.Redis.from_url(redis_url)
        doomed = [*client.scan_iter(match=f"{keys.prefix}:*", count=1000), keys.stream,
                  keys.dlq]
        client.delete(*doomed)
        client.close()


def group_gauges_read(metrics_text: str) -> bool:
    return any(line.startswith("regionstream_group_consumers{") and not line.endswith("NaN")
               for line in metrics_text.splitlines())


def test_promtool_check_metrics_on_real_scrapes(deployment: Deployment) -> None:
    promtool = binary("promtool")
    for name in ("producer", "consumer-a"):
        proc = deployment.procs[name]
        # After the first read of the group gauges (NaN before), so the scrape is complete.
        wait_for(lambda p=proc: group_gauges_read(p.metrics()),  # type: ignore[misc]
                 START_TIMEOUT_S, f"{name}'s group gauges")
        text = proc.metrics()
        done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True, check=False)
        assert done.returncode == 0 and not done.stdout.strip(), (name, done.stdout,
                                                                   done.stderr)
        assert "regionstream_build_info{" in text
        assert "regionstream_group_lag{" in text and "regionstream_dlq_length{" in text
        assert "_created" not in text  # prometheus-client's, off: they doubled the series
    # One stream (--shard-by none on a single server): failures of shard "all" only, made as
    # the workers start.
    consumer = deployment.procs["consumer-a"]
    wait_for(lambda: "regionstream_failures_total{" in consumer.metrics(), START_TIMEOUT_S,
             "the consumer's workers to start")
    shards = set(re.findall(r'^regionstream_failures_total\{[^}]*shard="([^"]+)"',
                            consumer.metrics(), re.MULTILINE))
    assert shards == {"all"}, shards
    assert "regionstream_producer_interval_seconds 1.0" in deployment.procs["producer"].metrics()


# ---- a real Prometheus -----------------------------------------------------------------------

@dataclass
class Prometheus:
    url: str

    def query(self, expr: str) -> list[dict[str, Any]]:
        body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        if body is None:
            return []
        reply = json.loads(body)
        assert reply["status"] == "success", (expr, reply)
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def has(self, expr: str) -> bool:
        return bool(self.query(expr))


def shipped_config(into: Path, producer: list[str], consumers: list[list[str]]) -> Path:
    """prometheus/prometheus.yml and its rules, copied to ``into`` with the test's scrape and
    evaluation interval, and its file-discovered targets written as the config's comments say
    to for N consumers: here one file per consumer process."""
    text, n = re.subn(r"^(\s*(?:scrape|evaluation)_interval:\s*)\S+$",
                      rf"\g<1>{SCRAPE_S}s", (PROMETHEUS_DIR / "prometheus.yml").read_text(),
                      flags=re.MULTILINE)
    assert n == 2, "prometheus.yml: no global scrape_interval and evaluation_interval"
    cfg = into / "prometheus.yml"
    cfg.write_text(text)
    shutil.copy(RULES, into / RULES.name)
    (into / "targets").mkdir()
    (into / "targets" / "producer.yml").write_text(json.dumps([{"targets": producer}]))
    for i, group in enumerate(consumers, 1):
        (into / "targets" / f"consumer-{i}.yml").write_text(json.dumps([{"targets": group}]))
    return cfg


@pytest.fixture
def prometheus(deployment: Deployment, tmp_path: Path) -> Iterator[Prometheus]:
    """A real Prometheus on the shipped config: its rules, its jobs, its file-based discovery."""
    procs = deployment.procs
    cfg = shipped_config(tmp_path, [procs["producer"].target],
                         [[procs[name].target] for name in ("consumer-a", "consumer-b")])
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        popen = subprocess.Popen(
            [binary("prometheus"), f"--config.file={cfg}",
             f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: popen.poll() is not None or http_get(f"{prom.url}/-/ready") is not None,
                 START_TIMEOUT_S, "Prometheus to be ready")
        assert popen.poll() is None, (tmp_path / "prometheus.log").read_text()
        yield prom
    finally:
        popen.terminate()
        try:
            popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()


def add_poison(dep: Deployment) -> None:
    client = redis.Redis.from_url(dep.redis_url)
    try:
        for fields in POISON:
            client.xadd(dep.keys.stream, fields)  # type: ignore[arg-type]
    finally:
        client.close()


def missing_series(prom: Prometheus, exprs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(title, e) for title, e in exprs if not prom.has(concrete(e))]


def test_every_dashboard_query_returns_series(deployment: Deployment,
                                              prometheus: Prometheus) -> None:
    victim = deployment.procs["consumer-b"]
    sel = f'instance="{victim.target}"'
    wait_for(lambda: prometheus.has(f"sum(regionstream_messages_total{{{sel}}}) > 0"),
             SERIES_TIMEOUT_S,
             "the consumer to be killed to have settled entries, as Prometheus saw it")
    # Every process found through the shipped config's targets files, one file per consumer.
    wait_for(lambda: prometheus.has('count(up{job="regionstream-consumer"} == 1) == 2'
                                    ' and on() count(up{job="regionstream-producer"} == 1) == 1'),
             SERIES_TIMEOUT_S, "every process to be discovered and scraped")
    victim.popen.send_signal(signal.SIGKILL)
    victim.popen.wait()
    # After the kill: poison the killed process held would stay pending (nothing reclaims it
    # within this test's time), and the test wants it dead-lettered by the survivor.
    add_poison(deployment)
    wait_for(lambda: prometheus.has(f"up{{{sel}}} == 0"),
             SERIES_TIMEOUT_S, "Prometheus to see the killed consumer down")
    wait_for(lambda: prometheus.has(
        f'sum(regionstream_messages_total{{outcome="dead_lettered"}}) >= {len(POISON)}'
        f' and on() max(regionstream_dlq_length) >= {len(POISON)}'),
             SERIES_TIMEOUT_S, "the poison entries to be dead-lettered and scraped")

    dash = dashboard()
    exprs = [*queries(dash), *variable_queries(dash)]
    try:
        wait_for(lambda: not missing_series(prometheus, exprs), SERIES_TIMEOUT_S,
                 "every dashboard query to return a series")
    except AssertionError:
        pytest.fail(f"queries without series: {missing_series(prometheus, exprs)}")

    rules = "\n".join(ln for ln in RULES.read_text().splitlines()
                      if not ln.lstrip().startswith("#"))
    names = metric_names(" ".join(e for _, e in exprs)) | metric_names(rules)
    absent = [n for n in sorted(names) if not prometheus.has(f"count({n})")]
    assert not absent, f"metrics named by the dashboard or the alerts but not scraped: {absent}"
    # The survivors still report the group, with the killed process's consumers still known.
    assert prometheus.has("max by (stream, group) (regionstream_group_consumers) >= 4")
