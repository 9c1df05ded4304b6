"""Every Prometheus metric of regionstream, defined against a registry passed in (tests get
their own). Labels are bounded: region, shard (a region, or ``all``), outcome, stream and
group yes; message, snapshot or consumer id never. Label sets are pre-created so every series
exists from the first scrape, and only real ones: a shard's failure series are made when a
worker of that shard starts.
No ``_created`` series are exported (``disable_created_metrics`` at import, for every
registry of the process): Prometheus does not need them, and they doubled the series count.

Two kinds of series, aggregated differently across processes (see docs/metrics.md):

* per-process counters and histograms (messages, failures, latencies): each process counts its
  own work, so dashboards ``sum`` them over instances;
* group gauges (``regionstream_group_*``, ``regionstream_stream_length``,
  ``regionstream_dlq_length``): every process reads the same Redis state and exports the same
  value, so dashboards take ``max by (stream, group)`` - a ``sum`` would count it once per
  process.
"""

from __future__ import annotations

import math
import weakref
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from shared.keys import ALL_SHARD
from shared.schema import REGIONS

# prometheus-client reads this process-wide flag at every scrape, for every registry: the
# commands' own registries included. Every module that defines a metric imports this one.
# (Called through a cast: prometheus-client leaves it unannotated.)
cast(Callable[[], None], disable_created_metrics)()

NAMESPACE = "regionstream"
CONSUMER_OUTCOMES = ("persisted", "duplicate", "redelivered", "invalid", "dead_lettered")
FAILURE_KINDS = ("persist", "transient", "oom", "nogroup", "noscript", "ack", "permanent",
                 "other")
REDIS_OPS = ("read", "settle", "claim", "publish", "trim", "group_info")
# Latency buckets from 1 ms (loopback batch) to 6 h (upstream's cadence: a backlog replayed).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0, 1800.0, 21600.0)
ROUNDTRIP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                     0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
# A group gauge nobody has read yet is NaN ("unknown"), never 0: a 0 lag before the first read
# from Redis would look like a healthy group.
UNKNOWN = math.nan

# One Redis round-trip histogram per registry: the workers, the producer and the group-gauge
# refresher of one process all observe into it (a second registration of the same name in one
# registry would raise).
_RTT_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Histogram] = (
    weakref.WeakKeyDictionary())


def _labels(regions: Iterable[str]) -> tuple[str, ...]:
    return (*regions, "unknown")


def redis_roundtrip(registry: CollectorRegistry) -> Histogram:
    """The registry's ``regionstream_redis_roundtrip_seconds{operation}``, every op pre-created."""
    rtt = _RTT_BY_REGISTRY.get(registry)
    if rtt is None:
        rtt = Histogram("redis_roundtrip_seconds", "Redis round trip by operation.",
                        ["operation"], namespace=NAMESPACE, registry=registry,
                        buckets=ROUNDTRIP_BUCKETS)
        for op in REDIS_OPS:
            rtt.labels(op)
        _RTT_BY_REGISTRY[registry] = rtt
    return rtt


def observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every (finite) value of a batch, as one increment per bucket
    touched: prometheus-client's ``observe`` takes a lock and scans the buckets per value, which
    the consumer would pay once per entry. Uses the histogram's bucket counters directly and
    falls back to ``observe`` if a prometheus-client release ever lays them out differently."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if (not values or bounds is None or buckets is None or total is None
            or len(bounds) != len(buckets) or histogram._labelnames):
        for v in values:
            histogram.observe(v)
        return
    # observe() counts v in the first bucket whose upper bound is >= v: bisect_left finds it.
    for i, n in Tally(bisect_left(bounds, v) for v in values).items():
        buckets[i].inc(n)
    total.inc(math.fsum(values))


class OutcomeChildren(dict[tuple[str, str], Counter]):
    """``regionstream_messages_total`` children by (region, outcome), total over every label
    set an entry can produce: any known region or ``unknown`` (what ``Poison.region`` maps
    anything else to), any consumer outcome. A missing one is made when first counted, so an
    entry of a region this process does not serve is counted instead of raising KeyError
    (which crash-looped every restart of a ``--regions`` subset consumer)."""

    def __init__(self, family: Counter) -> None:
        super().__init__()
        self.family = family

    def __missing__(self, key: tuple[str, str]) -> Counter:
        region, outcome = key
        if region not in _labels(REGIONS) or outcome not in CONSUMER_OUTCOMES:
            raise KeyError(key)  # a bug: labels stay bounded
        child: Counter = self.family.labels(region, outcome)
        self[key] = child
        return child


