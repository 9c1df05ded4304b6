"""The Grafana dashboard as code: ``python grafana/dashboard.py`` writes
grafana/dashboards/regionstream.json from the panels below; ``--check`` only says whether the
committed file is this script's output (tests/test_dashboard.py checks it in the suite, and
tests/test_prometheus.py runs every query on a real Prometheus). Change the dashboard here,
then regenerate: the JSON is an artefact.

Plain Python and the standard library: every panel is a title, a description, a unit and its
queries; the layout (rows of panels, 24 columns wide), the datasource references and Grafana's
boilerplate are made below, once.

Importable anywhere: every panel, query and variable uses the ``$datasource`` variable (type
prometheus). Imported through Grafana's UI, ``__inputs`` asks for a Prometheus data source
(DS_PROMETHEUS) and the import puts its uid in the variable's current value; provisioned from
grafana/provisioning (where ``${DS_PROMETHEUS}`` is not replaced), the variable falls back to
the data source named in its current text, the provisioned "Prometheus (regionstream)".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards" / "regionstream.json"
UID = "regionstream-overview"
INPUT = "DS_PROMETHEUS"
# grafana/provisioning/datasources/regionstream.yaml's name: a provisioned dashboard selects it.
PROVISIONED_DATASOURCE = "Prometheus (regionstream)"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # Grafana 10.4 / 11
GRAFANA_MIN = "10.4.0"
WIDTH = 24

# Selectors. A process's own counters and histograms follow $job and $instance (sum them); the
# group gauges, identical in every process, follow $job and $shard (take the max per shard).
PROC = 'job=~"$job", instance=~"$instance"'
SHARD = 'job=~"$job", shard=~"$shard"'

Json = dict[str, Any]
Target = tuple[str, str]  # (PromQL, legend)


def rate(metric: str, match: str = "", window: str = "$__rate_interval") -> str:
    """Per-second rate of a per-process counter of the selected processes (``match``: more
    label matchers)."""
    return f"rate(regionstream_{metric}{{{PROC}{', ' + match if match else ''}}}[{window}])"


def summed(metric: str, by: str = "", match: str = "", window: str = "$__rate_interval"
           ) -> str:
    """A counter's rate summed over the selected processes (``by``: kept labels)."""
    per_process = rate(metric, match, window)
    return f"sum by ({by}) ({per_process})" if by else f"sum({per_process})"


def quantile(q: float, histogram: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({rate(histogram + '_bucket')}))"


def shard_max(gauge: str, by: str = "stream, group, shard") -> str:
    """A group gauge per shard: the max over the processes (they all export the same value)."""
    return f"max by ({by}) (regionstream_{gauge}{{{SHARD}}})"


def shard_sum(gauge: str, by: str = "stream, group") -> str:
    """A deployment's total of a group gauge: each shard once, summed over the shards."""
    per_shard = "stream, group, shard" if "group" in by else "stream, shard"
    return f"sum by ({by}) ({shard_max(gauge, per_shard)})"


def stat(id_: int, title: str, description: str, target: Target, unit: str = "short",
         alarm: bool = False) -> Json:
    """A single figure; ``alarm``: green at 0, a red background from 1."""
    defaults: Json = {"unit": unit}
    if alarm:
        defaults |= {"thresholds": {"mode": "absolute", "steps": [
            {"color": "green", "value": None}, {"color": "red", "value": 1}]},
            "color": {"mode": "thresholds"}}
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "background" if alarm else "value", "graphMode": "none",
               "textMode": "auto"}
    return panel("stat", id_, title, description, (4, 4), defaults, options, [target])


def graph(id_: int, title: str, description: str, unit: str, *targets: Target,
          width: int = 8) -> Json:
    options = {"legend": {"displayMode": "table", "placement": "bottom",
                          "calcs": ["lastNotNull", "max"]},
               "tooltip": {"mode": "multi", "sort": "desc"}}
    return panel("timeseries", id_, title, description, (width, 8), {"unit": unit}, options,
                 list(targets))


def panel(kind: str, id_: int, title: str, description: str, size: tuple[int, int],
          defaults: Json, options: Json, targets: list[Target]) -> Json:
    w, h = size
    return {"type": kind, "id": id_, "title": title, "description": description,
            "datasource": dict(DATASOURCE), "gridPos": {"h": h, "w": w, "x": 0, "y": 0},
            "fieldConfig": {"defaults": defaults, "overrides": []}, "options": options,
            "targets": [{"datasource": dict(DATASOURCE), "refId": chr(ord("A") + i), "expr": expr,
                         "legendFormat": legend, "range": True, "instant": False,
                         "editorMode": "code"} for i, (expr, legend) in enumerate(targets)]}


