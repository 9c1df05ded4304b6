"""Every Redis key, stream and group name of regionstream is built here, and only here.

Layout (``{prefix}`` defaults to ``intelligence``)::

    {prefix}:dedup:v1:{<region>}:<trigger_reason>:<bucket>  -> snapshot_id   EX dedup window
    {prefix}:snapshot-by-id:v1:{<region>}:<snapshot_id>     -> snapshot JSON, expires generated_at + retention
    {prefix}:snapshot:v1:{<region>}:latest                  -> snapshot_id   EX retention
    {prefix}:snapshot-index:v1:{<region>}                   -> ZSET generated_at -> snapshot_id

``{<region>}`` is a Redis Cluster hash tag: all keys of one region hash to one slot, so the
persist script (which touches all four) is legal on a cluster too.
"""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ":dlq"


def dedup_bucket(generated_at_ms: int, window_ms: int) -> int:
    """Upstream's bucket: ``floor(generated_at / window)``."""
    return generated_at_ms // window_ms


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

    def _tag(self, region: str) -> str:
        return "{" + region + "}"

    def dedup(self, region: str, trigger_reason: str, bucket: int) -> str:
        return f"{self.prefix}:dedup:v1:{self._tag(region)}:{trigger_reason}:{bucket}"

    def by_id(self, region: str, snapshot_id: str) -> str:
        return f"{self.prefix}:snapshot-by-id:v1:{self._tag(region)}:{snapshot_id}"

    def latest(self, region: str) -> str:
        return f"{self.prefix}:snapshot:v1:{self._tag(region)}:latest"

    def index(self, region: str) -> str:
        return f"{self.prefix}:snapshot-index:v1:{self._tag(region)}"

    def consumer_name(self, base: str, worker: int | str) -> str:
        """Stable per-worker consumer name: a restarted worker gets its old name back, and with
        it its own pending entries, which it replays before reading new ones."""
        return f"{base}-{worker}"

    def reclaimer_name(self, base: str) -> str:
        return f"{base}-reclaimer"
