"""The synthetic source: valid, in the size band, varied over time, reproducible. No Redis."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import msgspec
import pytest

from producer.synthetic import (
    CYCLE_MS,
    MAX_ENCODED_BYTES,
    MIN_ENCODED_BYTES,
    SyntheticSource,
    _fit_size,
)
from shared.keys import dedup_bucket
from shared.schema import (
    HORIZONS,
    MAX_ACTORS,
    MAX_EVIDENCE,
    PROBABILITY_TOLERANCE,
    REGIONS,
    TRIGGER_REASONS,
    Snapshot,
    decode,
    encode,
    validate,
)

BASE = 1_700_000_000_000
CYCLES = 200


@pytest.fixture(scope="module")
def run() -> list[list[Snapshot]]:
    """200 six-hourly cycles of all regions (~50 days), built once for the module."""
    src = SyntheticSource(seed=42)
    return [src.cycle(BASE + c * CYCLE_MS) for c in range(CYCLES)]


def _by_region(run: list[list[Snapshot]]) -> dict[str, list[Snapshot]]:
    out: dict[str, list[Snapshot]] = {r: [] for r in REGIONS}
    for cycle in run:
        for snap in cycle:
            out[snap.region_id].append(snap)
    return out


def test_cycle_is_one_snapshot_per_region_in_order(run: list[list[Snapshot]]) -> None:
    for c, cycle in enumerate(run):
        assert [s.region_id for s in cycle] == list(REGIONS)
        assert {s.generated_at for s in cycle} == {BASE + c * CYCLE_MS}


def test_every_snapshot_is_valid_and_in_the_size_band(run: list[list[Snapshot]]) -> None:
    sizes = []
    for cycle in run:
        for snap in cycle:
            validate(snap, now_ms=snap.generated_at)
            data = encode(snap)
            assert MIN_ENCODED_BYTES <= len(data) <= MAX_ENCODED_BYTES, (snap.region_id, len(data))
            sizes.append(len(data))
    assert MIN_ENCODED_BYTES == 3 * 1024 and MAX_ENCODED_BYTES == 12 * 1024
    assert max(sizes) - min(sizes) > 2048  # sizes vary, not one fixed shape


def test_snapshots_round_trip(run: list[list[Snapshot]]) -> None:
    for snap in run[-1] + run[CYCLES // 2]:
        assert decode(encode(snap)) == snap


def test_structure_limits_and_variety(run: list[list[Snapshot]]) -> None:
    snaps = [s for cycle in run for s in cycle]
    actor_counts = {len(s.actors) for s in snaps}
    evidence_counts = {len(s.evidence) for s in snaps}
    assert min(actor_counts) >= 3 and max(actor_counts) <= MAX_ACTORS and len(actor_counts) >= 5
    assert min(evidence_counts) >= 5 and max(evidence_counts) <= MAX_EVIDENCE
    assert len(evidence_counts) >= 10
    assert len({s.narrative.situation for s in snaps}) > len(snaps) * 0.9  # text is not canned
    assert len({s.meta.snapshot_id for s in snaps}) == len(snaps)
    for s in snaps:
        assert [ss.horizon for ss in s.scenario_sets] == list(HORIZONS)
        assert len({a.id for a in s.actors}) == len(s.actors)
        assert all(e.observed_at <= s.generated_at for e in s.evidence)
        assert s.meta.valid_until > s.generated_at


def test_probabilities_sum_to_one_per_horizon(run: list[list[Snapshot]]) -> None:
    for snap in run[0] + run[-1]:
        for sset in snap.scenario_sets:
            assert abs(sum(lane.probability for lane in sset.lanes) - 1.0) < 1e-12
            assert all(0 < lane.probability < 1 for lane in sset.lanes)
    assert PROBABILITY_TOLERANCE > 1e-12


def test_regimes_shift_over_time(run: list[list[Snapshot]]) -> None:
    for region, snaps in _by_region(run).items():
        shifts = [s for s in snaps if s.regime.transitioned_at == s.generated_at]
        assert shifts, f"{region} never changed regime in {CYCLES} cycles"
        assert len({s.regime.label for s in snaps}) >= 2
        for s in shifts:
            assert s.regime.previous_label is not None
            assert s.regime.previous_label != s.regime.label
            assert s.regime.transition_driver
            assert s.meta.trigger_reason == "regime_shift"
        # Between shifts the state carries over: the label and transition time persist.
        for prev, cur in pairwise(snaps):
            if cur.regime.transitioned_at != cur.generated_at:
                assert cur.regime.label == prev.regime.label
                assert cur.regime.transitioned_at == prev.regime.transitioned_at


def test_trigger_reasons_are_mostly_scheduled_but_all_occur(run: list[list[Snapshot]]) -> None:
    reasons = Counter(s.meta.trigger_reason for cycle in run for s in cycle)
    assert set(reasons) == set(TRIGGER_REASONS)
    assert reasons["scheduled_6h"] > 0.5 * sum(reasons.values())


def test_triggers_fire_and_go_dormant(run: list[list[Snapshot]]) -> None:
    for region, snaps in _by_region(run).items():
        states: dict[str, list[str]] = {}
        for s in snaps:
            for state in ("active", "watching", "dormant"):
                for t in getattr(s.triggers, state):
                    states.setdefault(t.id, []).append(state)
        went_dormant = [
            tid
            for tid, seq in states.items()
            if any(a == "active" and b == "dormant" for a, b in pairwise(seq))
        ]
        fired = [
            tid
            for tid, seq in states.items()
            if any(a == "watching" and b == "active" for a, b in pairwise(seq))
        ]
        assert went_dormant and fired, region


def test_same_seed_same_bytes_other_seed_differs() -> None:
    a, b, c = SyntheticSource(seed=9), SyntheticSource(seed=9), SyntheticSource(seed=10)
    for n in range(5):
        now = BASE + n * CYCLE_MS
        ea = [encode(s) for s in a.cycle(now)]
        assert ea == [encode(s) for s in b.cycle(now)]
        assert ea != [encode(s) for s in c.cycle(now)]


def test_region_subset_and_unknown_region() -> None:
    snaps = SyntheticSource(("global", "mena"), seed=1).cycle(BASE)
    assert [s.region_id for s in snaps] == ["global", "mena"]
    with pytest.raises(ValueError, match="atlantis"):
        SyntheticSource(("mena", "atlantis"))
    with pytest.raises(ValueError, match="at least one"):
        SyntheticSource(())


def test_fit_size_trims_oldest_evidence_of_an_oversized_snapshot() -> None:
    snap = SyntheticSource(seed=3).snapshot("global", BASE)
    filler = msgspec.structs.replace(snap.evidence[-1], summary="x" * 600)
    evidence = list(snap.evidence) + [filler] * (MAX_EVIDENCE - len(snap.evidence))
    big = msgspec.structs.replace(snap, evidence=evidence)
    assert len(encode(big)) > MAX_ENCODED_BYTES
    fitted = _fit_size(big)
    assert len(encode(fitted)) <= MAX_ENCODED_BYTES
    assert 5 <= len(fitted.evidence) < len(big.evidence)
    assert fitted.evidence == big.evidence[: len(fitted.evidence)]  # kept the head (newest)
    assert _fit_size(snap) is snap  # in-band snapshots pass through untouched


# -- the load generator's helper -------------------------------------------------------------


def test_count_helper_gives_distinct_dedup_triples_in_the_past() -> None:
    src = SyntheticSource(seed=5)
    n = len(REGIONS) * 60 + 3
    snaps = [src.snapshot_for_count(i, BASE) for i in range(n)]
    triples = {(s.region_id, s.meta.trigger_reason, dedup_bucket(s.generated_at, src.dedup_window_ms)) for s in snaps}
    assert len(triples) == n
    assert len({s.meta.snapshot_id for s in snaps}) == n
    assert [s.region_id for s in snaps[:16]] == list(REGIONS) * 2  # round-robin
    assert snaps[0].generated_at == BASE
    per_bucket = len(REGIONS) * len(TRIGGER_REASONS)  # every reason, then one bucket back
    assert {s.meta.trigger_reason for s in snaps[:per_bucket]} == set(TRIGGER_REASONS)
    assert snaps[per_bucket - 1].generated_at == BASE
    assert snaps[per_bucket].generated_at == BASE - 900_000
    assert len({s.meta.snapshot_confidence for s in snaps}) > 10
    for s in snaps:
        assert s.generated_at <= BASE
        validate(s, now_ms=BASE)
        assert int(s.meta.snapshot_id[:12], 16) == s.generated_at
        assert MIN_ENCODED_BYTES <= len(encode(s)) <= MAX_ENCODED_BYTES
        assert all(e.observed_at <= s.generated_at for e in s.evidence)
        transitioned = s.regime.transitioned_at
        assert transitioned is None or transitioned <= s.generated_at


def test_count_helper_is_reproducible_and_leaves_cycles_alone() -> None:
    a, b = SyntheticSource(seed=5), SyntheticSource(seed=5)
    ids_a = [a.snapshot_for_count(i, BASE).meta.snapshot_id for i in range(50)]
    assert ids_a == [b.snapshot_for_count(i, BASE).meta.snapshot_id for i in range(50)]
    other = SyntheticSource(seed=6)
    assert ids_a[0] != other.snapshot_for_count(0, BASE).meta.snapshot_id
    # Building templates used a private source: a's own world has not moved.
    assert [encode(s) for s in a.cycle(BASE)] == [
        encode(s) for s in SyntheticSource(seed=5).cycle(BASE)
    ]
