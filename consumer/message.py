"""Turning one stream entry into something the persist script can take, or a poison reason."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from shared import wire
from shared.schema import REGIONS, SnapshotInvalid, parse


@dataclass(frozen=True, slots=True)
class Valid:
    entry_id: bytes
    region: str
    snapshot_id: str
    trigger_reason: str
    generated_at: int
    payload: bytes  # stored as received: no decode-and-re-encode on the hot path


@dataclass(frozen=True, slots=True)
class Poison:
    """An entry no retry can fix; it goes to the dead-letter stream with ``reason``."""

    entry_id: bytes
    fields: dict[bytes, bytes]
    reason: str  # a short, stable kind: undecodable, schema-invalid, too-large, ...
    detail: str

    @property
    def region(self) -> str:
        raw = self.fields.get(wire.F_REGION, b"")
        region = raw.decode("utf-8", "replace")
        # Metrics labels stay bounded: anything that is not a known region is "unknown".
        return region if region in REGIONS else "unknown"


def check_entry(
    entry_id: bytes,
    fields: dict[bytes, bytes],
    *,
    max_bytes: int,
    now_ms: int,
    regions: Collection[str] = REGIONS,
    retention_ms: int | None = None,
) -> Valid | Poison:
    """Validate one entry: version, size, payload against the schema, the routing fields
    against the payload (a mismatch would file the snapshot under the wrong keys) and, given
    ``retention_ms``, its age (a snapshot older than the retention would expire on arrival)."""
    payload = fields.get(wire.F_PAYLOAD)
    if payload is None:
        return Poison(entry_id, fields, "missing-payload", "entry has no 'payload' field")
    schema = fields.get(wire.F_SCHEMA)
    if schema != wire.SCHEMA:
        return Poison(entry_id, fields, "unsupported-schema",
                      f"schema {schema!r} is not {wire.SCHEMA!r}")
    encoding = fields.get(wire.F_ENCODING, wire.ENCODING_JSON)
    if encoding != wire.ENCODING_JSON:
        return Poison(entry_id, fields, "unsupported-encoding", f"encoding {encoding!r}")
    if len(payload) > max_bytes:
        return Poison(entry_id, fields, "too-large",
                      f"payload is {len(payload)} bytes, limit {max_bytes}")
    try:
        snap = parse(payload, now_ms=now_ms, regions=regions)
    except SnapshotInvalid as exc:
        kind = "undecodable" if getattr(exc, "undecodable", False) else "schema-invalid"
        return Poison(entry_id, fields, kind, str(exc))
    mismatch = [
        name.decode()
        for name, value in (
            (wire.F_REGION, snap.region_id),
            (wire.F_SNAPSHOT_ID, snap.meta.snapshot_id),
            (wire.F_GENERATED_AT, str(snap.generated_at)),
            (wire.F_TRIGGER, snap.meta.trigger_reason),
        )
        if fields.get(name) != value.encode()
    ]
    if mismatch:
        return Poison(entry_id, fields, "field-mismatch",
                      f"entry field(s) {', '.join(mismatch)} disagree with the payload")
    if retention_ms is not None and snap.generated_at + retention_ms <= now_ms:
        return Poison(entry_id, fields, "past-retention",
                      f"generated_at {snap.generated_at} is more than the retention "
                      f"({retention_ms} ms) before now ({now_ms})")
    return Valid(entry_id, snap.region_id, snap.meta.snapshot_id, snap.meta.trigger_reason,
                 snap.generated_at, payload)
