"""PNG plots of a results document (matplotlib, Agg: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after use("Agg"): the backend is chosen first

from bench.drain import PHASES, TARGET_CPU_US_PER_MSG, phase_figure

DPI = 110
WIDE = (9.0, 4.8)
WIDE_TALL = (10.0, 5.4)
COLORS = {"consumer": "tab:blue", "baseline": "tab:red", "ceiling": "tab:gray",
          "unchecked": "lightsteelblue", "batched": "tab:orange"}
PHASE_HATCH = {"cold": "", "warm": "//"}
PHASE_WIDTH = 0.4  # a role's cold and warm bars side by side
LINESTYLES = ("-", "--", ":", "-.")
HEADROOM = 1.2  # y-axis room above the highest point
CLUSTER_SINGLE_COLOR = "tab:green"
CLUSTER_NODE_COLORS = ("tab:blue", "tab:orange", "tab:purple")
GROUP_WIDTH = 0.8


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _subtitle(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    kind = "quick smoke run" if doc["quick"] else "full run"
    return f"{kind}, {doc['started_at']}, {m['cpus_available']} CPUs, {m['redis_server'][:22]}"


def throughput(doc: dict[str, Any], out: Path) -> Path | None:
    """The drain: msg/s of every role, cold and warm (left); CPU per message of the contender's
    process and of Redis against the target, for the consumer, the batched contender and the
    floor (right; the baseline's hundreds of µs would flatten them)."""
    d = doc["scenarios"].get("drain")
    if not d:
        return None
    names = {"baseline": "baseline\n(upstream)", "consumer": "consumer",
             "batched": "batched\n(hand-written)", "unchecked": "consumer without\npayload check",
             "ceiling": "floor\n(read + ack)"}
    fig, (left, right) = plt.subplots(1, 2, figsize=WIDE_TALL)
    for i, role in enumerate(names):
        for j, phase in enumerate(PHASES):
            rate = phase_figure(d, role, phase, "msgs_per_s")
            if rate is None:
                continue
            bar = left.bar(i + (j - 0.5) * PHASE_WIDTH, rate, PHASE_WIDTH * 0.9,
                           color=COLORS[role], hatch=PHASE_HATCH[phase],
                           edgecolor="white")
            left.annotate(f"{rate:,.0f}", (bar[0].get_x() + bar[0].get_width() / 2, rate),
                          ha="center", va="bottom", fontsize=7, rotation=90)
    left.set_xticks(range(len(names)), list(names.values()), fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("messages / s (log); plain: cold, hatched: warm")
    left.margins(y=0.3)
    left.set_title(f"{d['ratio_vs_baseline']}x baseline, {d['vs_batched']['cold']['msgs_per_s']}"
                   f"x batched (cold)", fontsize=9)
    roles = ("consumer", "batched", "ceiling")
    sides = (("consumer process", "cpu_us_per_msg", "tab:blue"),
             ("Redis", "redis_cpu_us_per_msg", "tab:red"))
    width = GROUP_WIDTH / (len(sides) * len(PHASES))
    for i, role in enumerate(roles):
        for k, (side, key, color) in enumerate(sides):
            for j, phase in enumerate(PHASES):
                at = i - GROUP_WIDTH / 2 + width * (k * len(PHASES) + j + 0.5)
                right.bar(at, phase_figure(d, role, phase, key) or 0, width * 0.9, color=color,
                          hatch=PHASE_HATCH[phase], edgecolor="white",
                          label=f"{side}, {phase}" if i == 0 else None)
    right.axhline(TARGET_CPU_US_PER_MSG, color="black", linewidth=0.8, linestyle=":",
                  label=f"target: {TARGET_CPU_US_PER_MSG:g}")
    right.set_xticks(range(len(roles)), [names[r] for r in roles], fontsize=8)
    right.set_ylabel("CPU-µs per message")
    right.margins(y=0.2)
    right.legend(fontsize=7, loc="upper right")
    right.set_title("CPU per message, consumer process and Redis", fontsize=9)
    fig.suptitle(f"Drain, {d['messages']:,} snapshots (~{d['mean_payload_bytes']} B), each role "
                 f"on a fresh redis-server\n{_subtitle(doc)}", fontsize=9)
    return _save(fig, out / "throughput.png")


def latency_cdf(doc: dict[str, Any], out: Path) -> Path | None:
    d = doc["scenarios"].get("latency")
    if not d:
        return None
    fig, ax = plt.subplots(figsize=WIDE)
    for i, (rate, figures) in enumerate(sorted(d["rates"].items(), key=lambda kv: int(kv[0]))):
        for role in ("consumer", "baseline"):
            pts = figures[role]["cdf"]
            if not pts:
                continue
            p99 = figures[role]["p99_ms"]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[role],
                    linestyle=LINESTYLES[i % len(LINESTYLES)],
                    label=f"{role} @ {int(rate):,}/s (p99 "
                          f"{'unbounded' if p99 is None else f'{p99:.1f} ms'})")
    ax.axhline(0.99, color="black", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("entry id time -> ack (ms, log)")
    ax.set_ylabel("fraction of messages")
    ax.set_ylim(0, 1.01)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Latency under steady load (CDF)\n{_subtitle(doc)}", fontsize=10)
    return _save(fig, out / "latency_cdf.png")


def scaling(doc: dict[str, Any], out: Path) -> Path | None:
    d = doc["scenarios"].get("scaling")
    if not d:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=WIDE)
    procs = [r["processes"] for r in d["runs"]]
    left.plot(procs, [r["msgs_per_s"] for r in d["runs"]], marker="o",
              color=COLORS["consumer"], label="consumer")
    left.axhline(d["baseline"]["msgs_per_s"], color=COLORS["baseline"], linestyle="--",
                 label="baseline (1 process)")
    left.axvline(d["cpus_available"], color="black", linewidth=0.5, linestyle=":",
                 label=f"{d['cpus_available']} CPUs")
    left.set_xticks(procs)
    left.set_xlabel("consumer processes")
    left.set_ylabel("messages / s")
    left.set_ylim(bottom=0)
    left.legend(fontsize=8)
    left.set_title(f"Scaling, {d['messages']:,} snapshots", fontsize=10)
    mem = d["memory"]
    samples = mem["rss_samples_mib"]
    right.plot([s[0] for s in samples], [s[1] for s in samples], marker=".",
               color=COLORS["consumer"])
    right.set_xlabel("messages acknowledged")
    right.set_ylabel("consumer RSS (MiB)")
    right.set_ylim(0, max(s[1] for s in samples) * HEADROOM)
    growth = mem["rss_growth"]
    right.set_title(f"Memory: {'n/a' if growth is None else f'{growth:+.1%}'} from "
                    f"{mem['checkpoint_messages']:,} to {mem['messages_reached']:,}",
                    fontsize=10)
    fig.suptitle(_subtitle(doc), fontsize=9)
    return _save(fig, out / "scaling.png")


def seed_cycle(doc: dict[str, Any], out: Path) -> Path | None:
    d = doc["scenarios"].get("seed_cycle")
    if not d:
        return None
    fig, ax = plt.subplots(figsize=WIDE)
    for row, role in enumerate(("consumer", "baseline")):
        done = _cycle_row(ax, row, d[role], COLORS[role])
        ax.annotate(f"last region persisted at {done} RTT", (done, row + 0.25), fontsize=9)
    ax.set_yticks([0, 1], ["consumer", "baseline"])
    ax.set_xlabel(f"round trips ({d['rtt_ms']:.0f} ms) after the first entry id; "
                  "dots: XACKs")
    ax.set_ylim(-0.6, 1.8)
    ax.set_title(f"The seed's cycle, 8 regions at {d['rtt_ms']:.0f} ms RTT: "
                 f"{d['ratio_vs_baseline']}x faster\n{_subtitle(doc)}", fontsize=10)
    return _save(fig, out / "seed_cycle.png")


def _cycle_row(ax: Any, row: int, figures: dict[str, Any], color: str) -> float:
    """One contender's cycle on row ``row``: its XACKs as dots, a bar to its last persisted
    region; returns that time (RTT)."""
    acks = figures["xack_times_rtt"]
    ax.scatter(acks, [row] * len(acks), color=color, zorder=3)
    done: float = figures["first_id_to_last_persisted_rtt"]
    ax.barh(row, done, color=color, alpha=0.25)
    return done


def cluster_seed_cycle(doc: dict[str, Any], out: Path) -> Path | None:
    d = doc["scenarios"].get("cluster_seed_cycle")
    if not d:
        return None
    fig, ax = plt.subplots(figsize=WIDE)
    rows = (("cluster", f"cluster\n({d['masters']} masters)", COLORS["consumer"]),
            ("single_server", "single server", CLUSTER_SINGLE_COLOR))
    for row, (key, _, color) in enumerate(rows):
        done = _cycle_row(ax, row, d[key], color)
        ax.annotate(f"last region persisted at {done} RTT; entry-id spread "
                    f"{d[key]['entry_id_spread_rtt']} RTT", (0.02, row + 0.28), fontsize=9)
    ax.axvline(1.5, color="black", linewidth=0.8, linestyle=":", label="target: 1.5 RTT")
    ax.set_yticks([0, 1], [r[1] for r in rows])
    ax.set_xlabel(f"round trips ({d['rtt_ms']:.0f} ms) after the first entry id; dots: XACKs")
    ax.set_xlim(0, max(2.0, max(d[k]["first_id_to_last_persisted_rtt"] for k, _, _ in rows)
                       * HEADROOM))
    ax.set_ylim(-0.6, 1.8)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(f"The seed's cycle, 8 region shards at {d['rtt_ms']:.0f} ms RTT, a delay proxy "
                 f"per node: single server / cluster = {d['ratio_vs_baseline']}\n"
                 f"{_subtitle(doc)}", fontsize=10)
    return _save(fig, out / "cluster_seed_cycle.png")


def cluster_drain(doc: dict[str, Any], out: Path) -> Path | None:
    d = doc["scenarios"].get("cluster_drain")
    if not d:
        return None
    groups = [("single\nserver", d["single_server"])] + [
        (f"{r['masters']} master{'s' if r['masters'] > 1 else ''}", r) for r in d["runs"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=WIDE)
    for x, (_, run) in enumerate(groups):
        nodes = run["nodes"]
        width = GROUP_WIDTH / (len(nodes) + 1)  # the nodes, then the consumer
        for j, node in enumerate(nodes):
            at = x - GROUP_WIDTH / 2 + width * (j + 0.5)
            bar = left.bar(at, node["redis_cpu_us_per_msg"] or 0, width * 0.9,
                           color=CLUSTER_NODE_COLORS[j % len(CLUSTER_NODE_COLORS)],
                           label="Redis node (1st, 2nd, 3rd)" if x == 0 else None)
            share = node["share_of_redis_cpu"]
            left.annotate(f"{len(node['shards'])} sh\n{share:.0%}" if share is not None else "",
                          (at, bar[0].get_height()), ha="center", va="bottom", fontsize=7)
        left.bar(x + GROUP_WIDTH / 2 - width / 2, run["consumer_cpu_us_per_msg"] or 0,
                 width * 0.9, color="white", edgecolor="black", hatch="//",
                 label="consumer process" if x == 0 else None)
    left.set_xticks(range(len(groups)), [g[0] for g in groups])
    left.set_ylabel("CPU-µs per message")
    left.set_title("CPU per message: each Redis node (its shards' messages;\n"
                   "label: shards, share of Redis CPU) and the consumer", fontsize=9)
    left.margins(y=0.25)
    left.legend(fontsize=8, loc="upper left")
    xs = range(len(groups))
    right.bar(xs, [g[1]["projected"]["redis_bound_msgs_per_s"] or 0 for g in groups],
              color=COLORS["consumer"], alpha=0.6,
              label="projected: Redis side, one core per master")
    right.plot(xs, [g[1]["projected"]["msgs_per_s_per_consumer_process"] or 0 for g in groups],
               marker="o", color="black", linestyle="--",
               label="projected: one consumer process")
    right.plot(xs, [g[1]["msgs_per_s"] for g in groups], marker="x", linestyle="none",
               color=COLORS["baseline"],
               label=f"measured here ({d['cpus_available']} CPUs shared: not scaling)")
    right.set_xticks(list(xs), [g[0] for g in groups])
    right.set_ylabel("messages / s")
    right.set_ylim(bottom=0)
    right.margins(y=0.2)
    right.legend(fontsize=7, loc="upper left")
    right.set_title(f"Capacity from CPU per message: 3 vs 1 master "
                    f"{d['projected_redis_bound_3_vs_1_master']}x", fontsize=9)
    fig.suptitle(f"Drain, {d['messages']:,} snapshots over 8 region shards on a cluster\n"
                 f"{_subtitle(doc)}", fontsize=9)
    return _save(fig, out / "cluster_drain.png")


def write_all(doc: dict[str, Any], out: Path) -> list[Path]:
    made = [f(doc, out) for f in (seed_cycle, throughput, latency_cdf, scaling,
                                  cluster_seed_cycle, cluster_drain)]
    return [p for p in made if p is not None]
