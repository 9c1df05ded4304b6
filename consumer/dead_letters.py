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

from collections.abc import Iterable, Mapping

import msgspec

from consumer.message import MAX_ENTRY_FIELDS
from shared.wire import pairs_of

PROVENANCE_PREFIX = b"dlq_"
ESCAPED_PREFIX = b"dlq_raw_"
PACKED_FIELD = b"dlq_fields"
REASON_FIELD = b"dlq_reason"
DETAIL_FIELD = b"dlq_error"
DELIVERIES_FIELD = b"dlq_deliveries"  # written by dead_letter.lua from the pending list
MAX_DETAIL_BYTES = 2048

_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder(list[tuple[bytes, bytes]])


def stored_fields(original: dict[bytes, bytes], provenance: Mapping[bytes, bytes]
                  ) -> list[bytes]:
    """The flat field/value list of the dead-letter entry for ``original``."""
    out: list[bytes] = []
    pairs = pairs_of(original)  # every field as read, a repeated name included
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
