"""Every Redis key, stream and group name of regionstream is built here, and only here.

Layout (``{prefix}`` defaults to ``intelligence``)::

    {prefix}:dedup:v1:{<region>}:<trigger_reason>:<bucket>  -> snapshot_id   EX dedup window
    {prefix}:snapshot-by-id:v1:{<region>}:<snapshot_id>     -> snapshot JSON, expires generated_at + retention
    {prefix}:snapshot:v1:{<region>}:latest                  -> snapshot_id   EX retention
    {prefix}:snapshot-index:v1:{<region>}                   -> ZSET generated_at -> snapshot_id
    {prefix}:incoming:v1:{<region>}:<entry id>              -> payload, only inside one MULTI/EXEC

Streams: ``<stream>`` and ``<stream>:dlq`` with ``--shard-by none``; with ``--shard-by region``
one shard per region, ``<stream>:{<region>}`` and ``<stream>:{<region>}:dlq``, in the slot of
that region's data keys (``Keys.shard``), each with the same group name. Beside each dead-letter
stream, ``<stream>:dlq-ids`` (``<stream>:{<region>}:dlq-ids``): a ZSET of the ids of the
entries dead-lettered, pruned as the stream is trimmed, so an entry is dead-lettered once.

An ``incoming`` key holds a payload between the MSET and the persist script of one
transaction (see consumer/persist.lua); it never outlives the EXEC.

``{<region>}`` is a Redis Cluster hash tag: all keys of one region hash to one slot. With the
region layout a shard's stream and DLQ share that slot, so every script call and transaction
of a shard (persist + ack, dead-letter, replay) keeps its keys in one slot.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache, lru_cache

from shared.schema import REGIONS, TRIGGER_REASONS

DLQ_SUFFIX = ":dlq"
# The ids of the stream's entries dead-lettered so far (a ZSET, score: the id's milliseconds):
# an entry read again (its group recreated from 0) is not dead-lettered a second time.
DLQ_IDS_SUFFIX = ":dlq-ids"


# The shard label of the one stream of --shard-by none (a region shard's label is its region):
# in metrics, ``top``, ``pending`` and ``replay``.
ALL_SHARD = "all"


def is_sharded(labels: Iterable[str]) -> bool:
    """Shard labels of a region layout (not the one stream of --shard-by none)."""
    return any(label != ALL_SHARD for label in labels)


def dedup_bucket(generated_at_ms: int, window_ms: int) -> int:
    """Upstream's bucket: ``floor(generated_at / window)``."""
    return generated_at_ms // window_ms


@dataclass(frozen=True, slots=True)
class RegionKeys:
    """One region's key names (``index``, ``latest``) and the prefixes its per-snapshot key
    names continue: ``dedup`` + ``<trigger_reason>:<bucket>``, ``by_id`` + ``<snapshot id>``,
    ``incoming`` + ``<entry id>`` (bytes, as entry ids are read)."""

    index: str
    latest: str
    dedup: str
    by_id: str
    incoming: bytes


@lru_cache(maxsize=1024)  # prefixes x regions of a process: a handful
def _region_keys(prefix: str, region: str) -> RegionKeys:
    tag = Keys._tag(region)
    return RegionKeys(
        index=f"{prefix}:snapshot-index:v1:{tag}",
        latest=f"{prefix}:snapshot:v1:{tag}:latest",
        dedup=f"{prefix}:dedup:v1:{tag}:",
        by_id=f"{prefix}:snapshot-by-id:v1:{tag}:",
        incoming=f"{prefix}:incoming:v1:{tag}:".encode())


