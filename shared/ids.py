"""Stream ids: their time, their order, the next one; and text read from Redis."""

from __future__ import annotations

# An entry id more than this ahead of a clock (Redis's, a consumer's, the producer's) is an
# anomaly, not skew (docs/operations.md, "Stream ids ahead of the clock"): the one bound the
# group stats, the consumer's latencies and the producer's report and trim all use.
CLOCK_AHEAD_S = 60.0


def text(v: bytes | str) -> str:
    """A name or id as Redis returned it (bytes) as str. A name is whatever a client chose
    (another client's consumer name need not be UTF-8): bytes that are not UTF-8 become
    ``\\xff`` escapes instead of an error. For display and comparison only; the escape is not
    reversible, so a name sent back to Redis is sent as the bytes it came as."""
    return v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else v


def id_seconds(entry_id: bytes | str) -> float:
    """The Unix time (s) a stream entry id was created at: its millisecond part. (Asked of
    every settled entry: bytes are parsed as they are, without a decode.)"""
    if isinstance(entry_id, bytes):
        return int(entry_id.partition(b"-")[0]) / 1000
    return int(entry_id.partition("-")[0]) / 1000


MAX_SEQ = 2**64 - 1


def next_id(entry_id: bytes) -> bytes:
    """The smallest stream id after ``entry_id`` (a sequence at its maximum rolls over to the
    next millisecond: ``<ms>-18446744073709551616`` is no id, and every trim failed on it)."""
    ms, _, seq = entry_id.partition(b"-")
    if int(seq or 0) >= MAX_SEQ:
        return b"%d-0" % (int(ms) + 1)
    return b"%d-%d" % (int(ms), int(seq or 0) + 1)


def id_key(entry_id: bytes | str) -> tuple[int, int]:
    ms, _, seq = (entry_id if isinstance(entry_id, bytes) else entry_id.encode()).partition(b"-")
    return int(ms), int(seq or 0)


def min_id(a: bytes, b: bytes) -> bytes:
    return min(a, b, key=id_key)
