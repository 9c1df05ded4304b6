"""Turning one stream entry into something the persist script can take, or a poison reason."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

from shared import wire
from shared.schema import REGIONS, SnapshotInvalid, parse


class Reason(StrEnum):
    """Why an entry was dead-lettered: the ``dlq_reason`` field, in one closed set."""

    TOO_MANY_FIELDS = "too-many-fields"
    REPEATED_FIELD = "repeated-field"  # two fields of one name: which one is meant?
    MISSING_PAYLOAD = "missing-payload"
    UNSUPPORTED_SCHEMA = "unsupported-schema"
    UNSUPPORTED_ENCODING = "unsupported-encoding"
    TOO_LARGE = "too-large"
    UNDECODABLE = "undecodable"
    SCHEMA_INVALID = "schema-invalid"
    FIELD_MISMATCH = "field-mismatch"
    PAST_RETENTION = "past-retention"
    CHECK_FAILED = "check-failed"  # the check itself raised: a bug, or input no check foresaw
    MAX_DELIVERIES = "max-deliveries"  # valid, but every persist attempt failed


class Valid(NamedTuple):
    """An entry that passed its check: what the persist script needs of it. (A named tuple: one
    is made per message, and a frozen dataclass cost 1.1 µs to make, this 0.3.)"""

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
    reason: Reason
    detail: str

    @property
    def region(self) -> str:
        raw = self.fields.get(wire.F_REGION, b"")
        region = raw.decode("utf-8", "replace")
        # Metrics labels stay bounded: anything that is not a known region is "unknown".
        return region if region in REGIONS else "unknown"


# A snapshot entry has 7 fields. Far more is a broken or hostile producer, and an entry with
# thousands of fields cannot be copied field by field into the dead-letter stream (Lua's unpack
# stops near 8,000 values): such an entry is dead-lettered with its fields packed into one.
MAX_ENTRY_FIELDS = 64
# Details are free text from decoders and validators: bounded, and without control characters,
# so a hostile payload cannot forge log lines or bloat the dead-letter stream.
MAX_DETAIL_CHARS = 1024
_CONTROL = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], "?")  # C0, DEL and C1 (8-bit CSI)


def clean_detail(text: str) -> str:
    text = text.translate(_CONTROL)
    return text if len(text) <= MAX_DETAIL_CHARS else text[:MAX_DETAIL_CHARS] + "..."


def check_entry(
    entry_id: bytes,
    fields: dict[bytes, bytes],
    *,
    max_bytes: int,
    now_ms: int,
    regions: Collection[str] = REGIONS,
    retention_ms: int | None = None,
) -> Valid | Poison:
    """Validate one entry (see ``_check``). Nothing one entry holds can raise out of here: any
    exception while checking it makes it poison with the exception as the detail, because an
    exception escaping a worker would crash-loop every consumer that is handed the entry."""
    try:
        checked = _check(entry_id, fields, max_bytes=max_bytes, now_ms=now_ms, regions=regions,
                         retention_ms=retention_ms)
    except Exception as exc:  # any exception at all: see the docstring
        return Poison(entry_id, fields, Reason.CHECK_FAILED,
                      clean_detail(f"{type(exc).__name__}: {exc}"))
    if isinstance(checked, Poison):
        return Poison(entry_id, fields, checked.reason, clean_detail(checked.detail))
    return checked


def _check(
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
    if (count := wire.field_count(fields)) > MAX_ENTRY_FIELDS:
        return Poison(entry_id, fields, Reason.TOO_MANY_FIELDS,
                      f"entry has {count} fields, at most {MAX_ENTRY_FIELDS} allowed")
    if isinstance(fields, wire.RepeatedFields):
        names = ", ".join(n.decode("utf-8", "replace") for n in fields.repeated())
        return Poison(entry_id, fields, Reason.REPEATED_FIELD,
                      f"field(s) {names} appear more than once")
    payload = fields.get(wire.F_PAYLOAD)
    if payload is None:
        return Poison(entry_id, fields, Reason.MISSING_PAYLOAD, "entry has no 'payload' field")
    schema = fields.get(wire.F_SCHEMA)
    if schema != wire.SCHEMA:
        return Poison(entry_id, fields, Reason.UNSUPPORTED_SCHEMA,
                      f"schema {schema!r} is not {wire.SCHEMA!r}")
    encoding = fields.get(wire.F_ENCODING, wire.ENCODING_JSON)
    if encoding != wire.ENCODING_JSON:
        return Poison(entry_id, fields, Reason.UNSUPPORTED_ENCODING, f"encoding {encoding!r}")
    if len(payload) > max_bytes:
        return Poison(entry_id, fields, Reason.TOO_LARGE,
                      f"payload is {len(payload)} bytes, limit {max_bytes}")
    try:
        snap = parse(payload, now_ms=now_ms, regions=regions)
    except SnapshotInvalid as exc:
        kind = (Reason.UNDECODABLE if getattr(exc, "undecodable", False)
                else Reason.SCHEMA_INVALID)
        return Poison(entry_id, fields, kind, str(exc))
    meta = snap.meta
    routing = ((wire.F_REGION, snap.region_id.encode()),
               (wire.F_SNAPSHOT_ID, meta.snapshot_id.encode()),
               (wire.F_GENERATED_AT, b"%d" % snap.generated_at),
               (wire.F_TRIGGER, meta.trigger_reason.encode()))
    if mismatch := [name.decode() for name, value in routing if fields.get(name) != value]:
        return Poison(entry_id, fields, Reason.FIELD_MISMATCH,
                      f"entry field(s) {', '.join(mismatch)} disagree with the payload")
    if retention_ms is not None and snap.generated_at + retention_ms <= now_ms:
        return Poison(entry_id, fields, Reason.PAST_RETENTION,
                      f"generated_at {snap.generated_at} is more than the retention "
                      f"({retention_ms} ms) before now ({now_ms})")
    return Valid(entry_id, snap.region_id, meta.snapshot_id, meta.trigger_reason,
                 snap.generated_at, payload)