class FailureChildren(dict[str, dict[str, Counter]]):
    """``regionstream_failures_total`` children by shard, then kind. A shard's children (every
    kind) are made when first asked for, by the workers and settlers of that shard as they
    start: the process exports the shards it serves (one ``all`` with --shard-by none, its
    regions with --shard-by region), not every shard there could be."""

    def __init__(self, family: Counter) -> None:
        super().__init__()
        self.family = family

    def __missing__(self, shard: str) -> dict[str, Counter]:
        if shard not in shard_labels(REGIONS):
            raise KeyError(shard)  # a bug: labels stay bounded
        children = {k: self.family.labels(k, shard) for k in FAILURE_KINDS}
        self[shard] = children
        return children


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry, regions: Iterable[str] = REGIONS) -> None:
        ns = NAMESPACE
        self.messages = Counter("messages", "Stream entries settled, by region and outcome.",
                                ["region", "outcome"], namespace=ns, registry=registry)
        self.failures = Counter("failures", "Failures while consuming, by kind and shard.",
                                ["kind", "shard"], namespace=ns, registry=registry)
        self.e2e_latency = Histogram(
            "end_to_end_latency_seconds", "Entry id time (XADD) to acknowledgement.",
            namespace=ns, registry=registry, buckets=LATENCY_BUCKETS)
        self.batch_seconds = Histogram(
            "batch_processing_seconds", "Time to validate, persist and ack one batch.",
            namespace=ns, registry=registry, buckets=ROUNDTRIP_BUCKETS)
        self.batch_size = Histogram("batch_size", "Entries per batch read.", namespace=ns,
                                    registry=registry, buckets=BATCH_SIZE_BUCKETS)
        self.redis_rtt = redis_roundtrip(registry)
        self.reclaimed = Counter("reclaimed", "Pending entries reclaimed from idle consumers.",
                                 namespace=ns, registry=registry)
        self.ids_ahead = Counter(
            "ids_ahead_of_clock", "Entries settled whose id was over a minute ahead of the "
            "consumer's clock (left out of the latency figures).", namespace=ns,
            registry=registry)
        self.nogroup = Counter("nogroup_recoveries", "Consumer group recreated after NOGROUP.",
                               namespace=ns, registry=registry)
        self.lost_trimmed = Counter(
            "lost_trimmed", "Pending entries found deleted/trimmed from the stream.",
            namespace=ns, registry=registry)
        # Bind every label set of the served regions once: the hot path does no label lookups.
        # An entry may carry any other known region (a consumer serving --regions a subset of
        # the stream's, a stray entry on a region shard): its series are made on first use.
        self.outcome = OutcomeChildren(self.messages)
        for r in _labels(regions):
            for o in CONSUMER_OUTCOMES:
                self.outcome[r, o] = self.messages.labels(r, o)
        # Per served shard, made as its workers start (the layout is known only then).
        self.failure = FailureChildren(self.failures)
        self.rtt = {op: self.redis_rtt.labels(op) for op in REDIS_OPS}
        # What this process settled, per outcome over all regions, kept beside the counters
        # (prometheus-client offers no public read of a child's value).
        self.totals: Tally[str] = Tally(dict.fromkeys(CONSUMER_OUTCOMES, 0))


class ProducerMetrics:
    def __init__(self, registry: CollectorRegistry, regions: Iterable[str] = REGIONS) -> None:
        ns = NAMESPACE
        self.published = Counter("published", "Snapshots published, by region.", ["region"],
                                 namespace=ns, registry=registry)
        self.rejected = Counter("source_rejected", "Source records rejected as invalid.",
                                namespace=ns, registry=registry)
        self.publish_failures = Counter("publish_failures", "Publish attempts that failed "
                                        "(each is retried while Redis is unavailable).",
                                        namespace=ns, registry=registry)
        self.unconfirmed = Counter(
            "publish_unconfirmed", "Publishes fewer than --min-replicas replicas confirmed "
            "in time (WAIT); each was published again.", namespace=ns, registry=registry)
        self.cycle_seconds = Histogram("produce_cycle_seconds", "Duration of one publish cycle.",
                                       namespace=ns, registry=registry, buckets=ROUNDTRIP_BUCKETS)
        self.last_success = Gauge(
            "producer_last_success_timestamp_seconds", "Unix time of the last published cycle.",
            namespace=ns, registry=registry)
        self.ids_ahead = Gauge(
            "stream_ids_ahead_seconds", "How far the ids the stream gave the last publish are "
            "ahead of the producer's clock (0: not ahead); over a minute, an outside XADD with "
            "an explicit future id has broken the stream's time.", namespace=ns,
            registry=registry)
        self.region = {r: self.published.labels(r) for r in regions}
        # The process's shared round-trip histogram: "publish" and "trim" are the producer's.
        self.rtt = {op: redis_roundtrip(registry).labels(op) for op in REDIS_OPS}


def shard_labels(regions: Iterable[str]) -> tuple[str, ...]:
    """Every value the ``shard`` label can take: a region (--shard-by region) or ``all``."""
    return (*regions, ALL_SHARD)


