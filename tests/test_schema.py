"""The snapshot contract: codec round trips, every validation rule, ids and buckets. No Redis."""

from __future__ import annotations

import contextlib
import math
import pickle
import random
import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.keys import Keys, dedup_bucket
from shared.schema import (
    HORIZONS,
    LANES,
    MAX_ACTORS,
    MAX_CLOCK_SKEW_MS,
    MAX_EVIDENCE,
    MAX_VALID_AHEAD_MS,
    PROBABILITY_TOLERANCE,
    REGION_NAMES,
    REGIONS,
    TRIGGER_REASONS,
    Actor,
    Balance,
    Evidence,
    Narrative,
    Regime,
    ScenarioLane,
    ScenarioSet,
    Snapshot,
    SnapshotInvalid,
    SnapshotMeta,
    decode,
    encode,
    new_snapshot_id,
    parse,
    problems_of,
    validate,
)
from shared.settings import DEDUP_WINDOW_S

GEN = 1_700_000_000_000  # a fixed "now" in epoch ms
replace = msgspec.structs.replace


def _lanes(probs: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)) -> list[ScenarioLane]:
    return [
        ScenarioLane(lane=lane, probability=p, summary=f"{lane} lane")
        for lane, p in zip(LANES, probs, strict=True)
    ]


def _actor(n: int) -> Actor:
    return Actor(id=f"a{n}", name=f"Actor {n}", role="state", leverage_score=0.5)


def _evidence(n: int) -> Evidence:
    return Evidence(id=f"ev{n}", source="wire", summary="s", observed_at=GEN - 1000, confidence=0.5)


def make_snapshot() -> Snapshot:
    """A small hand-built valid snapshot, independent of the synthetic generator."""
    return Snapshot(
        region_id="europe",
        generated_at=GEN,
        meta=SnapshotMeta(
            snapshot_id=new_snapshot_id(GEN, random.Random(1)),
            model_version="m1",
            scoring_version="s1",
            geography_version="g1",
            snapshot_confidence=0.8,
            missing_inputs=["ais"],
            valid_until=GEN + MAX_VALID_AHEAD_MS,
            trigger_reason="scheduled_6h",
            narrative_provider="template",
            narrative_model="rules",
        ),
        regime=Regime(label="calm", previous_label="stressed_equilibrium", transitioned_at=GEN),
        balance=Balance(
            coercive_pressure=0.2,
            domestic_fragility=0.3,
            capital_stress=0.1,
            energy_vulnerability=0.4,
            alliance_cohesion=0.8,
            maritime_access=0.7,
            energy_leverage=0.5,
            net_balance=0.4,
            pressures=["p"],
            buffers=["b"],
        ),
        actors=[_actor(1), _actor(2), _actor(3)],
        scenario_sets=[ScenarioSet(horizon=h, lanes=_lanes()) for h in HORIZONS],
        evidence=[_evidence(n) for n in range(5)],
        narrative=Narrative(
            situation="s",
            balance_assessment="b",
            outlook_24h="o1",
            outlook_7d="o7",
            outlook_30d="o30",
            watch_items=["w"],
        ),
    )


def _with_meta(**changes: Any) -> Callable[[Snapshot], Snapshot]:
    return lambda s: replace(s, meta=replace(s.meta, **changes))


def _with_balance(**changes: Any) -> Callable[[Snapshot], Snapshot]:
    return lambda s: replace(s, balance=replace(s.balance, **changes))


def _with_sets(*sets: ScenarioSet) -> Callable[[Snapshot], Snapshot]:
    return lambda s: replace(s, scenario_sets=list(sets))


def _unchecked(value: str) -> Any:
    """A value outside a Literal type: structs built in Python are not checked, decode is."""
    return value


def _problems(snap: Snapshot, **kwargs: Any) -> tuple[str, ...]:
    with pytest.raises(SnapshotInvalid) as info:
        validate(snap, **kwargs)
    return info.value.problems


# -- constants ------------------------------------------------------------------------------


def test_regions_are_the_eight_upstream_ids_in_order() -> None:
    assert REGIONS == (
        "mena",
        "east-asia",
        "europe",
        "north-america",
        "south-asia",
        "latam",
        "sub-saharan-africa",
        "global",
    )
    assert set(REGION_NAMES) == set(REGIONS)


# -- codec ------------------------------------------------------------------------------------


