"""``regionstream show REGION``: the latest persisted snapshot of a region."""

from __future__ import annotations

import sys
import time

import msgspec
import redis.asyncio as aioredis

from shared.keys import Keys
from shared.schema import REGION_NAMES, decode
from shared.settings import Settings


async def latest_payload(redis: aioredis.Redis, keys: Keys, region: str) -> bytes | None:
    sid: bytes | None = await redis.get(keys.latest(region))  # type: ignore[assignment]
    if sid is None:
        return None
    payload: bytes | None = await redis.get(keys.by_id(region, sid.decode()))  # type: ignore[assignment]
    return payload


async def show(redis: aioredis.Redis, settings: Settings, region: str, *, as_json: bool) -> int:
    if region not in settings.regions:
        print(f"regionstream show: unknown region {region!r}; known: "
              f"{', '.join(settings.regions)}", file=sys.stderr)
        return 2
    keys = settings.keys
    payload = await latest_payload(redis, keys, region)
    if payload is None:
        print(f"regionstream show: no snapshot persisted for {region}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.buffer.write(msgspec.json.format(payload, indent=2) + b"\n")
        return 0
    snap = decode(payload)
    age = time.time() - snap.generated_at / 1000
    m, r, b = snap.meta, snap.regime, snap.balance
    print(f"{REGION_NAMES.get(region, region)} ({region})")
    print(f"  snapshot   {m.snapshot_id}  generated {age:,.0f}s ago  trigger {m.trigger_reason}")
    print(f"  regime     {r.label} (was {r.previous_label})")
    print(f"  balance    net {b.net_balance:+.2f}  coercive {b.coercive_pressure:.2f}  "
          f"fragility {b.domestic_fragility:.2f}")
    print(f"  confidence {m.snapshot_confidence:.2f}  actors {len(snap.actors)}  "
          f"evidence {len(snap.evidence)}")
    print(f"  situation  {snap.narrative.situation}")
    return 0