class ShardGauges:
    """The group gauges of one shard (children of ``GroupMetrics``' families)."""

    def __init__(self, families: dict[str, Gauge], stream: str, group: str, shard: str
                 ) -> None:
        def child(name: str) -> Gauge:
            family = families[name]
            labels = {"stream": stream, "group": group, "shard": shard}
            return family.labels(**{k: labels[k] for k in family._labelnames})

        self.lag, self.pending = child("group_lag"), child("group_pending")
        self.oldest_pending_age = child("group_oldest_pending_age_seconds")
        self.consumers, self.active_consumers = child("group_consumers"), child(
            "group_active_consumers")
        self.stream_length, self.dlq_length = child("stream_length"), child("dlq_length")
        self.evicted_keys = child("redis_evicted_keys")
        for g in (self.lag, self.pending, self.oldest_pending_age, self.consumers,
                  self.active_consumers, self.stream_length, self.dlq_length,
                  self.evicted_keys):
            g.set(UNKNOWN)
        # The node's maxmemory-policy, as a label of a gauge that is 1 (one series, replaced
        # when the policy changes).
        self.policy_family, self.labels = families["redis_maxmemory_policy"], (stream, group,
                                                                                shard)
        self.policy: str | None = None

    def set_policy(self, policy: str) -> None:
        if policy == self.policy:
            return
        if self.policy is not None:
            self.policy_family.remove(*self.labels, self.policy)
        self.policy_family.labels(*self.labels, policy).set(1)
        self.policy = policy


class GroupMetrics:
    """Gauges of each shard's stream and consumer group, read from Redis
    (``shared.group_metrics``). ``stream`` is the deployment's stream name (``--stream``),
    ``shard`` the region of a shard or ``all`` (--shard-by none): bounded by the regions.

    Identical in every process that exports them: aggregate with
    ``max by (stream, group, shard)``, then sum over shards for a deployment's total."""

    def __init__(self, registry: CollectorRegistry, stream: str, group: str,
                 shards: Iterable[str] = (ALL_SHARD,)) -> None:
        sgs, ss = ["stream", "group", "shard"], ["stream", "shard"]
        docs = {
            "group_lag": ("Entries not yet delivered to the group (XINFO GROUPS lag); NaN "
                          "when Redis cannot tell.", sgs),
            "group_pending": ("Entries delivered but not acknowledged.", sgs),
            "group_oldest_pending_age_seconds": (
                "Age (since XADD) of the oldest unacknowledged entry; 0 when none.", sgs),
            "group_consumers": ("Consumers known to the group.", sgs),
            "group_active_consumers": ("Consumers that talked to Redis recently.", sgs),
            "stream_length": ("Entries on the shard's stream (XLEN).", ss),
            "dlq_length": ("Entries on the shard's dead-letter stream.", ss),
            "redis_evicted_keys": ("Keys the shard's Redis node evicted since it started "
                                   "(INFO stats evicted_keys); any rise is data lost.", sgs),
            "redis_maxmemory_policy": ("1, labelled with the shard's Redis node's "
                                       "maxmemory-policy (INFO memory); anything but "
                                       "noeviction may delete stored data.",
                                       [*sgs, "policy"]),
        }
        families = {name: Gauge(name, doc, labels, namespace=NAMESPACE, registry=registry)
                    for name, (doc, labels) in docs.items()}
        self.shard = {label: ShardGauges(families, stream, group, label) for label in shards}
        # Per shard: one shard's node unreachable must show as that shard's stale read, not
        # hide behind the others' fresh ones.
        last_refresh = Gauge(
            "group_last_refresh_timestamp_seconds",
            "Unix time the shard's group gauges were last read from Redis.", ["shard"],
            namespace=NAMESPACE, registry=registry)
        self.last_refresh = {label: last_refresh.labels(label) for label in shards}
        self.refresh_errors = group_refresh_errors(registry)
        self.rtt = redis_roundtrip(registry).labels("group_info")


_REFRESH_ERRORS_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = (
    weakref.WeakKeyDictionary())


def group_refresh_errors(registry: CollectorRegistry) -> Counter:
    """``regionstream_group_refresh_errors_total``, registered before the layout is known
    (a Redis that cannot be reached yet is counted too), once per registry."""
    errors = _REFRESH_ERRORS_BY_REGISTRY.get(registry)
    if errors is None:
        errors = Counter("group_refresh_errors", "Failed reads of the group gauges from Redis.",
                         namespace=NAMESPACE, registry=registry)
        _REFRESH_ERRORS_BY_REGISTRY[registry] = errors
    return errors


def producer_cadence(registry: CollectorRegistry, interval_s: float) -> None:
    """Export the producer's configured cadence, so "producer stalled" is judged against it (a
    6-hour cadence and the demo's 2 seconds need different thresholds)."""
    Gauge("producer_interval_seconds", "Configured seconds between producer cycles.",
          namespace=NAMESPACE, registry=registry).set(interval_s)


def build_info(registry: CollectorRegistry, version: str) -> None:
    Info("build", "regionstream build information.", namespace=NAMESPACE,
         registry=registry).info({"version": version})
