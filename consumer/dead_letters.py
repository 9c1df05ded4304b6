"""The dead-letter entry format: the original entry's fields, kept whole, plus provenance.

A dead letter must give back exactly the entry that failed (``replay --dlq`` puts it back on
the stream), so nothing of the original may be overwritten or dropped:

* provenance fields are named ``dlq_*``; an original field whose name starts with ``dlq_``
  (a hostile or confused producer) is stored as ``dlq_raw_<name>`` and restored on replay;
* an entry with more than ``MAX_ENTRY_FIELDS`` fields is stored with all its fields packed into
  one ``dlq_fields`` value (msgpack of ``[[name, value], ...]``): the move script hands fields
  to XADD through Lua's ``unpack``, which fails near 8,000 values.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from consumer.message import MAX_ENTRY_FIELDS, Poison
from shared.keys import Keys
from shared.wire import pairs_of

PROVENANCE_PREFIX = b"dlq_"
ESCAPED_PREFIX = b"dlq_raw_"
PACKED_FIELD = b"dlq_fields"
REASON_FIELD = b"dlq_reason"
DETAIL_FIELD = b"dlq_error"
DELIVERIES_FIELD = b"dlq_deliveries"  # dead_letter.lua writes it, from the pending list
ORIGINAL_ID_FIELD = b"dlq_original_id"
STREAM_FIELD = b"dlq_stream"
GROUP_FIELD = b"dlq_group"
CONSUMER_FIELD = b"dlq_consumer"
AT_FIELD = b"dlq_at_ms"
MAX_DETAIL_BYTES = 2048

_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


def stored_fields(poison: Poison, keys: Keys, consumer: str, at_ms: int) -> list[bytes]:
    """The flat field/value list of the dead-letter entry for ``poison``: its fields as read
    (a repeated name included), then the provenance (``dlq_deliveries`` is added by
    dead_letter.lua)."""
    provenance = {
        REASON_FIELD: poison.reason.encode(),
        DETAIL_FIELD: poison.detail.encode("utf-8", "replace")[:MAX_DETAIL_BYTES],
        ORIGINAL_ID_FIELD: poison.entry_id,
        STREAM_FIELD: keys.stream.encode(),
        GROUP_FIELD: keys.group.encode(),
        CONSUMER_FIELD: consumer.encode(),
        AT_FIELD: str(at_ms).encode(),
    }
    out: list[bytes] = []
    pairs = pairs_of(poison.fields)
    if len(pairs) > MAX_ENTRY_FIELDS:
        out += (PACKED_FIELD, _PACK.encode(pairs))
    else:
        for name, value in pairs:
            stored = ESCAPED_PREFIX + name if name.startswith(PROVENANCE_PREFIX) else name
            out += (stored, value)
    for name, value in provenance.items():
        out += (name, value)
    return out


def original_fields(stored: dict[bytes, bytes]) -> list[bytes]:
    """The flat field/value list of the entry a dead letter was made from."""
    packed = stored.get(PACKED_FIELD)
    pairs: Iterable[tuple[bytes, bytes]] = (
        _UNPACK.decode(packed) if packed is not None else pairs_of(stored))
    out: list[bytes] = []
    for name, value in pairs:
        if packed is None and name.startswith(PROVENANCE_PREFIX):
            if not name.startswith(ESCAPED_PREFIX):
                continue  # provenance
            name = name[len(ESCAPED_PREFIX):]
        out += (name, value)
    return out
