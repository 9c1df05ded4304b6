"""The stream entry format: the fields one snapshot message carries on the stream.

The payload is the snapshot's msgspec JSON, so ``redis-cli XRANGE`` stays readable; the other
fields repeat what the consumer needs to route and deduplicate without trusting them: the
consumer checks them against the decoded payload.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Final

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


# -- Reading entries: every field kept -----------------------------------------------------
# redis-py turns an entry's field list into a dict, so of two fields with one name (another
# producer's odd but valid XADD) one vanished: the consumer judged a different entry than the
# one on the stream, and its dead letter lost a field. These parsers replace redis-py's for
# the stream reads of our clients (shared.connection.connect installs them): a dict as before
# when every name is distinct (the cost of redis-py's own), a ``RepeatedFields`` holding every
# pair otherwise; and None, not {}, for an entry deleted while pending (redis-py's {} made it
# an empty dead letter instead of an entry counted lost).


class RepeatedFields(dict[bytes, bytes]):
    """An entry's fields when a name appears more than once: the dict holds the last value of
    each name (as redis-py's did), ``pairs`` every (name, value) in order."""

    def __init__(self, pairs: list[tuple[bytes, bytes]]) -> None:
        super().__init__(pairs)
        self.pairs = pairs

    def repeated(self) -> list[bytes]:
        """The names that appear more than once, in order of first appearance."""
        return [n for n, k in Counter(n for n, _ in self.pairs).items() if k > 1]


def fields_of(flat: list[bytes] | None) -> dict[bytes, bytes] | None:
    if flat is None:
        return None
    it = iter(flat)
    fields = dict(zip(it, it, strict=False))
    if 2 * len(fields) == len(flat):
        return fields
    it = iter(flat)
    return RepeatedFields(list(zip(it, it, strict=False)))


def field_count(fields: dict[bytes, bytes]) -> int:
    """How many fields the entry has, a repeated name counted each time (no copy: the
    consumer asks it of every entry)."""
    return len(fields.pairs) if isinstance(fields, RepeatedFields) else len(fields)


def pairs_of(fields: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    """Every (name, value) of an entry as read, repeated names included."""
    return fields.pairs if isinstance(fields, RepeatedFields) else list(fields.items())


def parse_entries(response: list[Any] | None, **options: Any) -> list[Any] | None:
    if response is None:
        return None
    return [(None, None) if r is None else (r[0], fields_of(r[1]), *r[2:]) for r in response]


def parse_read(response: list[Any] | dict[Any, Any] | None, **options: Any) -> list[Any]:
    """``[[stream, entries]]`` (the shape redis-py gives), from a RESP2 reply (that list) or a
    RESP3 one (a map of stream to entries: redis-py 8.2 speaks RESP3 when it can)."""
    if not response:
        return []
    items = response.items() if isinstance(response, dict) else response
    return [[stream, parse_entries(entries)] for stream, entries in items]


def parse_autoclaim(response: list[Any], **options: Any) -> Any:
    if options.get("parse_justid", False):
        return response[1]
    response[1] = parse_entries(response[1])
    return response


def parse_claim(response: list[Any], **options: Any) -> Any:
    if options.get("parse_justid", False):
        return response
    return parse_entries(response)


# The commands that return entries (their replies' shapes are alike in RESP2 and RESP3, but
# for XREAD/XREADGROUP's outer map).
ENTRY_PARSERS: Final = {"XREAD": parse_read, "XREADGROUP": parse_read,
                        "XRANGE": parse_entries, "XREVRANGE": parse_entries,
                        "XCLAIM": parse_claim, "XAUTOCLAIM": parse_autoclaim}
