"""A live view of the pipeline read from Redis alone (the demo's screen, and ``top``).

``collect`` reads one frame in three pipelined round trips (the group's state, shared with the
group gauges, then each region's latest id and count, then the latest payloads); ``render`` turns a frame into a rich
table; both are plain functions so a test can render a frame from a known Redis state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from rich.console import Console, Group, RenderableType
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from consumer.ops import ShardRow, Totals
from shared.group import (
    ACTIVE_CONSUMER_IDLE_S,
    ConsumerStat,
    GroupStats,
    read_shard_stats,
    total,
)
from shared.ids import text
from shared.keys import Keys, is_sharded
from shared.layout import layout_mismatch
from shared.shards import Deployment, retrying


def printable(text: str) -> str:
    """``text`` made safe for a terminal: every character Python does not call printable
    (C0 and C1 controls such as ESC and CSI, DEL, bidi overrides and other format characters,
    line separators, lone surrogates) becomes its backslash escape, so untrusted text can
    neither move the cursor, retitle the window nor clear the screen. Newlines and tabs are
    escaped too: each value is shown on its own line or in its own cell."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


def plain(text: str, style: str = "") -> Text:
    """Untrusted text as a rich cell or line: escaped (``printable``), and never read as
    console markup (a consumer named ``w[/]`` would make rich raise) or emoji codes."""
    return Text(printable(text), style=style)


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
UNREADABLE = "(unreadable)"  # the regime shown for a latest payload that does not decode


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
    oldest_pending_age_s: float | None = None
    active_consumers: int = 0
    consumer_rows: tuple[ConsumerStat, ...] = ()
    # Ever-increasing counters from Redis (None before Redis 7.0): ``rates_between`` turns two
    # frames into per-second rates without any process's metrics.
    entries_added: int | None = None
    entries_read: int | None = None
    dlq_added: int | None = None
    shards: tuple[ShardStat, ...] = ()  # a row per shard (one, "all", with --shard-by none)
    # Entries waiting in the other --shard-by layout's streams (shared.layout), else "".
    warning: str = ""


@dataclass(frozen=True)
class ShardStat:
    """One shard in the view: its row of the shard table, and the whole read (its consumers,
    its counters)."""

    row: ShardRow
    stats: GroupStats

    @property
    def shard(self) -> str:
        return self.row.shard


async def collect(deployment: Deployment, keys: Keys, regions: tuple[str, ...],
                  *, now: float | None = None) -> Frame:
    """One frame: every shard's group state (concurrently, a round trip each), then the
    regions' latest ids and counts and their payloads (two round trips per node)."""
    now = time.time() if now is None else now
    per_shard, mismatch = await asyncio.gather(read_shard_stats(deployment),
                                               layout_mismatch(deployment, keys, regions))
    shard_rows = tuple(ShardStat(ShardRow.of(sh, st), st)
                       for sh, st in zip(deployment.shards, per_shard, strict=True))
    parts = await retrying(deployment, lambda: asyncio.gather(*(
        _region_rows(client, keys, rs, now)
        for client, rs in deployment.regions_by_node(keys, regions))))
    found = {row.region: row for rows in parts for row in rows}
    return _frame(now, keys, shard_rows, [found[r] for r in regions], mismatch or "")


async def _region_rows(redis: aioredis.Redis, keys: Keys, regions: list[str], now: float
                       ) -> list[RegionRow]:
    pipe = redis.pipeline(transaction=False)
    for r in regions:
        pipe.get(keys.latest(r))
        pipe.zcard(keys.index(r))
    pairs = await pipe.execute()
    ids = {r: pairs[2 * i] for i, r in enumerate(regions)}
    counts = {r: int(pairs[2 * i + 1]) for i, r in enumerate(regions)}
    pipe = redis.pipeline(transaction=False)
    with_latest = [r for r in regions if ids[r] is not None]
    for r in with_latest:
        pipe.get(keys.by_id(r, text(ids[r])))
    payloads = dict(zip(with_latest, await pipe.execute(), strict=True)) if with_latest else {}
    rows = []
    for r in regions:
        payload = payloads.get(r)
        if payload is None:
            rows.append(RegionRow(r, stored=counts[r]))
            continue
        try:
            head = _HEAD.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Not what the consumer stores (it validates every payload): a hand-written or
            # corrupted key. The view shows it, instead of dying on it.
            rows.append(RegionRow(r, text(ids[r]), UNREADABLE, stored=counts[r]))
            continue
        rows.append(RegionRow(r, head.meta.snapshot_id, head.regime.label,
                              head.meta.trigger_reason, now - head.generated_at / 1000,
                              counts[r]))
    return rows