# The panels, by row: (row id, row title, panels). Panel ids are kept stable (links name them).
ROWS: list[tuple[int, str, list[Json]]] = [
    (1, "Overview", [
        stat(2, "Targets up", "Scraped regionstream processes per job (up == 1).",
             ('sum by (job) (up{job=~"$job"})', "{{job}}")),
        stat(3, "Settled per second", "All entries settled (persisted, duplicate, redelivered, "
             "dead-lettered) summed over processes.",
             (summed("messages_total", match='outcome!="invalid"'), "settled/s"),
             unit="ops"),
        stat(4, "Lag (sum over shards)", "Undelivered entries of the selected shards: the max "
             "over processes of each shard (every process reports the same group), summed "
             "over the shards.", (shard_sum("group_lag"), "{{stream}}/{{group}}")),
        stat(30, "Dead letters (sum over shards)", "Entries on the dead-letter streams of the "
             "selected shards (<stream>:dlq, or <stream>:{<region>}:dlq per region shard), each "
             "shard counted once.", (shard_sum("dlq_length", "stream"), "{{stream}}")),
        stat(31, "Shards without an active consumer", "Selected shards whose group had no "
             "consumer read in the last minute (e.g. left out of every consumer's --shards): "
             "above 0 for 5 minutes fires RegionstreamNoActiveConsumers for each.",
             (f"sum by (stream, group) ({shard_max('group_active_consumers')} < bool 1)",
              "{{stream}}/{{group}}"), alarm=True),
        stat(5, "Build", "Version of each scraped process.",
             (f"count by (version) (regionstream_build_info{{{PROC}}})", "{{version}}")),
    ]),
    (6, "Throughput", [
        graph(7, "Throughput by outcome", "Entries settled per second, summed over every "
              "consumer process. 'invalid' is a subset of 'dead_lettered' (entries dead-lettered "
              "as undecodable or schema-invalid), so do not stack them.", "ops",
              (summed("messages_total", "outcome"), "{{outcome}}")),
        graph(8, "Throughput by region", "Entries settled per second by region (every outcome "
              "except the 'invalid' sub-count); 'unknown' is an entry whose region field is not "
              "a known region.", "ops",
              (summed("messages_total", "region", 'outcome!="invalid"'), "{{region}}")),
        graph(9, "End-to-end latency (XADD to ack)", "From the entry id's millisecond time (set "
              "by Redis at XADD) to the acknowledgement, over every consumer process.", "s",
              *[(quantile(q, "end_to_end_latency_seconds"), f"p{round(q * 100)}")
                for q in (0.5, 0.95, 0.99)]),
    ]),
    (10, "Consumer group by shard (read from Redis; max over processes, per shard)", [
        graph(11, "Lag by shard (undelivered entries)", "Entries not yet delivered to the group, "
              "per shard (max over processes: every process reports the same value). Growing "
              "for 10 minutes on one shard fires RegionstreamLagGrowing for that shard.", "short",
              (shard_max("group_lag"), "{{shard}}")),
        graph(12, "Pending by shard (delivered, not acknowledged)", "Entries delivered to a "
              "consumer of the shard's group but not yet acknowledged.", "short",
              (shard_max("group_pending"), "{{shard}}")),
        graph(13, "Oldest pending age by shard", "Age of each shard's oldest unacknowledged "
              "entry: over 5 minutes fires RegionstreamOldestPendingTooOld for that shard.", "s",
              (shard_max("group_oldest_pending_age_seconds"), "{{shard}}")),
        graph(14, "Consumers by shard", "Consumers known to each shard's group, and those that "
              "read within the last minute (active). A SIGKILLed process leaves "
              "known-but-inactive consumers behind; a shard at 0 active (no consumer serves it) "
              "fires RegionstreamNoActiveConsumers.", "short",
              (shard_max("group_consumers"), "known {{shard}}"),
              (shard_max("group_active_consumers"), "active {{shard}}")),
        graph(15, "Stream length by shard", "Entries on each shard's stream (XLEN of <stream>, or "
              "<stream>:{<region>} per region shard).", "short",
              (shard_max("stream_length", "stream, shard"), "{{shard}}")),
        graph(16, "Group gauge freshness", "Seconds since each process last read the group "
              "gauges from Redis (refreshed every 5 s), and failed reads per second.", "s",
              ("time() - min by (instance) "
               f"(regionstream_group_last_refresh_timestamp_seconds{{{PROC}}})",
               "age {{instance}}"),
              (summed("group_refresh_errors_total", "instance"), "errors/s {{instance}}")),
    ]),
    (32, "Deployment totals (per-shard max, summed over the selected shards)", [
        graph(33, "Lag and pending (sum over shards)", "Undelivered and unacknowledged entries "
              "of the whole deployment: each shard's value (max over processes) summed over the "
              "shards.", "short",
              (shard_sum("group_lag"), "lag {{stream}}/{{group}}"),
              (shard_sum("group_pending"), "pending {{stream}}/{{group}}")),
        graph(34, "Oldest pending age (worst shard)", "The oldest unacknowledged entry over all "
              "selected shards.", "s",
              (shard_max("group_oldest_pending_age_seconds", "stream, group"),
               "{{stream}}/{{group}}")),
        graph(35, "Stream and dead-letter length (sum over shards)", "Entries on all shard "
              "streams and on all dead-letter streams, each shard counted once.", "short",
              (shard_sum("stream_length", "stream"), "stream {{stream}}"),
              (shard_sum("dlq_length", "stream"), "dead letters {{stream}}")),
    ]),
    (17, "Dead letters, reclaims, errors", [
        graph(18, "Dead-letter stream length by shard", "Entries on each shard's dead-letter "
              "stream: <stream>:dlq for shard all (--shard-by none), <stream>:{<region>}:dlq for "
              "a region shard. Any increase fires RegionstreamDeadLettersGrowing for that shard.",
              "short", (shard_max("dlq_length", "stream, shard"), "{{shard}}")),
        graph(19, "Dead-lettered per second", "Entries moved to the dead-letter stream per "
              "second, by region, summed over consumer processes.", "ops",
              (summed("messages_total", "region", 'outcome="dead_lettered"'), "{{region}}")),
        graph(36, "Failures by shard", "Consumer failures per second on each shard, summed over "
              "processes (all kinds; see Errors for the kinds).", "ops",
              (summed("failures_total", "shard", 'shard=~"$shard"'), "{{shard}}")),
        graph(20, "Reclaims and recoveries", "Pending entries reclaimed from idle consumers, "
              "NOGROUP recoveries (group recreated), and pending entries found trimmed from the "
              "stream (should stay 0).", "ops",
              (summed("reclaimed_total"), "reclaimed"),
              (summed("nogroup_recoveries_total"), "nogroup recoveries"),
              (summed("lost_trimmed_total"), "lost (trimmed)"), width=12),
        graph(21, "Errors", "Consumer failures by kind, producer cycles that failed to publish, "
              "and source records rejected, per second.", "ops",
              (summed("failures_total", "kind", 'shard=~"$shard"'), "{{kind}}"),
              (summed("publish_failures_total"), "publish"),
              (summed("source_rejected_total"), "source rejected"), width=12),
    ]),
    (22, "Redis and batches", [
        graph(23, "Redis round trip p99 by operation", "p99 of each Redis round trip (read = "
              "XREADGROUP, settle = one pipeline per batch, group_info = the group gauges' "
              "read).", "s",
              (quantile(0.99, "redis_roundtrip_seconds", "le, operation"), "{{operation}}")),
        graph(24, "Batch processing time", "Time to validate, persist and ack one batch (one "
              "round trip).", "s",
              *[(quantile(q, "batch_processing_seconds"), f"p{round(q * 100)}")
                for q in (0.5, 0.99)]),
        graph(25, "Batch size", "Mean entries per batch read: near the --batch setting means the "
              "consumers are saturated.", "short",
              (f"{summed('batch_size_sum')} / {summed('batch_size_count')}", "mean")),
    ]),
    (26, "Producer", [
        graph(27, "Published per second by region", "Snapshots XADDed per second, by region.",
              "ops", (summed("published_total", "region"), "{{region}}")),
        graph(28, "Producer cycle health", "Seconds since the last successful cycle against the "
              "configured cadence: 'since last success' above 1.5 x cadence fires "
              "RegionstreamProducerStalled.", "s",
              ("time() - max by (instance) "
               f"(regionstream_producer_last_success_timestamp_seconds{{{PROC}}})",
               "since last success {{instance}}"),
              (f"max by (instance) (regionstream_producer_interval_seconds{{{PROC}}})",
               "cadence {{instance}}")),
        graph(29, "Producer cycle duration", "Time to publish one cycle (every region in one "
              "pipelined round trip) and trim.", "s",
              *[(quantile(q, "produce_cycle_seconds"), f"p{round(q * 100)}")
                for q in (0.5, 0.99)]),
    ]),
    (37, "Redis memory", [
        graph(38, "Eviction policy by shard", "1 per shard's Redis node, labelled with its "
              "maxmemory-policy (INFO memory). Anything but noeviction may delete stored "
              "snapshots or the stream itself: regionstream refuses to start on it unless "
              "--allow-eviction; RegionstreamRedisMayEvict fires.", "none",
              (shard_max("redis_maxmemory_policy", "stream, group, shard, policy"),
               "{{shard}}: {{policy}}"), width=6),
        graph(39, "Keys evicted (10 min)", "Keys the shard's Redis node evicted in the last 10 "
              "minutes (INFO stats evicted_keys, the node's: other applications' keys count "
              "too). Any rise may be data lost: RegionstreamRedisEvictedKeys.", "short",
              ("max by (stream, group, shard) "
               f"(delta(regionstream_redis_evicted_keys{{{SHARD}}}[10m]))", "{{shard}}"),
              width=6),
        graph(40, "Writes refused: Redis full", "Persist and dead-letter writes Redis refused "
              "with OOM (maxmemory under noeviction), per second. The entries stay pending and "
              "spend no delivery; RegionstreamRedisFull.", "ops",
              (summed("failures_total", "shard", 'shard=~"$shard", kind="oom"', "5m"),
               "{{shard}}"), width=6),
        graph(41, "Stream ids ahead of the clock", "How far the ids the stream gave the "
              "producer's last publish are ahead of its clock: over a minute, an outside XADD "
              "with a future id broke the stream's time (docs/operations.md); "
              "RegionstreamStreamIdsAhead.", "s",
              (f"max by (instance) (regionstream_stream_ids_ahead_seconds{{{PROC}}})",
               "{{instance}}"), width=6),
    ]),
]


