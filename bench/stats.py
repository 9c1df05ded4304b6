"""Small statistics helpers (no numpy dependency for the harness itself)."""

from __future__ import annotations

import math
from collections.abc import Sequence

MS_PER_S = 1000.0
CDF_POINTS = 200
CDF_TAIL = (1, 2, 5, 10, 20, 50)  # the last few samples: where p99 and max live


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values; ``inf`` entries stand for samples
    that never completed (censored)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_s: Sequence[float], unfinished: int) -> dict[str, object]:
    """p50/p90/p99/max in ms over finished samples plus ``unfinished`` censored ones; a
    percentile that lands on an unfinished sample is reported as None (unbounded)."""
    values = sorted(latencies_s) + [math.inf] * max(0, unfinished)

    def ms(q: float) -> float | None:
        v = percentile(values, q)
        return None if math.isinf(v) or math.isnan(v) else round(v * MS_PER_S, 3)

    finished = sorted(latencies_s)
    total = len(values)
    return {
        "samples": len(finished),
        "unfinished": unfinished,
        "p50_ms": ms(50), "p90_ms": ms(90), "p99_ms": ms(99),
        "max_ms": round(finished[-1] * MS_PER_S, 3) if finished else None,
        "mean_ms": round(sum(finished) / len(finished) * MS_PER_S, 3) if finished else None,
        "cdf": cdf_points(finished, total),
    }


def cdf_points(sorted_finished: Sequence[float], total: int) -> list[list[float]]:
    """A compact CDF for plotting: [latency ms, fraction of ALL samples] at ``CDF_POINTS``
    ranks, plus the tail (the curve of a contender that fell behind stays below 1)."""
    n = len(sorted_finished)
    if not n:
        return []
    ranks = sorted({min(n - 1, int(i * n / CDF_POINTS)) for i in range(CDF_POINTS)}
                   | {max(0, n - k) for k in CDF_TAIL})
    return [[round(sorted_finished[r] * MS_PER_S, 3), round((r + 1) / total, 5)] for r in ranks]


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def median(values: Sequence[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2