def _merged(rows: Iterable[ConsumerStat]) -> tuple[ConsumerStat, ...]:
    """One row per consumer name over all shards (a process serves every shard under the
    same names): its pending summed, its most recent activity."""
    by_name: dict[str, ConsumerStat] = {}
    for c in rows:
        seen = by_name.get(c.name)
        by_name[c.name] = c if seen is None else ConsumerStat(
            c.name, seen.pending + c.pending, min(seen.idle_s, c.idle_s))
    return tuple(by_name.values())


def _frame(now: float, keys: Keys, shards: tuple[ShardStat, ...], rows: list[RegionRow],
           warning: str = "") -> Frame:
    stats = [s.stats for s in shards]
    t = Totals.over([s.row for s in shards])
    consumers = _merged(c for s in stats for c in s.consumers)
    return Frame(now, keys.stream, keys.group, t.stream_length, t.dlq_length, t.lag, t.pending,
                 len(consumers), rows, oldest_pending_age_s=t.oldest_pending_age_s,
                 active_consumers=sum(1 for c in consumers
                                      if c.idle_s < ACTIVE_CONSUMER_IDLE_S),
                 consumer_rows=consumers,
                 entries_added=total([s.entries_added for s in stats]),
                 entries_read=total([s.entries_read for s in stats]),
                 dlq_added=total([s.dlq_added for s in stats]), shards=shards,
                 warning=warning)


def _per_second(new: int | None, old: int | None, dt: float) -> float | None:
    return None if new is None or old is None else max(0, new - old) / dt


def rates_between(prev: Frame, cur: Frame) -> dict[str, float]:
    """Per-second rates between two frames, from Redis's own counters: published (XADD),
    delivered to the group, acknowledged (delivered minus the growth of pending), and
    dead-lettered. A counter Redis does not report is left out."""
    dt = max(cur.at - prev.at, 1e-9)
    delivered = _per_second(cur.entries_read, prev.entries_read, dt)
    acked = (None if delivered is None
             else max(0.0, delivered - (cur.pending - prev.pending) / dt))
    rates = {"published": _per_second(cur.entries_added, prev.entries_added, dt),
             "delivered": delivered, "acked": acked,
             "dead_lettered": _per_second(cur.dlq_added, prev.dlq_added, dt)}
    return {k: v for k, v in rates.items() if v is not None}


def age_text(seconds: float | None) -> str:
    """An age for people: 42s, 17m, 3.5h; "-" for none."""
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


def _header(frame: Frame) -> Table:
    head = Table.grid(padding=(0, 2))
    lag = _lag(frame.lag)
    oldest = age_text(frame.oldest_pending_age_s)
    head.add_row(
        plain(f"stream {frame.stream}", "bold"), f"length {frame.stream_length}",
        Text(f"dead letters {frame.dlq_length}", style="red" if frame.dlq_length else ""))
    head.add_row(
        plain(f"group {frame.group}", "bold"),
        f"consumers {frame.active_consumers}/{frame.consumers} active", f"lag {lag}",
        f"pending {frame.pending}", f"oldest pending {oldest}")
    if frame.rates:
        head.add_row(*[f"{k} {v:,.1f}/s" for k, v in frame.rates.items()])
    return head


def _consumer_table(frame: Frame) -> Table:
    table = Table(expand=False, header_style="bold", title="consumers", title_justify="left")
    for col in ("consumer", "pending", "idle"):
        table.add_column(col)
    for c in sorted(frame.consumer_rows, key=lambda c: c.name):
        idle = Text(age_text(c.idle_s), style="yellow" if c.idle_s >= ACTIVE_CONSUMER_IDLE_S else "")
        table.add_row(plain(c.name), Text(str(c.pending), style="yellow" if c.pending else ""),
                      idle)
    return table


def sharded(frame: Frame) -> bool:
    return is_sharded(s.shard for s in frame.shards)