def test_valid_snapshot_passes_and_round_trips() -> None:
    snap = make_snapshot()
    validate(snap, now_ms=GEN)
    data = encode(snap)
    assert isinstance(data, bytes)
    assert decode(data) == snap
    assert decode(data.decode()) == snap  # str input too
    assert parse(data, now_ms=GEN) == snap


def test_defaults_round_trip_and_unknown_fields_are_ignored() -> None:
    snap = make_snapshot()
    doc = msgspec.json.decode(encode(snap))
    doc["added_by_a_newer_producer"] = {"x": 1}
    doc["meta"]["also_new"] = True
    del doc["leverage_edges"]  # a defaulted list may be absent
    assert decode(msgspec.json.encode(doc)) == snap


def test_undecodable_json_is_snapshot_invalid() -> None:
    with pytest.raises(SnapshotInvalid, match="not valid JSON") as info:
        decode(b'{"region_id": "europe", ')
    assert info.value.undecodable
    assert isinstance(info.value, ValueError)


def test_wrong_type_names_the_json_path() -> None:
    doc = msgspec.json.decode(encode(make_snapshot()))
    doc["generated_at"] = "yesterday"
    with pytest.raises(SnapshotInvalid, match=re.escape("$.generated_at")) as info:
        decode(msgspec.json.encode(doc))
    assert not info.value.undecodable


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("meta", "trigger_reason"), "because", "$.meta.trigger_reason"),
        (("regime", "label"), "chaos", "$.regime.label"),
        (("scenario_sets", 0, "horizon"), "90d", "$.scenario_sets[0].horizon"),
    ],
)
def test_unknown_enum_values_are_rejected_at_decode(
    path: tuple[str | int, ...], value: str, where: str
) -> None:
    doc = msgspec.json.decode(encode(make_snapshot()))
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(SnapshotInvalid, match=re.escape(where)):
        decode(msgspec.json.encode(doc))


def test_missing_required_field_is_rejected() -> None:
    doc = msgspec.json.decode(encode(make_snapshot()))
    del doc["meta"]["snapshot_id"]
    with pytest.raises(SnapshotInvalid, match="snapshot_id"):
        decode(msgspec.json.encode(doc))


def test_parse_validates_after_decoding() -> None:
    bad = replace(make_snapshot(), region_id="atlantis")
    with pytest.raises(SnapshotInvalid, match="region_id"):
        parse(encode(bad))


# -- validation rules -----------------------------------------------------------------------


