"""``regionstream show REGION``: the latest persisted snapshot of a region."""

from __future__ import annotations

import json
import sys
import time

import msgspec
import redis.asyncio as aioredis

from regionstream.runtime import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from regionstream.view import printable
from shared.ids import text
from shared.keys import Keys
from shared.schema import REGION_NAMES, SnapshotInvalid, decode
from shared.settings import Settings


async def latest_payload(redis: aioredis.Redis, keys: Keys, region: str) -> bytes | None:
    sid: bytes | None = await redis.get(keys.latest(region))  # type: ignore[assignment]
    if sid is None:
        return None
    payload: bytes | None = await redis.get(keys.by_id(region, text(sid)))  # type: ignore[assignment]
    return payload


def terminal_json(payload: bytes) -> str:
    """The stored JSON, indented, safe to print on a terminal: a character that is not
    printable can only stand inside a JSON string there (anywhere else it is not JSON), so it
    is written as its ``\\u`` escape, which means the same to any JSON reader. JSON already
    escapes C0 controls; this catches C1 controls (U+009B is CSI to many terminals), bidi
    overrides and line separators, stored as raw UTF-8. Raises msgspec.DecodeError if the
    payload is not JSON."""
    text = msgspec.json.format(payload, indent=2).decode("utf-8", "replace")
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\n" else json.dumps(c)[1:-1] for c in text)


async def show(redis: aioredis.Redis, settings: Settings, region: str, *, as_json: bool) -> int:
    if region not in settings.regions:
        print(f"regionstream show: unknown region {region!r}; known: "
              f"{', '.join(settings.regions)}", file=sys.stderr)
        return EXIT_USAGE
    keys = settings.keys
    payload = await latest_payload(redis, keys, region)
    if payload is None:
        print(f"regionstream show: no snapshot persisted for {region} under prefix "
              f"{keys.prefix!r}", file=sys.stderr)
        return EXIT_FAILURE
    try:
        # Formatted before anything is printed: a payload that is not a snapshot is one line.
        text = terminal_json(payload) if as_json else "\n".join(describe(region, payload))
    except (msgspec.DecodeError, SnapshotInvalid) as exc:
        print(f"regionstream show: the latest snapshot stored for {region} is not readable: "
              f"{printable(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    if as_json:  # UTF-8 whatever the locale: it is JSON
        sys.stdout.buffer.write(text.encode() + b"\n")
    else:
        print(text)
    return EXIT_OK


def describe(region: str, payload: bytes) -> list[str]:
    """The human form; every text field of the payload through ``printable`` (a producer
    decides what they hold)."""
    snap = decode(payload)
    age = time.time() - snap.generated_at / 1000
    m, r, b = snap.meta, snap.regime, snap.balance
    p = printable
    return [
        f"{REGION_NAMES.get(region, region)} ({region})",
        f"  snapshot   {p(m.snapshot_id)}  generated {age:,.0f}s ago  "
        f"trigger {p(m.trigger_reason)}",
        f"  regime     {p(r.label)} (was {p(str(r.previous_label))})",
        f"  balance    net {b.net_balance:+.2f}  coercive {b.coercive_pressure:.2f}  "
        f"fragility {b.domestic_fragility:.2f}",
        f"  confidence {m.snapshot_confidence:.2f}  actors {len(snap.actors)}  "
        f"evidence {len(snap.evidence)}",
        f"  situation  {p(snap.narrative.situation)}",
    ]