def layout(rows: list[tuple[int, str, list[Json]]]) -> list[Json]:
    """Rows top to bottom, each row's panels left to right, wrapping at the grid's width."""
    out: list[Json] = []
    y = 0
    for row_id, title, members in rows:
        out.append({"type": "row", "id": row_id, "title": title, "collapsed": False,
                    "gridPos": {"h": 1, "w": WIDTH, "x": 0, "y": y}, "panels": []})
        y, x, line_h = y + 1, 0, 0
        for p in members:
            pos = p["gridPos"]
            if x + pos["w"] > WIDTH:
                y, x, line_h = y + line_h, 0, 0
            pos["x"], pos["y"] = x, y
            x, line_h = x + pos["w"], max(line_h, pos["h"])
            out.append(p)
        y += line_h
    return out


def variable(name: str, query: str) -> Json:
    """A multi-value filter with "All" (any value: ``.*``)."""
    return {"name": name, "label": name, "type": "query", "datasource": dict(DATASOURCE),
            "definition": query, "query": {"query": query, "refId": f"{name}-variable"},
            "refresh": 2, "includeAll": True, "multi": True, "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1, "hide": 0, "regex": "", "options": []}


def dashboard() -> Json:
    datasource_variable = {
        "name": "datasource", "label": "Data source", "type": "datasource",
        "query": "prometheus",
        # The UI import replaces ${DS_PROMETHEUS} with the uid picked; provisioning leaves it,
        # and Grafana then selects the data source of that name.
        "current": {"selected": False, "text": PROVISIONED_DATASOURCE, "value": f"${{{INPUT}}}"},
        "refresh": 1, "includeAll": False, "multi": False, "hide": 0, "regex": "",
        "options": []}
    return {
        "__inputs": [{"name": INPUT, "label": "Prometheus", "description":
                      "The Prometheus that scrapes regionstream (prometheus/prometheus.yml)",
                      "type": "datasource", "pluginId": "prometheus",
                      "pluginName": "Prometheus"}],
        "__requires": [
            {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_MIN},
            {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
            {"type": "panel", "id": "stat", "name": "Stat", "version": ""},
            {"type": "panel", "id": "timeseries", "name": "Time series", "version": ""}],
        "id": None, "uid": UID, "title": "regionstream",
        "description": "Snapshots through Redis Streams: flow, lateness, failures. One shard per "
                       "region (--shard-by region: <stream>:{<region>}) or one shard 'all' "
                       "(--shard-by none). Group gauges are max-aggregated per shard (every "
                       "process exports the same value) and summed only over shards; counters "
                       "are summed.",
        "tags": ["regionstream", "redis-streams"], "timezone": "", "editable": True,
        "graphTooltip": 1, "schemaVersion": SCHEMA_VERSION, "version": 1, "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"}, "timepicker": {}, "fiscalYearStartMonth": 0,
        "liveNow": False, "weekStart": "",
        "annotations": {"list": [{
            "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
            "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
            "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [],
        "templating": {"list": [
            datasource_variable,
            variable("job", "label_values(regionstream_build_info, job)"),
            variable("instance", 'label_values(regionstream_build_info{job=~"$job"}, instance)'),
            variable("shard", "label_values(regionstream_group_lag, shard)"),
        ]},
        "panels": layout(ROWS),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if {OUT.name} is not this script's output; write nothing")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
