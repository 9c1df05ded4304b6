"""A live view of the pipeline read from Redis alone (the demo's screen, and ``top``).

``collect`` reads one frame in three pipelined round trips (the group's state, shared with the
group gauges, then each region's latest id and count, then the latest payloads); ``render`` turns a frame into a rich
table; both are plain functions so a test can render a frame from a known Redis state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import msgspec
import redis.asyncio as aioredis
from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.table import Table
from rich.text import Text

from consumer.ops import ShardRow, Totals
from regionstream.runtime import LOG_FORMAT
from shared.group import (
    ACTIVE_CONSUMER_IDLE_S,
    ConsumerStat,
    GroupStats,
    read_shard_stats,
    total,
)
from shared.ids import text
from shared.keys import ALL_SHARD, Keys, is_sharded
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
    # The span ``rates`` are over (``rates_over``), 0 when unknown (the demo's own rates).
    rates_window_s: float = 0.0

    @property
    def stored(self) -> int:
        """Snapshots stored (the regions' index counts) in the regions this deployment's
        shards hold: all shown with one stream, the selected shards' with --shards."""
        if not sharded(self):
            return sum(r.stored for r in self.regions)
        served = {s.shard for s in self.shards} - {ALL_SHARD}
        return sum(r.stored for r in self.regions if r.region in served)


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
    delivered to the group, acked (delivered minus the growth of pending), persisted (the
    growth of the regions' stored counts: their indexes), duplicates (acked but neither
    persisted nor dead-lettered: the dedup rule's, derived as acked - persisted -
    dead-lettered, never below 0) and dead-lettered. (The consumer's log says persisted and
    duplicate too; "persisted", not "stored": the summary line has a stored= count.) A counter Redis does not report is left out (and what derives from it)."""
    dt = max(cur.at - prev.at, 1e-9)
    delivered = _per_second(cur.entries_read, prev.entries_read, dt)
    acked = (None if delivered is None
             else max(0.0, delivered - (cur.pending - prev.pending) / dt))
    persisted = max(0, cur.stored - prev.stored) / dt
    dead = _per_second(cur.dlq_added, prev.dlq_added, dt)
    duplicates = (None if acked is None or dead is None
                  else max(0.0, acked - persisted - dead))
    rates = {"published": _per_second(cur.entries_added, prev.entries_added, dt),
             "delivered": delivered, "acked": acked, "persisted": persisted,
             "duplicates": duplicates, "dead_lettered": dead}
    return {k: v for k, v in rates.items() if v is not None}


def window_base(history: Sequence[Frame], window_s: float) -> Frame:
    """The newest frame at least ``window_s`` older than the last one, the oldest while none
    is that old yet (never the last itself when there are two)."""
    last, base = history[-1], history[0]
    for frame in history:  # a deque: no slices
        if frame is last or frame.at > last.at - window_s:
            break
        base = frame
    return base


def rates_over(history: Sequence[Frame], window_s: float) -> dict[str, float]:
    """Rates from ``window_base`` to the last frame: a producer's burst every few seconds
    reads as a steady rate, not 8.0/s then 0.0/s three times. {} for fewer than two frames."""
    if len(history) < 2:
        return {}
    return rates_between(window_base(history, window_s), history[-1])


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


class Flow:
    """Items on as few lines as the width allows, two spaces apart, never one split across
    lines (one wider than the whole width is cut, with an ellipsis): the header stays whole
    at 80 columns whatever the names and figures."""

    def __init__(self, *items: Text | str) -> None:
        self.items = [i if isinstance(i, Text) else Text(i) for i in items]

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        line = Text()
        for item in self.items:
            item = item.copy()
            item.truncate(width, overflow="ellipsis")
            if line.cell_len and line.cell_len + 2 + item.cell_len > width:
                yield line
                line = Text()
            if line.cell_len:
                line.append("  ")
            line.append_text(item)
        yield line


def rate_label(name: str) -> str:
    return name.replace("_", "-")


def _header(frame: Frame) -> Group:
    """The stream's figures, the group's, then the rates: each a ``Flow``."""
    parts = [
        Flow(plain(f"stream {frame.stream}", "bold"), f"length {frame.stream_length}",
             f"lag {_lag(frame.lag)}", f"pending {frame.pending}",
             Text(f"dead letters {frame.dlq_length}", style="red" if frame.dlq_length else "")),
        Flow(plain(f"group {frame.group}", "bold"),
             f"consumers {frame.active_consumers}/{frame.consumers} active",
             f"oldest pending {age_text(frame.oldest_pending_age_s)}")]
    if frame.rates:
        over = ([Text(f"per s, last {frame.rates_window_s:.0f}s:", style="dim")]
                if frame.rates_window_s else [])
        parts.append(Flow(*over, *(f"{rate_label(k)} {v:,.1f}/s"
                                   for k, v in frame.rates.items())))
    return Group(*parts)


def _compact(**kwargs: object) -> Table:
    """A table of one line per row: no borders but the rule under its header."""
    return Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0),
                 header_style="bold", expand=False, **kwargs)  # type: ignore[arg-type]


def _consumer_table(frame: Frame, most: int | None = None) -> Table:
    """A row per consumer, by name; beyond ``most`` rows (the live view's room) those holding
    most entries stay and a last row counts the others (``regionstream pending`` lists
    them all)."""
    table = _compact()
    table.add_column("consumer", no_wrap=True, overflow="ellipsis")
    table.add_column("pending", justify="right", no_wrap=True)
    table.add_column("idle", justify="right", no_wrap=True)
    rows = sorted(frame.consumer_rows, key=lambda c: c.name)
    hidden: list[ConsumerStat] = []
    if most is not None and len(rows) > most:  # those holding most stay in view
        keep = sorted(rows, key=lambda c: (-c.pending, c.name))[:max(0, most - 1)]
        hidden = [c for c in rows if c not in keep]
        rows = [c for c in rows if c in keep]
    for c in rows:
        idle = Text(age_text(c.idle_s), style="yellow" if c.idle_s >= ACTIVE_CONSUMER_IDLE_S else "")
        table.add_row(plain(c.name), Text(str(c.pending), style="yellow" if c.pending else ""),
                      idle)
    if hidden:
        table.add_row(Text(f"{len(hidden)} more (regionstream pending)", style="dim"),
                      str(sum(c.pending for c in hidden)), "")
    return table


def sharded(frame: Frame) -> bool:
    return is_sharded(s.shard for s in frame.shards)


def shard_table(rows: Sequence[ShardRow], *, streams: bool = False,
                consumers: tuple[Sequence[RenderableType], str] | None = None) -> Table:
    """A row per shard, then the deployment's total (``Totals.over``: the figures of the
    header above it). ``pending`` names each shard's stream (``streams``); ``top`` counts each
    shard's consumers (``consumers``: a cell per row, then the total's), in ``top``'s compact
    style: a line per row, fitting 80 columns."""
    if consumers is None:
        table = Table(expand=False, header_style="bold", title="shards", title_justify="left")
    else:
        table = _compact(title="shards", title_justify="left")
    oldest, dead = ("oldest pending", "dead letters") if consumers is None else ("oldest", "DLQ")
    for col in ("shard", *(("stream",) if streams else ()), "length", "lag", "pending",
                oldest, dead, *(("consumers",) if consumers else ())):
        table.add_column(col, no_wrap=consumers is not None)
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


class _Fitted:
    """A renderable built for the width it is given (``build(width)``)."""

    def __init__(self, build: Callable[[int], RenderableType]) -> None:
        self.build = build

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.build(options.max_width)


# The region table's columns, by priority: the first four always (as wide as their widest
# cell), then each of the others while it fits; the last one that fits only partly is cut
# (with an ellipsis) if at least this wide, else left out. At 80 columns: all but the
# snapshot id.
_REGION_COLUMNS = ("region", "regime", "age", "stored", "trigger", "latest snapshot")
_ALWAYS = 4
_MIN_CUT = 12
_GAP = 2  # between two columns of a compact table


def _region_table(frame: Frame, width: int) -> Table:
    cells = [{"region": plain(row.region),
              "regime": plain(row.regime or "-", REGIME_STYLE.get(row.regime or "", "")),
              "trigger": plain(row.trigger or "-"), "age": Text(age_text(row.age_s)),
              "stored": Text(str(row.stored)),
              "latest snapshot": plain(row.snapshot_id or "-")} for row in frame.regions]
    widest = {c: max([len(c), *(row[c].cell_len for row in cells)]) for c in _REGION_COLUMNS}
    shown: dict[str, int] = {}
    used = -_GAP
    for i, name in enumerate(_REGION_COLUMNS):
        room = width - used - _GAP
        if i < _ALWAYS or widest[name] <= room:
            shown[name] = widest[name]
        elif room >= _MIN_CUT:
            shown[name] = room
        else:
            break
        used += _GAP + shown[name]
    table = _compact()
    columns = [c for c in ("region", "regime", "trigger", "age", "stored", "latest snapshot")
               if c in shown]
    for name in columns:
        table.add_column(name, no_wrap=True, overflow="ellipsis", min_width=shown[name],
                         max_width=shown[name],
                         justify="right" if name in ("age", "stored") else "left")
    for row in cells:
        table.add_row(*(row[c] for c in columns))
    return table


def render(frame: Frame, height: int | None = None) -> RenderableType:
    """The view, laid out for 80x24 first: the header (never wider than the console: it
    breaks between figures), the shards (--shard-by region), the consumers, then the regions:
    what an operator needs most comes first. ``height`` (the live view's terminal): what does
    not fit is left out from the bottom up, the regions first (a line says so), then consumer
    rows (a last row counts the rest); nothing is left out without it (``top --once``)."""
    return _View(frame, height)


class _View:
    def __init__(self, frame: Frame, height: int | None) -> None:
        self.frame, self.height = frame, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        frame = self.frame
        parts: list[RenderableType] = []
        if frame.warning:
            parts.append(plain(f"warning: {frame.warning}", "bold red"))
        parts.append(_header(frame))
        if sharded(frame):
            parts.append(shard_table([s.row for s in frame.shards],
                                     consumers=_consumer_cells(frame)))
        tail = [plain(frame.note, "dim")] if frame.note else []
        regions: RenderableType = _Fitted(lambda width: _region_table(frame, width))
        rows = None  # every consumer
        if self.height is not None:
            def lines(part: RenderableType) -> int:
                return len(console.render_lines(part, options, pad=False))

            room = self.height - sum(lines(p) for p in (*parts, *tail))
            consumers = 2 + len(frame.consumer_rows) if frame.consumer_rows else 0
            if consumers + lines(regions) > room:
                regions = Text(f"{len(frame.regions)} regions left out: the terminal is too "
                               "short (top --once shows them)", style="dim")
                rows = max(1, room - 1 - 2)  # the line above, the table's header and rule
        if frame.consumer_rows:
            parts.append(_consumer_table(frame, rows))
        yield from (*parts, regions, *tail)


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


class LiveLog(logging.Handler):
    """Log records printed through the live view's console (above the view: a write straight
    to the terminal would tear it), in ``formatter``'s format: the one --plain logs in."""

    def __init__(self, console: Console, formatter: logging.Formatter) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(Text(self.format(record)))  # plain text, never markup
        except Exception:  # logging's contract: a handler never raises
            self.handleError(record)


@contextlib.contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """While a rich Live view draws on ``console``, the root logger's records go through it:
    the root's own stream handler would write straight into the middle of the table and tear
    it; printed through the Live's console a record lands above the view. In the format of
    the root's own handler (the command's: timestamp, level, logger), so that ``top``, the
    demo and ``--plain`` log alike."""
    root = logging.getLogger()
    saved = root.handlers[:]
    formatter = next((h.formatter for h in saved if h.formatter is not None), None)
    live = LiveLog(console, formatter or logging.Formatter(LOG_FORMAT))
    for h in saved:
        root.removeHandler(h)
    root.addHandler(live)
    try:
        yield
    finally:
        root.removeHandler(live)
        for h in saved:
            root.addHandler(h)
