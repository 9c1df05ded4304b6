"""A markdown table of a results document (pasted into docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.drain import PHASES, phase_figure

SUMMARY_FILE = "summary.md"
README_DRAIN_FILE = "readme-drain.md"


def _yes(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[met]


def _na(v: object) -> str:
    """A figure as measured, or "n/a" for one that was not (a drain that did not run)."""
    return "n/a" if v is None else str(v)


def _seed(d: dict[str, Any]) -> list[str]:
    return _cycle_rows(f"1 seed cycle @ {d['rtt_ms']:.0f} ms RTT", d["consumer"], d["targets"],
                       f"baseline {d['baseline']['first_id_to_last_persisted_rtt']} RTT",
                       f"{d['ratio_vs_baseline']}x")


def _cycle_rows(title: str, c: dict[str, Any], t: dict[str, Any], compared: str, vs: str
                ) -> list[str]:
    """The two rows of a seed-cycle scenario: ``c`` its figures, ``t`` its targets."""
    return [
        f"| {title} | entry-id spread | {c['entry_id_spread_rtt']} RTT "
        f"({c['entry_id_spread_ms']} ms) | < 0.5 RTT | {_yes(t['entry_id_spread_rtt']['met'])} | |",
        f"| | first id -> last region persisted | {c['first_id_to_last_persisted_rtt']} RTT "
        f"({compared}) | <= 1.5 RTT | {_yes(t['first_id_to_last_persisted_rtt']['met'])} | "
        f"{vs} |",
    ]


def _drain(d: dict[str, Any]) -> list[str]:
    """Per phase (cold, warm): msg/s, then CPU per message of the consumer's process and of
    Redis, each beside the batched contender's and the floor's (the ceiling: read + ack)."""
    t = d["targets"]
    rows = []
    for phase in PHASES:
        vs = d["vs_batched"][phase]
        rates = " / ".join(_count(phase_figure(d, role, phase, "msgs_per_s"))
                           for role in ("consumer", "batched", "ceiling", "baseline"))
        cold = phase == "cold"
        head = f"| {_drain_title(d)} |" if cold else "| |"
        tail = (f">= 15x baseline | {_yes(t['vs_baseline']['met'])} | "
                f"{d['ratio_vs_baseline']}x (cold) |") if cold else "- | - | |"
        rows.append(f"{head} {phase}: msg/s, consumer / batched / floor / baseline | {rates} "
                    f"({_na(vs['msgs_per_s'])}x batched) | {tail}")
        for side, key, of in (("consumer", "cpu_us_per_msg", "consumer_cpu"),
                              ("Redis", "redis_cpu_us_per_msg", "redis_cpu")):
            cpu = " / ".join(_na(phase_figure(d, role, phase, key))
                             for role in ("consumer", "batched", "ceiling"))
            target = t[f"{of}_{phase}"]
            rows.append(f"| | {phase}: {side} CPU-µs/msg, consumer / batched / floor | {cpu} "
                        f"(batched / consumer {_na(vs[of])}x) | {target['target']} | "
                        f"{_yes(target['met'])} | |")
        if cold:
            rows.append(f"| | cold: share of read+ack ceiling | {d['fraction_of_ceiling']:.0%} "
                        f"| >= 25% | {_yes(t['of_ceiling']['met'])} | |")
    check = d["check_cpu_us_per_msg"]
    unchecked = " / ".join(f"{_count(phase_figure(d, 'unchecked', p, 'msgs_per_s'))} msg/s, "
                           f"{_na(phase_figure(d, 'unchecked', p, 'cpu_us_per_msg'))} "
                           "CPU-µs/msg" for p in PHASES)
    rows.append(f"| | diagnostic: consumer without the payload check (decode + validation), "
                f"cold / warm | {unchecked}: the check costs {_na(check['cold'])} / "
                f"{_na(check['warm'])} CPU-µs/msg | - | - | |")
    if "note" in d:
        rows.append(f"| | note | {d['note']} | - | - | |")
    return rows


def _drain_title(d: dict[str, Any]) -> str:
    return (f"2 drain {d['messages']:,} x ~{d['mean_payload_bytes'] / 1024:.1f} KB, each role "
            "on a fresh redis-server")


def _ms(v: float | None) -> str:
    return "unbounded" if v is None else f"{v:.1f}"


def _latency(d: dict[str, Any]) -> list[str]:
    rows: list[str] = []
    for rate, f in sorted(d["rates"].items(), key=lambda kv: int(kv[0])):
        c, b = f["consumer"], f["baseline"]
        target = "< 10 ms" if rate == "1000" else "-"
        met = d["targets"]["p99_at_1000"]["met"] if rate == "1000" else None
        vs = f["ratio_vs_baseline_p99"]
        vs_text = f"{vs}x" if vs is not None else (
            f">= {f.get('ratio_vs_baseline_p99_at_least')}x")
        rows.append(
            f"| {'3 latency' if not rows else ''} | p50 / p99 @ {int(rate):,} msg/s | "
            f"{_ms(c['p50_ms'])} / {_ms(c['p99_ms'])} ms (baseline {_ms(b['p50_ms'])} / "
            f"{_ms(b['p99_ms'])}) | {target} | {_yes(met)} | {vs_text} |")
    return rows


def _scaling(d: dict[str, Any]) -> list[str]:
    runs = " / ".join(f"{r['msgs_per_s']:,.0f}" for r in d["runs"])
    procs = "/".join(str(r["processes"]) for r in d["runs"])
    m = d["memory"]
    cut = " (cut by time budget)" if "trimmed" in m else ""
    return [
        f"| 4 scaling ({d['cpus_available']} CPUs) | msg/s with {procs} processes | {runs} | "
        f"- | - | {d['ratio_vs_baseline']}x (1 process) |",
        f"| | RSS after {m['checkpoint_messages']:,} -> {m['messages_reached']:,} msgs{cut} | "
        f"{m['rss_mib_at_checkpoint']} -> {m['rss_mib_at_end']} MiB "
        f"({(m['rss_growth'] or 0):+.1%}) | within 10% | "
        f"{_yes(d['targets']['rss_growth']['met'])} | |",
    ]


def _count(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _cluster_seed(d: dict[str, Any]) -> list[str]:
    single = d["single_server"]["first_id_to_last_persisted_rtt"]
    return _cycle_rows(
        f"5 seed cycle on a {d['masters']}-master cluster @ {d['rtt_ms']:.0f} ms RTT",
        d["cluster"], d["targets"], f"single server, same shards: {single} RTT",
        f"{d['ratio_vs_baseline']}x (single / cluster)")


def _cluster_drain(d: dict[str, Any]) -> list[str]:
    def node_cpu(run: dict[str, Any]) -> str:
        return " / ".join(f"{n['redis_cpu_us_per_msg']} ({n['share_of_redis_cpu'] or 0:.0%})"
                          for n in run["nodes"])

    runs = d["runs"]
    masters = "/".join(str(r["masters"]) for r in runs)
    single = d["single_server"]
    t = d["targets"]["projected_redis_bound_3_vs_1_master"]
    rows = [
        f"| 6 cluster drain {d['messages']:,} x 8 shards ({d['cpu_count']} CPUs) | msg/s with "
        f"{masters} masters, wall clock (not scaling: {d['cpu_count']} CPUs shared) | "
        + " / ".join(f"{r['msgs_per_s']:,.0f}" for r in runs)
        + f" (single server {single['msgs_per_s']:,.0f}) | - | - | "
        f"{d['ratio_vs_baseline']}x (1 master / single) |",
    ]
    for r in [*runs, single]:
        name = f"{r['masters']} master(s)" if "masters" in r else "single server"
        rows.append(
            f"| | {name}: Redis CPU-µs/msg per node (share of Redis CPU); consumer "
            f"CPU-µs/msg | {node_cpu(r)}; consumer {r['consumer_cpu_us_per_msg']} | - | - | |")
    redis_side = " / ".join(_count(r["projected"]["redis_bound_msgs_per_s"]) for r in runs)
    consumer = " / ".join(_count(r["projected"]["msgs_per_s_per_consumer_process"])
                          for r in runs)
    rows.append(
        f"| | projected msg/s from CPU/msg: Redis side ({masters} masters, a core each); one "
        f"consumer process | {redis_side}; {consumer} | 3 vs 1 master {t['target']} | "
        f"{_yes(t['met'])} | {t['value']}x (3 / 1 master) |")
    return rows


README_ROLES = (("regionstream `consume`", "consumer"),
                ("hand-written batched consumer", "batched"),
                ("floor: reading and acking alone", "ceiling"))


def readme_drain(doc: dict[str, Any]) -> str:
    """The README's Performance table: the drain of one run (``doc``), cold and warm, the
    consumer beside the batched contender and the floor (tests/test_examples.py checks that
    the README shows this for the committed bench/results/results.json)."""
    d = doc["scenarios"]["drain"]

    def pair(role: str, key: str) -> str:
        cold, warm = (phase_figure(d, role, p, key) for p in PHASES)
        fmt = _count if key == "msgs_per_s" else _na
        return f"{fmt(cold)} / {fmt(warm)}"

    target = d['targets']['consumer_cpu_cold']['target']
    rows = [f"| {name} | {pair(role, 'msgs_per_s')} | {pair(role, 'cpu_us_per_msg')} | "
            f"{pair(role, 'redis_cpu_us_per_msg')} |" for name, role in README_ROLES]
    vs = d["vs_batched"]
    return "\n".join([
        f"Drain of {d['messages']:,} snapshots (~{d['mean_payload_bytes'] / 1024:.1f} KB), each "
        f"on a fresh redis-server, cold / warm; {doc['machine']['cpus_available']} CPUs, "
        f"{doc['started_at'][:10]}:",
        "",
        "| | msg/s | consumer CPU-µs/msg | Redis CPU-µs/msg |",
        "|---|---|---|---|",
        *rows,
        f"| target | | {target} | {target} |",
        "",
        f"Against the batched consumer, cold / warm: {_na(vs['cold']['msgs_per_s'])}x / "
        f"{_na(vs['warm']['msgs_per_s'])}x the rate, {_na(vs['cold']['consumer_cpu'])}x / "
        f"{_na(vs['warm']['consumer_cpu'])}x less consumer CPU, "
        f"{_na(vs['cold']['redis_cpu'])}x / {_na(vs['warm']['redis_cpu'])}x less Redis CPU.",
    ]) + "\n"


def table(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"Machine: {m['cpus_available']} CPUs ({m['processor']}), {m['platform']}, Python "
        f"{m['python']}, {m['redis_server'].split(' sha=')[0]}; {doc['started_at']}; "
        f"`{doc['command']}` ({doc['elapsed_s']:.0f} s).",
        "",
        "| scenario | figure | measured | target | met | vs baseline |",
        "|---|---|---|---|---|---|",
    ]
    build = {"seed_cycle": _seed, "drain": _drain, "latency": _latency, "scaling": _scaling,
             "cluster_seed_cycle": _cluster_seed, "cluster_drain": _cluster_drain}
    for name, rows in build.items():
        if name in doc["scenarios"]:
            lines += rows(doc["scenarios"][name])
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out: Path) -> Path:
    """``summary.md`` (for docs/benchmarks.md) and, when the drain ran, ``readme-drain.md``
    (the README's Performance table)."""
    path = out / SUMMARY_FILE
    path.write_text(table(doc))
    if "drain" in doc["scenarios"]:
        (out / README_DRAIN_FILE).write_text(readme_drain(doc))
    return path
