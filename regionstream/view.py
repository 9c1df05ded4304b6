"""A live view of the pipeline read from Redis alone (the demo's screen, and ``top``).

``collect`` reads one frame in two pipelined round trips; ``render`` turns a frame into a rich
table; both are plain functions so a test can render a frame from a known Redis state."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from rich.console import Group
from rich.table import Table
from rich.text import Text

from shared.group import group_state
from shared.keys import Keys


class _Head(msgspec.Struct):
    """Just the fields the view shows, decoded without the rest of the snapshot."""

    class _Meta(msgspec.Struct):
        snapshot_id: str
        trigger_reason: str

    class _Regime(msgspec.Struct):
        label: str

    generated_at: int
    meta: _Meta
    regime: _Regime


_HEAD = msgspec.json.Decoder(_Head)


@dataclass(frozen=True)
class RegionRow:
    region: str
    snapshot_id: str | None = None
    regime: str | None = None
    trigger: str | None = None
    age_s: float | None = None
    stored: int = 0


@dataclass(frozen=True)
class Frame:
    at: float
    stream: str
    group: str
    stream_length: int = 0
    dlq_length: int = 0
    lag: int | None = None
    pending: int = 0
    consumers: int = 0
    regions: list[RegionRow] = field(default_factory=list)
    rates: dict[str, float] = field(default_factory=dict)  # outcome -> per second
    note: str = ""


async def collect(redis: aioredis.Redis, keys: Keys, regions: tuple[str, ...],
                  *, now: float | None = None) -> Frame:
    now = time.time() if now is None else now
    state = await group_state(redis, keys)
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(keys.dlq)
    for r in regions:
        pipe.get(keys.latest(r))
        pipe.zcard(keys.index(r))
    replies = await pipe.execute()
    dlq_len, pairs = int(replies[0]), replies[1:]
    ids = {r: pairs[2 * i] for i, r in enumerate(regions)}
    counts = {r: int(pairs[2 * i + 1]) for i, r in enumerate(regions)}
    pipe = redis.pipeline(transaction=False)
    with_latest = [r for r in regions if ids[r] is not None]
    for r in with_latest:
        pipe.get(keys.by_id(r, ids[r].decode()))
    payloads = dict(zip(with_latest, await pipe.execute(), strict=True)) if with_latest else {}
    rows = []
    for r in regions:
        payload = payloads.get(r)
        if payload is None:
            rows.append(RegionRow(r, stored=counts[r]))
            continue
        head = _HEAD.decode(payload)
        rows.append(RegionRow(r, head.meta.snapshot_id, head.regime.label,
                              head.meta.trigger_reason, now - head.generated_at / 1000,
                              counts[r]))
    return Frame(now, keys.stream, keys.group, state.stream_length, dlq_len, state.lag,
                 state.pending, state.consumers, rows)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


REGIME_STYLE = {"calm": "green", "managed_deescalation": "green",
                "stressed_equilibrium": "yellow", "coercive_stalemate": "yellow",
                "fragmentation_risk": "red", "escalation_ladder": "bold red"}


def render(frame: Frame) -> Group:
    head = Table.grid(padding=(0, 2))
    lag = "?" if frame.lag is None else str(frame.lag)
    head.add_row(
        Text(f"stream {frame.stream}", style="bold"), f"length {frame.stream_length}",
        f"group {frame.group}", f"consumers {frame.consumers}", f"lag {lag}",
        f"pending {frame.pending}",
        Text(f"dead letters {frame.dlq_length}", style="red" if frame.dlq_length else ""))
    if frame.rates:
        head.add_row(*[f"{k} {v:,.1f}/s" for k, v in frame.rates.items()])
    table = Table(expand=False, header_style="bold")
    for col in ("region", "regime", "trigger", "age", "stored", "latest snapshot"):
        table.add_column(col)
    for row in frame.regions:
        table.add_row(row.region, Text(row.regime or "-", style=REGIME_STYLE.get(row.regime or "", "")),
                      row.trigger or "-", _age(row.age_s), str(row.stored), row.snapshot_id or "-")
    parts: list[Table | Text] = [head, table]
    if frame.note:
        parts.append(Text(frame.note, style="dim"))
    return Group(*parts)


def summary_line(frame: Frame) -> str:
    """The one-line form for a non-terminal (logs, CI)."""
    with_latest = sum(1 for r in frame.regions if r.snapshot_id)
    rates = " ".join(f"{k}={v:.1f}/s" for k, v in frame.rates.items())
    return (f"stream={frame.stream_length} lag={frame.lag} pending={frame.pending} "
            f"dlq={frame.dlq_length} regions_with_latest={with_latest}/{len(frame.regions)} "
            f"stored={sum(r.stored for r in frame.regions)} {rates}").rstrip()
