"""Every Prometheus metric of regionstream, defined against a registry passed in (tests get
their own). Labels are bounded: region and outcome yes, message or snapshot id never. Label sets
are pre-created so every series exists from the first scrape."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from shared.schema import REGIONS

NAMESPACE = "regionstream"
CONSUMER_OUTCOMES = ("persisted", "duplicate", "redelivered", "invalid", "dead_lettered")
FAILURE_KINDS = ("persist", "transient", "nogroup", "noscript", "ack", "other")
REDIS_OPS = ("read", "settle", "claim", "publish", "trim", "group_info")
# Latency buckets from 1 ms (loopback batch) to 6 h (upstream's cadence: a backlog replayed).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0, 1800.0, 21600.0)
ROUNDTRIP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


def _labels(regions: Iterable[str]) -> tuple[str, ...]:
    return (*regions, "unknown")


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, regions: Iterable[str] = REGIONS) -> None:
        ns = NAMESPACE
        self.messages = Counter("messages", "Stream entries settled, by region and outcome.",
                                ["region", "outcome"], namespace=ns, registry=registry)
        self.failures = Counter("failures", "Failures while consuming, by kind.",
                                ["kind"], namespace=ns, registry=registry)
        self.e2e_latency = Histogram(
            "end_to_end_latency_seconds", "Entry id time (XADD) to acknowledgement.",
            namespace=ns, registry=registry, buckets=LATENCY_BUCKETS)
        self.batch_seconds = Histogram(
            "batch_processing_seconds", "Time to validate, persist and ack one batch.",
            namespace=ns, registry=registry, buckets=ROUNDTRIP_BUCKETS)
        self.batch_size = Histogram("batch_size", "Entries per batch read.", namespace=ns,
                                    registry=registry, buckets=BATCH_SIZE_BUCKETS)
        self.redis_rtt = Histogram("redis_roundtrip_seconds", "Redis round trip by operation.",
                                   ["operation"], namespace=ns, registry=registry,
                                   buckets=ROUNDTRIP_BUCKETS)
        self.reclaimed = Counter("reclaimed", "Pending entries reclaimed from idle consumers.",
                                 namespace=ns, registry=registry)
        self.nogroup = Counter("nogroup_recoveries", "Consumer group recreated after NOGROUP.",
                               namespace=ns, registry=registry)
        self.lost_trimmed = Counter(
            "lost_trimmed", "Pending entries found deleted/trimmed from the stream.",
            namespace=ns, registry=registry)
        # Bind every label set once: the hot path does no label lookups.
        self.outcome = {
            (r, o): self.messages.labels(r, o)
            for r in _labels(regions) for o in CONSUMER_OUTCOMES
        }
        self.failure = {k: self.failures.labels(k) for k in FAILURE_KINDS}
        self.rtt = {op: self.redis_rtt.labels(op) for op in REDIS_OPS}


class ProducerMetrics:
    def __init__(self, registry: CollectorRegistry, regions: Iterable[str] = REGIONS) -> None:
        ns = NAMESPACE
        self.published = Counter("published", "Snapshots published, by region.", ["region"],
                                 namespace=ns, registry=registry)
        self.rejected = Counter("source_rejected", "Source records rejected as invalid.",
                                namespace=ns, registry=registry)
        self.publish_failures = Counter("publish_failures", "Cycles that failed to publish.",
                                        namespace=ns, registry=registry)
        self.cycle_seconds = Histogram("produce_cycle_seconds", "Duration of one publish cycle.",
                                       namespace=ns, registry=registry, buckets=ROUNDTRIP_BUCKETS)
        self.last_success = Gauge(
            "producer_last_success_timestamp_seconds", "Unix time of the last published cycle.",
            namespace=ns, registry=registry)
        self.region = {r: self.published.labels(r) for r in regions}


def build_info(registry: CollectorRegistry, version: str) -> None:
    Info("build", "regionstream build information.", namespace=NAMESPACE,
         registry=registry).info({"version": version})