BAD_CASES: list[tuple[str, Callable[[Snapshot], Snapshot], str]] = [
    ("unknown region", lambda s: replace(s, region_id="atlantis"), "region_id: unknown region"),
    ("id format", _with_meta(snapshot_id="not-an-id"), "meta.snapshot_id"),
    ("id uppercase", _with_meta(snapshot_id="01A20DF9A266-DFBEEAAF6BB1"), "meta.snapshot_id"),
    (
        "confidence high",
        _with_meta(snapshot_confidence=1.3),
        "meta.snapshot_confidence: 1.3 not in [0, 1]",
    ),
    ("confidence low", _with_meta(snapshot_confidence=-0.1), "meta.snapshot_confidence"),
    ("confidence nan", _with_meta(snapshot_confidence=math.nan), "meta.snapshot_confidence"),
    ("reason", _with_meta(trigger_reason="whim"), "meta.trigger_reason"),
    ("regime", lambda s: replace(s, regime=Regime(label=_unchecked("chaos"))), "regime.label"),
    (
        "prev regime",
        lambda s: replace(s, regime=Regime(label="calm", previous_label=_unchecked("x"))),
        "regime.previous_label",
    ),
    (
        "generated_at zero",
        lambda s: _with_meta(valid_until=1000)(replace(s, generated_at=0)),
        "generated_at: 0",
    ),
    ("valid_until before", _with_meta(valid_until=GEN), "meta.valid_until"),
    (
        "valid_until too far",
        _with_meta(valid_until=GEN + MAX_VALID_AHEAD_MS + 1),
        "meta.valid_until",
    ),
    ("balance inf", _with_balance(capital_stress=math.inf), "balance.capital_stress"),
    ("balance nan", _with_balance(net_balance=math.nan), "balance.net_balance"),
    (
        "too many actors",
        lambda s: replace(s, actors=[_actor(n) for n in range(MAX_ACTORS + 1)]),
        "actors: 11",
    ),
    (
        "too much evidence",
        lambda s: replace(s, evidence=[_evidence(n) for n in range(MAX_EVIDENCE + 1)]),
        "evidence: 31",
    ),
    (
        "horizon twice",
        _with_sets(
            ScenarioSet(horizon="24h", lanes=_lanes()), ScenarioSet(horizon="24h", lanes=_lanes())
        ),
        "scenario_sets[1].horizon: '24h' appears more than once",
    ),
    (
        "unknown horizon",
        _with_sets(ScenarioSet(horizon=_unchecked("90d"), lanes=_lanes())),
        "scenario_sets[0].horizon",
    ),
    (
        "unknown lane",
        _with_sets(
            ScenarioSet(
                horizon="7d",
                lanes=[ScenarioLane(lane=_unchecked("apocalypse"), probability=1.0, summary="")],
            )
        ),
        "scenario_sets[0].lanes[0].lane",
    ),
    (
        "lane twice",
        _with_sets(
            ScenarioSet(
                horizon="7d", lanes=[ScenarioLane(lane="base", probability=0.5, summary="")] * 2
            )
        ),
        "scenario_sets[0].lanes[1].lane: 'base' appears more than once",
    ),
    (
        "probability out of range",
        _with_sets(ScenarioSet(horizon="30d", lanes=_lanes((1.5, -0.5, 0.0, 0.0)))),
        "scenario_sets[0].lanes[0].probability: 1.5 not in [0, 1]",
    ),
    (
        "sum not one",
        _with_sets(ScenarioSet(horizon="30d", lanes=_lanes((0.4, 0.3, 0.2, 0.2)))),
        "scenario_sets[0]: probabilities of horizon '30d' sum to",
    ),
    (
        "sum off by more than tolerance",
        _with_sets(
            ScenarioSet(
                horizon="30d", lanes=_lanes((0.4, 0.3, 0.2, 0.1 + 10 * PROBABILITY_TOLERANCE))
            )
        ),
        "scenario_sets[0]: probabilities of horizon '30d' sum to 1.00001",
    ),
    (
        "empty lanes",
        _with_sets(ScenarioSet(horizon="24h", lanes=[])),
        "scenario_sets[0]: probabilities of horizon '24h' sum to 0,",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES]
)
def test_each_rule_rejects_and_names_the_field(
    mutate: Callable[[Snapshot], Snapshot], expected: str
) -> None:
    problems = _problems(mutate(make_snapshot()), now_ms=GEN)
    assert expected in problems[0], problems
    # Only the field under test is blamed (a range error may also break its sum, same field).
    assert {_top(p) for p in problems} == {_top(expected)}, problems


def _top(problem: str) -> str:
    """The top-level field a problem names: 'scenario_sets[0].lanes' -> 'scenario_sets'."""
    return re.split(r"[.:\[ ]", problem, maxsplit=1)[0]


def test_future_generated_at_is_rejected_only_against_a_clock() -> None:
    snap = make_snapshot()
    ahead = GEN - MAX_CLOCK_SKEW_MS - 1  # the checker's clock, a hair too far behind
    (problem,) = _problems(snap, now_ms=ahead)
    assert problem.startswith("generated_at:") and "in the future" in problem
    validate(snap, now_ms=GEN - MAX_CLOCK_SKEW_MS)  # exactly the allowed skew
    validate(snap)  # no clock given: no future check


def test_boundaries_are_accepted() -> None:
    snap = make_snapshot()
    validate(replace(snap, actors=[_actor(n) for n in range(MAX_ACTORS)]))
    validate(replace(snap, evidence=[_evidence(n) for n in range(MAX_EVIDENCE)]))
    validate(_with_meta(snapshot_confidence=0.0)(snap))
    validate(_with_meta(snapshot_confidence=1.0)(snap))
    validate(_with_meta(valid_until=GEN + 1)(snap))
    near_one = (0.4, 0.3, 0.2, 0.1 + PROBABILITY_TOLERANCE / 2)
    validate(_with_sets(ScenarioSet(horizon="7d", lanes=_lanes(near_one)))(snap))
    validate(replace(snap, scenario_sets=[]))  # horizons are "at most once", none is fine