@dataclass(frozen=True, slots=True)
class Keys:
    """Names for one deployment: a key prefix, a stream and a consumer group."""

    prefix: str = "intelligence"
    stream: str = "snapshots"
    group: str = "persisters"

    @property
    def dlq(self) -> str:
        """The dead-letter stream beside the main stream."""
        return self.stream + DLQ_SUFFIX

    @property
    def dlq_ids(self) -> str:
        """Ids of the stream's entries already dead-lettered (``consumer/dead_letter.lua``)."""
        return self.stream + DLQ_IDS_SUFFIX

    def shard(self, region: str) -> Keys:
        """The keys of ``region``'s shard: its own stream (and DLQ) in the slot of its data."""
        return replace(self, stream=f"{self.stream}:{self._tag(region)}")

    @staticmethod
    def _tag(region: str) -> str:
        return "{" + region + "}"

    def of_region(self, region: str) -> RegionKeys:
        """``region``'s key names, and the prefixes of its per-snapshot ones (the persist call
        builds three keys per message from them: a method call and a format each cost more).
        Made once per prefix and region: the single-key methods below ask for them too."""
        return _region_keys(self.prefix, region)

    def dedup(self, region: str, trigger_reason: str, bucket: int) -> str:
        return f"{self.of_region(region).dedup}{trigger_reason}:{bucket}"

    def by_id(self, region: str, snapshot_id: str) -> str:
        return self.of_region(region).by_id + snapshot_id

    def latest(self, region: str) -> str:
        return self.of_region(region).latest

    def index(self, region: str) -> str:
        return self.of_region(region).index

    def incoming(self, region: str, entry_id: bytes | str) -> str:
        eid = entry_id if isinstance(entry_id, bytes) else entry_id.encode()
        return (self.of_region(region).incoming + eid).decode()

    def consumer_name(self, base: str, worker: int | str) -> str:
        """Stable per-worker consumer name: a restarted worker gets its old name back, and with
        it its own pending entries, which it replays before reading new ones."""
        return f"{base}-{worker}"

    def reclaimer_name(self, base: str) -> str:
        return f"{base}-reclaimer"

    def kind_of(self, key: bytes | str) -> str | None:
        """Which key of the layout above ``key`` is ("stream", "dlq", "dedup", "by-id",
        "latest", "index", "incoming"), or None when it is none of them: tests scan Redis with this to
        prove nothing outside the documented layout is ever written."""
        text = key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else key
        if text == self.stream:
            return "stream"
        if text == self.dlq:
            return "dlq"
        if text == self.dlq_ids:
            return "dlq-ids"
        shard = _shard_layout(self.stream).fullmatch(text)
        if shard:
            return {DLQ_SUFFIX: "dlq", DLQ_IDS_SUFFIX: "dlq-ids"}.get(shard.group(1) or "",
                                                                       "stream")
        for kind, pattern in _layout(self.prefix).items():
            if pattern.fullmatch(text):
                return kind
        return None


@cache
def _shard_layout(stream: str) -> re.Pattern[str]:
    tag = "\\{(?:" + "|".join(map(re.escape, REGIONS)) + ")\\}"
    return re.compile(f"{re.escape(stream)}:{tag}"
                      f"({re.escape(DLQ_SUFFIX)}|{re.escape(DLQ_IDS_SUFFIX)})?")


@cache  # compiled once per prefix, not once per key checked
def _layout(prefix: str) -> dict[str, re.Pattern[str]]:
    p = re.escape(prefix)
    tag = "\\{(?:" + "|".join(map(re.escape, REGIONS)) + ")\\}"
    reasons = "(?:" + "|".join(TRIGGER_REASONS) + ")"
    return {
        "dedup": re.compile(f"{p}:dedup:v1:{tag}:{reasons}:[0-9]+"),
        "by-id": re.compile(f"{p}:snapshot-by-id:v1:{tag}:[0-9a-f]{{12}}-[0-9a-f]{{12}}"),
        "latest": re.compile(f"{p}:snapshot:v1:{tag}:latest"),
        "index": re.compile(f"{p}:snapshot-index:v1:{tag}"),
        "incoming": re.compile(f"{p}:incoming:v1:{tag}:[0-9]+-[0-9]+"),
    }
