"""The stream entry format: the fields one snapshot message carries on the stream.

The payload is the snapshot's msgspec JSON, so ``redis-cli XRANGE`` stays readable; the other
fields repeat what the consumer needs to route and deduplicate without trusting them: the
consumer checks them against the decoded payload.
"""

from __future__ import annotations

from typing import Final

from shared.schema import SCHEMA_VERSION, Snapshot

F_REGION: Final = b"region"
F_SNAPSHOT_ID: Final = b"snapshot_id"
F_GENERATED_AT: Final = b"generated_at"
F_TRIGGER: Final = b"trigger_reason"
F_SCHEMA: Final = b"schema"
F_ENCODING: Final = b"encoding"
F_PAYLOAD: Final = b"payload"
ENCODING_JSON: Final = b"json"
SCHEMA: Final = str(SCHEMA_VERSION).encode()


def entry_fields(snap: Snapshot, payload: bytes) -> dict[bytes, bytes]:
    """The XADD fields for ``snap`` whose encoded form is ``payload``."""
    return {
        F_REGION: snap.region_id.encode(),
        F_SNAPSHOT_ID: snap.meta.snapshot_id.encode(),
        F_GENERATED_AT: str(snap.generated_at).encode(),
        F_TRIGGER: snap.meta.trigger_reason.encode(),
        F_SCHEMA: SCHEMA,
        F_ENCODING: ENCODING_JSON,
        F_PAYLOAD: payload,
    }