def test_all_problems_are_reported_together() -> None:
    snap = replace(
        make_snapshot(),
        region_id="atlantis",
        meta=replace(make_snapshot().meta, snapshot_confidence=1.3, valid_until=GEN - 1),
        actors=[_actor(n) for n in range(MAX_ACTORS + 2)],
    )
    with pytest.raises(SnapshotInvalid) as info:
        validate(snap, now_ms=GEN)
    problems = info.value.problems
    assert len(problems) == 4
    fields = [p.split(":", 1)[0] for p in problems]
    assert fields == ["region_id", "meta.snapshot_confidence", "meta.valid_until", "actors"]
    assert str(info.value) == "; ".join(problems)


def test_regions_parameter_restricts_the_known_set() -> None:
    snap = make_snapshot()  # europe
    validate(snap, regions=("europe",))
    (problem,) = _problems(snap, regions=("mena", "global"))
    assert problem.startswith("region_id:")


# -- ids and buckets ------------------------------------------------------------------------


def test_snapshot_id_is_time_prefixed_random_and_sortable() -> None:
    sid = new_snapshot_id(GEN)
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}", sid)
    assert int(sid[:12], 16) == GEN
    assert new_snapshot_id(GEN) != new_snapshot_id(GEN)  # random half differs
    ids = [new_snapshot_id(ms) for ms in (GEN + 5, GEN, GEN + 1, 1, 2**47)]
    assert sorted(ids) == [ids[3], ids[1], ids[2], ids[0], ids[4]]


def test_snapshot_id_is_reproducible_with_an_rng() -> None:
    assert new_snapshot_id(GEN, random.Random(7)) == new_snapshot_id(GEN, random.Random(7))
    assert new_snapshot_id(GEN, random.Random(7)) != new_snapshot_id(GEN, random.Random(8))


@pytest.mark.parametrize("ms", [-1, 2**48])
def test_snapshot_id_rejects_out_of_range_ms(ms: int) -> None:
    with pytest.raises(ValueError, match="12 hex digits"):
        new_snapshot_id(ms)


def test_bucket_is_floor_of_the_window_fifteen_minutes_by_default() -> None:
    window = DEDUP_WINDOW_S * 1000
    assert window == 900_000
    assert dedup_bucket(0, window) == 0
    assert dedup_bucket(899_999, window) == 0
    assert dedup_bucket(900_000, window) == 1
    assert dedup_bucket(GEN, window) == GEN // 900_000
    assert dedup_bucket(GEN, 60_000) == GEN // 60_000


def test_snapshot_invalid_from_one_string_and_pickled() -> None:
    assert SnapshotInvalid("one problem").problems == ("one problem",)
    err = SnapshotInvalid(["a: bad", "b: worse"])
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == "a: bad; b: worse"


# -- fields that end up in Redis keys (issue 17, item 17) -------------------------------------

VALID_ID = "01a20df9a266-dfbeeaaf6bb1"
# What a Python "$" or a forgiving check lets through: line ends, NUL, spaces, hash-tag braces.
SNEAKY = ["\n", "\r\n", "\r", "\x00", " ", "\t", "{", "}", "\u2028", "\x85"]


@st.composite
def _broad(draw: st.DrawFn, core: st.SearchStrategy[str], *others: st.SearchStrategy[str]
           ) -> str:
    """``core`` as it is, with sneaky or arbitrary text before or after it, or any text."""
    value = draw(core)
    extra = draw(st.sampled_from([*SNEAKY, ""]))
    extra = extra or draw(st.text(min_size=1, max_size=3))
    how = draw(st.sampled_from(["as-is", "after", "before", "any"]))
    if how == "after":
        return value + extra
    if how == "before":
        return extra + value
    if how == "any":
        return draw(st.one_of(st.text(max_size=30), *others))
    return value


# Every snapshot field that ends up in a key: a valid value, and values from anywhere.
VALID: dict[str, st.SearchStrategy[Any]] = {
    "snapshot_id": st.builds(new_snapshot_id, st.integers(0, 2**48 - 1), st.randoms()),
    "region_id": st.sampled_from(REGIONS),
    "trigger_reason": st.sampled_from(TRIGGER_REASONS),
    "generated_at": st.just(GEN),
}
BROAD: dict[str, st.SearchStrategy[Any]] = {
    "snapshot_id": _broad(VALID["snapshot_id"],
                          st.from_regex(r"[0-9a-f]{12}-[0-9a-f]{12}", fullmatch=False)),
    "region_id": _broad(VALID["region_id"]),
    "trigger_reason": _broad(VALID["trigger_reason"]),
    "generated_at": st.integers(-(2**62), 2**62),
}


