"""Hypothesis strategies for hostile stream entries, structure-aware: valid snapshots, valid
snapshots with one part mutated, routing fields that lie, JSON of any shape and depth, raw
bytes, field counts from none to thousands, ids with unusual characters, numbers out of range,
duplicate JSON keys, control characters."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import strategies as st

from producer.synthetic import SyntheticSource
from shared import wire
from shared.schema import REGIONS, TRIGGER_REASONS, decode, encode

Fields = dict[bytes, bytes]
_NOW_MS = int(time.time() * 1000)
_CYCLE_MS = 6 * 3600 * 1000


def _pool() -> list[bytes]:
    """Valid snapshots, made once (a strategy must draw the same way every time it runs, so it
    cannot advance a stateful source): 4 worlds x 4 cycles x 8 regions."""
    out = []
    for seed in range(4):
        src = SyntheticSource(seed=seed)
        for k in reversed(range(4)):
            out += [encode(snap) for snap in src.cycle(_NOW_MS - k * _CYCLE_MS)]
    return out


_POOL = _pool()

# Values that break assumptions: extremes, wrong types, unicode, control characters.
NASTY_TEXT = st.sampled_from([
    "", " ", "\x00", "\n", "{mena}", "mena}", "{", "*", "..", "\u202e", "\ud7ff", "é", "😀",
    "a" * 300, "0" * 12 + "-" + "0" * 12, "ffffffffffff-ffffffffffff", "NaN", "-1",
])
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0, -1, 2**63 - 1, 2**63, 2**64, _NOW_MS, _NOW_MS + 10**9, 10**15]),
)
JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=20), NASTY_TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=6),
                            st.dictionaries(st.text(max_size=8), inner, max_size=6)),
    max_leaves=30,
)


@st.composite
def valid_snapshot(draw: st.DrawFn) -> tuple[dict[str, Any], Fields]:
    payload = draw(st.sampled_from(_POOL))
    return json.loads(payload), wire.entry_fields(decode(payload), payload)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


@st.composite
def mutated_snapshot(draw: st.DrawFn) -> Fields:
    """A valid snapshot with one value anywhere replaced; routing fields follow the payload
    when they still can (so the mutation is what gets judged), or keep the old values."""
    doc, fields = draw(valid_snapshot())
    path = draw(st.sampled_from(_paths(doc)))
    _set(doc, path, draw(st.one_of(JSON, NASTY_TEXT, NUMBERS)))
    payload = json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    out = dict(fields) | {wire.F_PAYLOAD: payload}
    if draw(st.booleans()):
        meta = doc.get("meta") if isinstance(doc.get("meta"), dict) else {}
        for name, value in ((wire.F_REGION, doc.get("region_id")),
                            (wire.F_SNAPSHOT_ID, meta.get("snapshot_id")),
                            (wire.F_GENERATED_AT, doc.get("generated_at")),
                            (wire.F_TRIGGER, meta.get("trigger_reason"))):
            out[name] = str(value).encode("utf-8", "surrogatepass")
    return out


@st.composite
def lying_routing(draw: st.DrawFn) -> Fields:
    """A valid payload whose entry fields say something else (region, id, time, reason)."""
    _, fields = draw(valid_snapshot())
    name = draw(st.sampled_from([wire.F_REGION, wire.F_SNAPSHOT_ID, wire.F_GENERATED_AT,
                                 wire.F_TRIGGER, wire.F_SCHEMA, wire.F_ENCODING]))
    value = draw(st.one_of(st.sampled_from([r.encode() for r in REGIONS]),
                           st.sampled_from([t.encode() for t in TRIGGER_REASONS]),
                           NASTY_TEXT.map(lambda t: t.encode("utf-8", "surrogatepass")),
                           st.binary(max_size=40)))
    return dict(fields) | {name: value}


def _envelope(payload: bytes) -> Fields:
    return {wire.F_SCHEMA: wire.SCHEMA, wire.F_ENCODING: wire.ENCODING_JSON,
            wire.F_REGION: b"mena", wire.F_PAYLOAD: payload}


@st.composite
def odd_json(draw: st.DrawFn) -> Fields:
    """Any JSON at all, deeply nested, wide, or with duplicate keys, as the payload."""
    kind = draw(st.sampled_from(["any", "deep", "wide", "duplicate-keys"]))
    if kind == "any":
        payload = json.dumps(draw(JSON)).encode()
    elif kind == "deep":
        depth = draw(st.integers(1, 20_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        payload = b'{"x":' + opener * depth + b"1" + closer * depth + b"}"
    elif kind == "wide":
        payload = b"[" + b",".join([b"0"] * draw(st.integers(0, 50_000))) + b"]"
    else:
        _, fields = draw(valid_snapshot())
        body = fields[wire.F_PAYLOAD]
        extra = draw(st.sampled_from([b'"region_id":"europe",', b'"generated_at":1,',
                                      b'"meta":{},', b'"region_id":' + b"[" * 3000 + b"]" * 3000
                                      + b","]))
        return dict(fields) | {wire.F_PAYLOAD: b"{" + extra + body[1:]}
    return _envelope(payload)


FIELD_NAMES = st.one_of(st.sampled_from([wire.F_PAYLOAD, wire.F_REGION, b"dlq_reason",
                                         b"dlq_raw_x", b"dlq_fields", b""]),
                        st.binary(min_size=0, max_size=12))


@st.composite
def odd_fields(draw: st.DrawFn) -> Fields:
    """Entries that are not snapshot entries at all: random names and values, few or many."""
    if draw(st.integers(0, 30)) == 0:  # rare and costly: thousands of fields
        n = draw(st.integers(65, 5000))
        return {b"f%d" % i: b"%d" % i for i in range(n)}
    return draw(st.dictionaries(FIELD_NAMES, st.binary(max_size=64), min_size=1, max_size=80))


@st.composite
def raw_payload(draw: st.DrawFn) -> Fields:
    """Bytes that are not JSON, not UTF-8, or not small."""
    kind = draw(st.sampled_from(["binary", "utf16", "huge", "empty", "bom"]))
    payload = {
        "binary": lambda: draw(st.binary(max_size=300)),
        "utf16": lambda: json.dumps({"region_id": "mena"}).encode("utf-16"),
        "huge": lambda: b'{"pad":"' + b"x" * draw(st.integers(60_000, 70_000)) + b'"}',
        "empty": lambda: b"",
        "bom": lambda: b"\xef\xbb\xbf" + json.dumps({"a": 1}).encode(),
    }[kind]()
    return _envelope(payload)


def entries() -> st.SearchStrategy[Fields]:
    """One stream entry's fields, from any of the classes above."""
    return st.one_of(valid_snapshot().map(lambda pair: pair[1]), mutated_snapshot(),
                     lying_routing(), odd_json(), odd_fields(), raw_payload())