def shard_table(rows: Sequence[ShardRow], *, streams: bool = False,
                consumers: tuple[Sequence[RenderableType], str] | None = None) -> Table:
    """A row per shard, then the deployment's total (``Totals.over``: the figures of the
    header above it). ``pending`` names each shard's stream (``streams``); ``top`` counts each
    shard's consumers (``consumers``: a cell per row, then the total's)."""
    table = Table(expand=False, header_style="bold", title="shards", title_justify="left")
    for col in ("shard", *(("stream",) if streams else ()), "length", "lag", "pending",
                "oldest pending", "dead letters", *(("consumers",) if consumers else ())):
        table.add_column(col)
    for i, r in enumerate(rows):
        stream = r.stream if r.group_exists else f"{r.stream} (no group)"
        table.add_row(plain(r.shard), *((plain(stream),) if streams else ()),
                      str(r.stream_length), _lag(r.lag),
                      Text(str(r.pending), style="yellow" if r.pending else ""),
                      age_text(r.oldest_pending_age_s),
                      Text(str(r.dlq_length), style="red" if r.dlq_length else ""),
                      *((consumers[0][i],) if consumers else ()))
    t = Totals.over(rows)
    table.add_row("total", *((f"{len(rows)} shards",) if streams else ()),
                  str(t.stream_length), _lag(t.lag), str(t.pending),
                  age_text(t.oldest_pending_age_s), str(t.dlq_length),
                  *((consumers[1],) if consumers else ()), style="bold")
    return table


def _lag(lag: int | None) -> str:
    return "?" if lag is None else str(lag)


def _consumer_cells(frame: Frame) -> tuple[list[RenderableType], str]:
    """``top``'s consumers column: active/known per shard ("no group" where it is missing),
    then over the deployment (a consumer serves every shard under one name)."""
    cells: list[RenderableType] = [
        f"{s.stats.active_consumers}/{len(s.stats.consumers)}" if s.stats.exists
        else Text("no group", style="yellow") for s in frame.shards]
    return cells, f"{frame.active_consumers}/{frame.consumers}"


def render(frame: Frame) -> Group:
    table = Table(expand=False, header_style="bold")
    for col in ("region", "regime", "trigger", "age", "stored", "latest snapshot"):
        table.add_column(col)
    for row in frame.regions:
        table.add_row(plain(row.region),
                      plain(row.regime or "-", REGIME_STYLE.get(row.regime or "", "")),
                      plain(row.trigger or "-"), age_text(row.age_s), str(row.stored),
                      plain(row.snapshot_id or "-"))
    parts: list[Table | Text] = [_header(frame)]
    if frame.warning:
        parts.insert(0, plain(f"warning: {frame.warning}", "bold red"))
    if sharded(frame):
        parts.append(shard_table([s.row for s in frame.shards],
                                 consumers=_consumer_cells(frame)))
    parts.append(table)
    if frame.consumer_rows:
        parts.append(_consumer_table(frame))
    if frame.note:
        parts.append(plain(frame.note, "dim"))
    return Group(*parts)


def summary_line(frame: Frame) -> str:
    """The one-line form for a non-terminal (logs, CI)."""
    with_latest = sum(1 for r in frame.regions if r.snapshot_id)
    rates = " ".join(f"{k}={v:.1f}/s" for k, v in frame.rates.items())
    shards = f"shards={len(frame.shards)} " if sharded(frame) else ""
    return (f"{shards}stream={frame.stream_length} lag={frame.lag} pending={frame.pending} "
            f"consumers={frame.active_consumers}/{frame.consumers} "
            f"oldest_pending={age_text(frame.oldest_pending_age_s)} dlq={frame.dlq_length} regions_with_latest={with_latest}/{len(frame.regions)} "
            f"stored={sum(r.stored for r in frame.regions)} {rates}").rstrip() + (
                f" warning: {printable(frame.warning)}" if frame.warning else "")


@contextlib.contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """While a rich Live view draws on ``console``, log records go through that console too.

    The root logger's stream handler writes straight to the terminal, into the middle of the
    table, and tears it; printed through the Live's console a record lands above the view."""
    root = logging.getLogger()
    saved = root.handlers[:]
    rich = RichHandler(console=console, show_path=False)
    for h in saved:
        root.removeHandler(h)
    root.addHandler(rich)
    try:
        yield
    finally:
        root.removeHandler(rich)
        for h in saved:
            root.addHandler(h)