def _documented_layout(prefix: str, stream: str) -> re.Pattern[str]:
    """Every key the README's "Key layout" names, written out here apart from shared/keys.py
    (ASCII only: ``[0-9]`` must not mean any Unicode digit)."""
    tag = r"\{(?:" + "|".join(map(re.escape, REGIONS)) + r")\}"
    reason = "(?:" + "|".join(TRIGGER_REASONS) + ")"
    p, s = re.escape(prefix), re.escape(stream)
    return re.compile("|".join([
        rf"{p}:dedup:v1:{tag}:{reason}:[0-9]+",
        rf"{p}:snapshot-by-id:v1:{tag}:[0-9a-f]{{12}}-[0-9a-f]{{12}}",
        rf"{p}:snapshot:v1:{tag}:latest",
        rf"{p}:snapshot-index:v1:{tag}",
        rf"{s}:{tag}(?::dlq)?",
    ]), re.ASCII)


LAYOUT_KEYS = Keys(prefix="intelligence", stream="snapshots")
LAYOUT = _documented_layout(LAYOUT_KEYS.prefix, LAYOUT_KEYS.stream)


def _accepted(snap: Snapshot) -> list[Snapshot]:
    """``snap`` as each validation path accepts it: a struct built in Python (validate), and
    its JSON as the consumer receives it (parse: decode, then validate)."""
    out = [] if problems_of(snap) else [snap]
    with contextlib.suppress(SnapshotInvalid):
        out.append(parse(encode(snap)))
    return out


def _keyed(snapshot_id: str, region_id: str, trigger_reason: str, generated_at: int
           ) -> Snapshot:
    base = make_snapshot()
    return replace(base, region_id=region_id, generated_at=generated_at,
                   meta=replace(base.meta, snapshot_id=snapshot_id,
                                trigger_reason=_unchecked(trigger_reason),
                                valid_until=generated_at + 1))


@pytest.mark.parametrize("broad", [*BROAD, "all"])
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_every_accepted_snapshot_yields_keys_of_the_documented_layout(
        broad: str, data: st.DataObject) -> None:
    """Accepted => every key built from it is one of the README's "Key layout", exactly: one
    field at a time drawn from anywhere (the others valid), then all of them at once."""
    snap = _keyed(**{name: data.draw(BROAD[name] if broad in (name, "all") else VALID[name],
                                     label=name) for name in BROAD})
    accepted = _accepted(snap)
    event("accepted" if accepted else "rejected")
    for ok in accepted:
        k, r, window = LAYOUT_KEYS, ok.region_id, DEDUP_WINDOW_S * 1000
        built = [k.by_id(r, ok.meta.snapshot_id), k.latest(r), k.index(r), k.shard(r).stream,
                 k.shard(r).dlq,
                 k.dedup(r, ok.meta.trigger_reason, dedup_bucket(ok.generated_at, window))]
        for key in built:
            assert LAYOUT.fullmatch(key), key
            assert key.isascii() and key.isprintable(), key  # no newline, no control char
            assert key.count("{") == key.count("}") == 1, key  # one hash tag: the region
            assert k.kind_of(key) is not None, key


@pytest.mark.parametrize(("field", "value"), [
    ("snapshot_id", VALID_ID + "\n"), ("snapshot_id", VALID_ID + "\r\n"),
    ("snapshot_id", VALID_ID + "\x00"), ("snapshot_id", "\n" + VALID_ID),
    ("region_id", "europe\n"), ("trigger_reason", "scheduled_6h\n"),
])
def test_a_key_field_with_a_trailing_newline_is_rejected(field: str, value: str) -> None:
    """In Python ``$`` matches before a trailing newline: "<id>\\n" passed validation and
    became a by-id key ending in a newline."""
    valid = {"snapshot_id": VALID_ID, "region_id": "europe", "trigger_reason": "scheduled_6h"}
    snap = _keyed(**{**valid, field: value}, generated_at=GEN)
    (problem,) = _problems(snap)
    assert field in problem.split(":")[0], problem
    with pytest.raises(SnapshotInvalid, match=field):
        parse(encode(snap))
